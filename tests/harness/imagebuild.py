"""The image tier's build, started as soon as pytest knows it will be needed.

The build is mostly emulated arm64 work in a chroot; the host tiers (unit,
cluster, cards, jupyter) mostly wait on sockets and timers. Started at the end
of collection and niced, the build runs while those tiers run instead of after
them; the image tier waits for it. One build per session, shared with the boot
tier. State lives here, in an importable package module, because conftest
files may be imported under more than one name.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
WORK = REPO / "work"
DEPLOY = REPO / "deploy"
MANIFEST = DEPLOY / "picluster.manifest.json"
OUTPUT = WORK / "test-build.log"
COMMAND = [str(REPO / "build.sh"), "build", "--base", "debian"]
REUSE = "PICLUSTER_TEST_REUSE_IMAGE"

_running: subprocess.Popen[bytes] | None = None
_result: tuple[int, str] | None = None


def wanted() -> bool:
    """A build is due unless the user asked to reuse an existing image."""
    return os.environ.get(REUSE) != "1" or not MANIFEST.exists()


def start() -> None:
    """Start ``./build.sh --base debian`` in the background (once), output to OUTPUT."""
    global _running
    if _running is not None or os.geteuid() != 0 or not wanted():
        return
    WORK.mkdir(parents=True, exist_ok=True)
    with OUTPUT.open("wb") as out:
        # nice: the host tiers' timers keep their CPU; the build takes the rest.
        _running = subprocess.Popen(
            ["nice", "-n", "10", *COMMAND], cwd=REPO, stdout=out, stderr=subprocess.STDOUT
        )


def started() -> bool:
    return _running is not None


def finish() -> tuple[int, str]:
    """Wait for the session's build (starting it now if nobody did): exit code and output.
    A second caller gets the same result; a failed build is not repeated."""
    global _result
    if _result is None:
        start()
        if _running is None:  # nothing to build: the existing image is reused
            return 0, ""
        _result = _running.wait(), OUTPUT.read_text(errors="replace")
    return _result


def stop() -> None:
    """Interrupt a build still running when the session ends (a failure, Ctrl-C, SIGTERM):
    the build's own handler unmounts and removes partial files."""
    if _running is None or _running.poll() is not None:
        return
    _running.send_signal(signal.SIGINT)
    try:
        _running.wait(timeout=120)
    except subprocess.TimeoutExpired:
        _running.kill()
        _running.wait()
