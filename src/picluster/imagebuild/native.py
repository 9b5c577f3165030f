"""A native (amd64) twin of the target's Python, for work that must not be emulated.

The image runs Debian trixie's CPython 3.13 on arm64. Bytecode is the same
on every architecture, so installing wheels and byte-compiling with the same
CPython version built for the build host produces exactly the files the target
would produce, at native speed instead of under qemu-user (the slowest part
of an emulated build by far). The twin is a tiny trixie chroot made by
mmdebstrap once and cached, keyed by release, mirror and package list.
"""

from __future__ import annotations

import contextlib
import platform
from collections.abc import Iterator
from pathlib import Path

from picluster.imagebuild import cache as cache_mod
from picluster.imagebuild import mounts
from picluster.imagebuild.steps import StepLog

PACKAGES = ("python3.13", "python3.13-venv")


def host_arch() -> str:
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())


def ensure(cache: cache_mod.Cache, log: StepLog, release: str, mirror: str) -> Path:
    entry = cache_mod.key(
        "native-python",
        {"release": release, "mirror": mirror, "packages": PACKAGES, "arch": host_arch()},
    )
    found = cache.get(entry)
    if found:
        log.note(f"native Python: cached {found}")
        return found
    with cache.filling(entry) as scratch:
        log.run(
            [
                "mmdebstrap",
                f"--arch={host_arch()}",
                "--variant=minbase",
                f"--include={','.join(PACKAGES)}",
                "--dpkgopt=path-exclude=/usr/share/doc/*",
                "--dpkgopt=path-exclude=/usr/share/man/*",
                release,
                str(scratch),
                mirror,
            ]
        )
    return cache.path(entry)


@contextlib.contextmanager
def session(native_root: Path, binds: dict[str, Path]) -> Iterator[Path]:
    """Bind ``binds`` (path inside the twin -> host path) and yield the twin's root."""
    stack = contextlib.ExitStack()
    with stack:
        stack.enter_context(mounts.chroot_mounts(native_root))
        for inside, outside in binds.items():
            stack.enter_context(mounts.bind(outside, native_root / inside.lstrip("/")))
        yield native_root


def run(native_root: Path, argv: list[str], log: StepLog) -> None:
    log.run(
        ["chroot", str(native_root), *argv],
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8"},
    )
