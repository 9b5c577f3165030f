"""A cache of slow build products, keyed by everything that went into them.

Entries live outside the repository (default ``/var/cache/picluster``); a
key is the SHA-256 of the inputs' description, so a changed package list,
mirror, hook script or tool version builds a new entry instead of reusing a
stale one. An entry appears only when complete (written under a temporary
name, then renamed), so an interrupted build never leaves a half entry that a
later build would trust.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

DEFAULT_DIR = Path("/var/cache/picluster")


def key(kind: str, inputs: dict[str, Any]) -> str:
    blob = json.dumps(inputs, sort_keys=True, default=str).encode()
    return f"{kind}-{hashlib.sha256(blob).hexdigest()[:16]}"


class Cache:
    def __init__(self, root: Path = DEFAULT_DIR) -> None:
        self.root = root

    def path(self, entry: str) -> Path:
        return self.root / entry

    def get(self, entry: str) -> Path | None:
        path = self.path(entry)
        return path if path.exists() else None

    @contextlib.contextmanager
    def filling(self, entry: str) -> Iterator[Path]:
        """Yield a scratch path; on success it becomes the entry."""
        self.root.mkdir(parents=True, exist_ok=True)
        final = self.path(entry)
        scratch = self.root / f".{entry}.partial"
        _remove(scratch)
        try:
            yield scratch
            scratch.rename(final)
        finally:
            _remove(scratch)

    def prune(self, kind: str, keep: str) -> None:
        """Drop older entries of ``kind``: they can never match again."""
        for old in self.root.glob(f"{kind}-*"):
            if old.name != keep:
                _remove(old)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
