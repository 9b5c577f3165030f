"""Child processes the agent supervises (ipcontroller, ipengine).

Each child gets its own process group and is stopped by group: ipcontroller's
schedulers and ipengine's nanny are children of the child, and a SIGKILLed
ipcontroller leaves them holding the ports (DESIGN.md, facts). Each child also
gets PR_SET_PDEATHSIG so that an agent killed with SIGKILL takes its children
with it instead of leaving an orphan cluster behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import time
from collections.abc import Callable, Mapping, Sequence

PR_SET_PDEATHSIG = 1
EXIT_POLL_S = 0.05
KILL_WAIT_S = 10.0

log = logging.getLogger(__name__)


def _die_with_parent() -> None:  # runs in the child between fork and exec
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class Child:
    """One supervised process whose output lines go to our log (the journal)."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        on_line: Callable[[str], None] | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = dict(env) if env is not None else None
        self.on_line = on_line
        self.proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=self.env,
            start_new_session=True,
            preexec_fn=_die_with_parent,  # only calls prctl: safe with threads
        )
        self._reader = asyncio.create_task(self._read(self.proc))
        log.info("%s started (pid %d)", self.name, self.proc.pid)

    async def _read(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        async for raw in proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip()
            if not line:
                continue
            log.info("[%s] %s", self.name, line)
            if self.on_line:
                self.on_line(line)

    async def wait(self) -> int:
        assert self.proc is not None
        code = await self.proc.wait()
        if self._reader:
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        return code

    def _signal_group(self, sig: int) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)

    async def _exited(self, timeout: float) -> bool:
        """Whether the child itself exits within ``timeout`` s.

        Not ``proc.wait()``: that also waits until nobody holds the output pipe,
        and ipengine's nanny runs in a session of its own (out of reach of the
        group signal) and lingers 3 s trying to say goodbye to the controller.
        """
        assert self.proc is not None
        end = time.monotonic() + timeout
        while self.proc.returncode is None:
            if time.monotonic() > end:
                return False
            await asyncio.sleep(EXIT_POLL_S)
        return True

    async def stop(self, grace: float = 5.0) -> None:
        """SIGTERM the group, SIGKILL what is left after ``grace`` seconds."""
        if self.proc is None:
            return
        if self.proc.returncode is None:
            self._signal_group(signal.SIGTERM)
            if not await self._exited(grace):
                log.warning("%s did not stop in %.1f s; killing it", self.name, grace)
        # Grandchildren (schedulers, nannies) may outlive the leader: sweep the group.
        self._signal_group(signal.SIGKILL)
        if not await self._exited(KILL_WAIT_S):
            log.error(
                "%s (pid %d) survived SIGKILL for %.0f s", self.name, self.proc.pid, KILL_WAIT_S
            )
        if self._reader:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        # The nanny may still hold the pipe's other end: close ours now, or the transport
        # outlives the event loop and asyncio prints "Event loop is closed" at exit.
        # (No public handle exists; the child itself has exited, so nothing is killed.)
        transport = getattr(self.proc, "_transport", None)
        if transport is not None:
            transport.close()
