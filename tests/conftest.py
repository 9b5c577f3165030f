"""Shared by every tier: a CI timeout (SIGTERM) unwinds like Ctrl-C.

pytest only runs fixture finalizers (which stop agents and VMs, delete network
namespaces and detach loop devices) on KeyboardInterrupt; SIGTERM would kill
it on the spot and leave them behind. A process started in the background by
a non-interactive shell also ignores SIGINT, so both signals are mapped here.
"""

from __future__ import annotations

import signal


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_configure(config: object) -> None:
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
