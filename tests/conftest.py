"""Shared by every tier: a CI timeout (SIGTERM) unwinds like Ctrl-C; the image
build starts as soon as the session is known to need it.

pytest only runs fixture finalizers (which stop agents and VMs, delete network
namespaces and detach loop devices) on KeyboardInterrupt; SIGTERM would kill
it on the spot and leave them behind. A process started in the background by
a non-interactive shell also ignores SIGINT, so both signals are mapped here.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.harness import imagebuild

TESTS = Path(__file__).resolve().parent


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_configure(config: object) -> None:
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start the image build in the background when the image tier (or the boot tier
    without an image) is selected, so the host tiers run while it builds."""
    tiers = {Path(item.path).resolve().relative_to(TESTS).parts[0] for item in session.items}
    if "image" in tiers or ("boot" in tiers and not imagebuild.MANIFEST.exists()):
        imagebuild.start()


def pytest_sessionfinish(session: pytest.Session) -> None:
    imagebuild.stop()
