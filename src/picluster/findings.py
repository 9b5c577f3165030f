"""What a check found: how bad it is, and the record both checkers report.

``picluster lint`` (a card's seed files, on the host) and ``picluster doctor``
(a running node) each report a list of :class:`Finding`; they share the levels
and the record so that "error" means the same thing in both.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path


class Level(StrEnum):
    """How bad a finding is; the value is the word ``lint`` prints for it."""

    OK = "ok"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"
    # The same two members under the words doctor's table prints.
    WARN = "warning"
    FAIL = "error"


@dataclass(frozen=True)
class Finding:
    """One verdict of one rule (lint) or check (doctor); ``file`` and ``line`` say where."""

    rule: str
    level: Level
    message: str
    file: Path | None = None
    line: int = 1

    @property
    def severity(self) -> Level:
        """``level``, under the name lint's callers read."""
        return self.level

    @property
    def name(self) -> str:
        """``rule``, under the name doctor's callers read."""
        return self.rule

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}: " if self.file is not None else ""
        return f"{where}{self.level}: {self.message} [{self.rule}]"


def has_errors(findings: Iterable[Finding], strict: bool = False) -> bool:
    """True when a finding is an error (or, ``strict``, a warning)."""
    bad = {Level.ERROR, Level.WARNING} if strict else {Level.ERROR}
    return any(f.level in bad for f in findings)
