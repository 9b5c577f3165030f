"""Build a small image with the picluster layout, from real tools, without mounting.

MBR; partition 1 FAT32 ``bootfs``; partition 2 ext4 ``rootfs``, the same
layout as both image bases, assembled the way the build does (``mkfs.vfat -C``,
``mcopy``, ``mkfs.ext4 -d``, ``sfdisk``, ``dd conv=notrunc,sparse``).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

SECTOR = 512
BOOT_START = 8192  # 4 MiB, as pi-gen aligns
MTOOLS_ENV = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}


def run(*argv: str | Path, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in argv], check=True, capture_output=True, **kw)


@dataclass(frozen=True)
class TestImage:
    img: Path
    xz: Path
    bmap: Path
    boot_offset: int
    boot_size: int
    root_offset: int
    root_size: int


def build(directory: Path, boot_mib: int = 40, root_mib: int = 24) -> TestImage:
    directory.mkdir(parents=True, exist_ok=True)
    boot_sectors = boot_mib * 2048
    root_start = BOOT_START + boot_sectors
    root_sectors = root_mib * 2048
    img = directory / "test.img"
    run("truncate", "-s", str((root_start + root_sectors) * SECTOR), img)
    table = (
        "label: dos\nunit: sectors\n"
        f"start={BOOT_START}, size={boot_sectors}, type=c\n"
        f"start={root_start}, size={root_sectors}, type=83\n"
    )
    run("sfdisk", "--quiet", img, input=table.encode())

    boot = directory / "boot.part"
    run("mkfs.vfat", "-F", "32", "-n", "BOOTFS", "-C", boot, str(boot_sectors // 2))
    config = directory / "config.txt"
    config.write_text("arm_64bit=1\nenable_uart=1\n")
    run("mcopy", "-i", boot, config, "::config.txt", env=MTOOLS_ENV)
    # An old seed in the image, as Raspberry Pi OS ships one: ours must replace it.
    meta = directory / "meta-data"
    meta.write_text("instance_id: rpios-image\n")
    run("mcopy", "-i", boot, meta, "::meta-data", env=MTOOLS_ENV)

    rootdir = directory / "rootdir"
    (rootdir / "etc").mkdir(parents=True, exist_ok=True)
    (rootdir / "etc" / "hostname").write_text("raspberrypi\n")
    (rootdir / "etc" / "payload").write_bytes(os.urandom(1 << 20))
    root = directory / "root.part"
    run("mkfs.ext4", "-q", "-F", "-L", "rootfs", "-d", rootdir, root, f"{root_mib}M")

    for part, start in ((boot, BOOT_START), (root, root_start)):
        run("dd", f"if={part}", f"of={img}", "bs=512", f"seek={start}", "conv=notrunc,sparse")
        part.unlink()
    bmap = directory / "test.img.bmap"
    run("bmaptool", "create", "-o", bmap, img)
    xz = directory / "test.img.xz"
    run("xz", "-k", "-1", "-T2", "-f", img)
    return TestImage(
        img,
        xz,
        bmap,
        BOOT_START * SECTOR,
        boot_sectors * SECTOR,
        root_start * SECTOR,
        root_sectors * SECTOR,
    )


def read_range(path: Path, offset: int, size: int) -> bytes:
    with path.open("rb") as fh:
        fh.seek(offset)
        return fh.read(size)


def sha256_range(path: Path, offset: int, size: int) -> str:
    return hashlib.sha256(read_range(path, offset, size)).hexdigest()


def mtype(target: Path, offset: int, name: str) -> bytes:
    return run("mtype", "-i", f"{target}@@{offset}", f"::{name}", env=MTOOLS_ENV).stdout


def fsck_vfat(target: Path, offset: int, size: int, scratch: Path) -> str:
    """fsck.vfat -n on a copy of the partition; raises if it is not clean."""
    part = scratch / "fsck.part"
    part.write_bytes(read_range(target, offset, size))
    try:
        proc = subprocess.run(["fsck.vfat", "-n", str(part)], capture_output=True, text=True)
    finally:
        part.unlink()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def fsck_ext4(target: Path, offset: int, size: int, scratch: Path) -> None:
    part = scratch / "fsck-ext4.part"
    part.write_bytes(read_range(target, offset, size))
    try:
        proc = subprocess.run(["e2fsck", "-fn", str(part)], capture_output=True, text=True)
    finally:
        part.unlink()
    assert proc.returncode == 0, proc.stdout + proc.stderr
