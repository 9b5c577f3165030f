"""A root file system directory becomes a card image: FAT ``bootfs`` + ext4 ``rootfs``.

The layout is Raspberry Pi OS's (MBR; partition 1 FAT32 labelled bootfs,
4 MiB aligned, mounted at /boot/firmware; partition 2 ext4 labelled rootfs),
so every tool treats both bases alike. Nothing is mounted and no loop device
is used: ``mkfs.vfat -C`` + ``mcopy`` fill the FAT file, ``mkfs.ext4 -d``
fills the ext4 file from the directory, ``sfdisk`` writes the table, and the
two file systems are copied into place sparsely.
"""

from __future__ import annotations

import contextlib
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from picluster.imagebuild import mounts
from picluster.imagebuild.steps import StepLog

MiB = 1 << 20
ALIGN = 4 * MiB
BOOT_SIZE = 512 * MiB


@dataclass(frozen=True)
class Layout:
    boot_start: int
    boot_size: int
    root_start: int
    root_size: int

    @property
    def total(self) -> int:
        return self.root_start + self.root_size


def finalise(rootfs: Path) -> None:
    """What pi-gen's export-image does before imaging: no caches, no build leftovers."""
    for rel in ("var/cache/apt/pkgcache.bin", "var/cache/apt/srcpkgcache.bin"):
        (rootfs / rel).unlink(missing_ok=True)
    for lists in (rootfs / "var/lib/apt/lists").glob("*_*"):
        lists.unlink()
    for archive in (rootfs / "var/cache/apt/archives").glob("*.deb"):
        archive.unlink()
    (rootfs / "etc/machine-id").write_text("")


def du_bytes(path: Path) -> int:
    out = subprocess.run(
        ["du", "-s", "--block-size=1", "-x", str(path)], capture_output=True, text=True, check=True
    )
    return int(out.stdout.split()[0])


def plan(root_used: int, extra: int) -> Layout:
    # ext4 metadata and reserved blocks: ~10% over the data, then the slack.
    root = root_used + root_used // 10 + extra
    root = (root + ALIGN - 1) // ALIGN * ALIGN
    return Layout(ALIGN, BOOT_SIZE, ALIGN + BOOT_SIZE, root)


def make_bootfs(firmware: Path, out: Path, size: int, log: StepLog) -> None:
    out.unlink(missing_ok=True)
    log.run(["mkfs.vfat", "-C", "-F", "32", "-n", "bootfs", str(out), str(size // 1024)])
    entries = sorted(firmware.iterdir())
    if entries:
        log.run(["mcopy", "-s", "-p", "-m", "-i", str(out), *map(str, entries), "::"])


def make_rootfs(rootfs: Path, out: Path, size: int, log: StepLog) -> None:
    """ext4 from the tree, with /boot/firmware left empty (it is the FAT partition)."""
    out.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory() as empty, contextlib.ExitStack() as stack:
        stack.enter_context(mounts.bind(Path(empty), rootfs / "boot/firmware"))
        log.run(
            [
                "mkfs.ext4", "-q", "-F", "-L", "rootfs", "-E", "root_owner=0:0",
                "-O", "^metadata_csum_seed", "-d", str(rootfs), str(out), str(size // 1024) + "k",
            ]
        )  # fmt: skip
    log.run(["e2fsck", "-fn", str(out)])


def assemble(rootfs: Path, work: Path, image: Path, extra_mb: int, log: StepLog) -> Layout:
    layout = plan(du_bytes(rootfs), extra_mb * MiB)
    boot_img, root_img = work / "bootfs.vfat", work / "rootfs.ext4"
    make_bootfs(rootfs / "boot/firmware", boot_img, layout.boot_size, log)
    make_rootfs(rootfs, root_img, layout.root_size, log)
    partial = image.with_name(image.name + ".partial")
    partial.unlink(missing_ok=True)
    with partial.open("wb") as fh:
        fh.truncate(layout.total)
    table = (
        "label: dos\n"
        f"start={layout.boot_start // 512}, size={layout.boot_size // 512}, type=c\n"
        f"start={layout.root_start // 512}, size={layout.root_size // 512}, type=83\n"
    )
    log.run(
        ["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", str(partial)], input_text=table
    )
    # The FAT partition is written in full: its zero-filled tables must reach
    # the card, and a hole would drop them from the .bmap (bmaptool would then
    # leave a used card's old bytes there). ext4 marks its unused areas itself.
    for src, offset, conv in (
        (boot_img, layout.boot_start, "notrunc"),
        (root_img, layout.root_start, "notrunc,sparse"),
    ):
        log.run(
            ["dd", f"if={src}", f"of={partial}", "bs=4M", f"conv={conv}",
             f"seek={offset}", "oflag=seek_bytes", "status=none"]
        )  # fmt: skip
        src.unlink()
    partial.replace(image)
    return layout
