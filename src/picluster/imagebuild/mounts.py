"""Mounts for chroot work, always undone: on success, on error, on Ctrl-C.

Mounts are taken in order and released in reverse, lazily if something still
holds them, and a leftover from an earlier, killed build is swept first, so a
rerun never stacks a second /proc on top of the first.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path


def mounted_under(root: Path) -> list[Path]:
    """Mount points at or below ``root``, deepest first."""
    root = root.resolve()
    points = []
    with Path("/proc/self/mountinfo").open() as fh:
        for line in fh:
            point = Path(line.split()[4].replace("\\040", " "))
            if point == root or root in point.parents:
                points.append(point)
    return sorted(points, key=lambda p: len(p.parts), reverse=True)


def unmount_all(root: Path) -> None:
    for point in mounted_under(root):
        if subprocess.run(["umount", str(point)], check=False, capture_output=True).returncode:
            subprocess.run(["umount", "--lazy", str(point)], check=False, capture_output=True)


@contextlib.contextmanager
def bind(source: Path, target: Path, *, read_only: bool = False) -> Iterator[Path]:
    target.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "--bind", str(source), str(target)], check=True)
    try:
        if read_only:
            subprocess.run(
                ["mount", "-o", "remount,bind,ro", str(target)], check=True, capture_output=True
            )
        yield target
    finally:
        unmount_all(target)


@contextlib.contextmanager
def chroot_mounts(root: Path) -> Iterator[Path]:
    """/proc, /sys, /dev, /dev/pts, /run and /tmp inside ``root``, as pi-gen's on_chroot has."""
    root = root.resolve()
    for point in mounted_under(root):
        if point != root:
            unmount_all(point)
    table = [
        ("proc", "proc", "proc", []),
        ("sysfs", "sys", "sysfs", []),
        ("/dev", "dev", None, ["--rbind"]),
        ("tmpfs", "run", "tmpfs", []),
        ("tmpfs", "tmp", "tmpfs", []),
    ]
    try:
        for source, rel, fstype, extra in table:
            target = root / rel
            target.mkdir(parents=True, exist_ok=True)
            cmd = ["mount", *extra]
            if fstype:
                cmd += ["-t", fstype]
            subprocess.run([*cmd, source, str(target)], check=True)
            if rel == "dev":
                subprocess.run(["mount", "--make-rslave", str(target)], check=True)
        yield root
    finally:
        for point in mounted_under(root):
            if point != root:
                subprocess.run(["umount", "--lazy", str(point)], check=False, capture_output=True)
