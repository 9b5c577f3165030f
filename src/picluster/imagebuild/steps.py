"""Named build steps with elapsed time, one log file, and a useful failure.

Every command's output goes to the log, not the terminal; the terminal shows
one line per step. When a step fails the last lines of the log and the step's
name are printed, so a red build explains itself without scrolling.
"""

from __future__ import annotations

import collections
import contextlib
import os
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from picluster.errors import PiclusterError


class BuildError(PiclusterError):
    """A step failed in a way the user can act on; the message says how."""


@dataclass
class StepLog:
    path: Path
    console: Console = field(default_factory=lambda: Console(stderr=True, highlight=False))
    timings: dict[str, float] = field(default_factory=dict)
    current: str | None = None

    def __post_init__(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = self.path.open("a", encoding="utf-8", buffering=1)

    def close(self) -> None:
        self._fh.close()

    def write(self, text: str) -> None:
        self._fh.write(text if text.endswith("\n") else text + "\n")

    def note(self, text: str) -> None:
        """A line for the user and the log."""
        self.console.print(f"  {text}")
        self.write(f"# {text}")

    def warn(self, text: str) -> None:
        self.console.print(f"[bold yellow]![/] {text}")
        self.write(f"# WARNING: {text}")

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        self.current = name
        self.write(f"\n===== {name} =====")
        start = time.monotonic()
        with self.console.status(f"[bold]{name}[/] …"):
            try:
                yield
            except BaseException:
                elapsed = time.monotonic() - start
                self.timings[name] = round(elapsed, 1)
                self.console.print(f"[bold red]✗[/] {name} failed after {elapsed:.0f} s")
                raise
        elapsed = time.monotonic() - start
        self.timings[name] = round(elapsed, 1)
        self.console.print(f"[green]✓[/] {name} [dim]{_duration(elapsed)}[/]")
        self.current = None

    def run(
        self,
        cmd: Sequence[str | os.PathLike[str]],
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        input_text: str | None = None,
    ) -> None:
        """Run ``cmd`` with its output in the log; raise BuildError on failure."""
        argv = [str(c) for c in cmd]
        self.write("$ " + " ".join(argv))
        self._fh.flush()
        proc = subprocess.run(
            argv,
            stdout=self._fh,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            input=input_text,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise BuildError(f"{argv[0]} exited with status {proc.returncode}: {' '.join(argv)}")

    def tail(self, lines: int = 30) -> str:
        self._fh.flush()
        with self.path.open(encoding="utf-8", errors="replace") as fh:
            return "".join(collections.deque(fh, maxlen=lines))


def _duration(seconds: float) -> str:
    minutes, sec = divmod(int(seconds), 60)
    return f"{minutes} min {sec:02d} s" if minutes else f"{seconds:.1f} s"
