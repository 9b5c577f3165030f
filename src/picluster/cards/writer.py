"""Copy an image to the card through the held descriptor, then read it back.

The image is read here too: its uncompressed size (from the ``.xz`` index) and
where its MBR + FAT metadata end, which are written in full. With a bmap (see
``bmap``) only the ranges that hold data are written, each checked against the
bmap while it streams out of the ``.xz``, and read back from the card
afterwards (after dropping the page cache) and compared. Without a bmap the
whole stream is written and its SHA-256 compared with a read-back of the same
length. One code path gives the same progress bar (rate, ETA) and the same
read-back verification either way, which bmaptool's own progress output and
its source-side checksums would not.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from picluster.cards import bootfs
from picluster.cards.bmap import Bmap
from picluster.cards.device import Device
from picluster.cards.errors import FlashError

BLKFLSBUF = 0x1261
BLKRRPART = 0x125F
TAIL_WIPE = 1024 * 1024
"""Zeroed at the end of the card: an old GPT's backup header lives there."""


# --- the image ----------------------------------------------------------------


def boot_metadata_end(image: Path) -> int:
    """Where the MBR + FAT metadata of the image end (see bootfs.fat_metadata_end)."""
    with bootfs.open_image(image) as src:
        first = bootfs.fat_partition(bootfs.parse_mbr(src.read(bootfs.SECTOR), str(image)), image)
        _skip(src, first.start - bootfs.SECTOR)
        return bootfs.fat_metadata_end(src.read(bootfs.SECTOR), first)


def xz_size(image: Path) -> int | None:
    """Uncompressed size from the .xz index (for the progress bar), if xz is installed."""
    if image.suffix != ".xz":
        return image.stat().st_size
    if shutil.which("xz") is None:
        return None
    proc = subprocess.run(
        ["xz", "--robot", "--list", str(image)], capture_output=True, text=True, check=False
    )
    for line in proc.stdout.splitlines():
        fields = line.split("\t")
        if fields[0] == "totals" and len(fields) > 4:
            return int(fields[4])
    return None


# --- writing and verifying ----------------------------------------------------


@dataclass(frozen=True)
class Written:
    ranges: list[tuple[int, int, str]]
    """(first byte, length, sha256 of the source bytes) that were written."""

    @property
    def bytes(self) -> int:
        return sum(length for _, length, _ in self.ranges)


def _skip(src: BinaryIO, count: int) -> None:
    if src.seekable():
        src.seek(count, os.SEEK_CUR)
        return
    while count:
        count -= len(src.read(min(count, bootfs.CHUNK)) or b"\0" * count)


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        done = os.pwrite(fd, view, offset)
        view, offset = view[done:], offset + done


def write_image(
    src: BinaryIO, fd: int, bmap: Bmap | None, advance: Callable[[int], None]
) -> Written:
    if bmap is None:
        digest, offset = hashlib.sha256(), 0
        for block in bootfs.chunks(src):
            _pwrite_all(fd, block, offset)
            digest.update(block)
            offset += len(block)
            advance(len(block))
        return Written([(0, offset, digest.hexdigest())])
    position, out = 0, []
    for start, length, expected in bmap.ranges:
        _skip(src, start - position)
        ours, theirs = hashlib.sha256(), hashlib.new(bmap.checksum_type)
        left, offset = length, start
        while left:
            block = src.read(min(left, bootfs.CHUNK))
            if not block:
                raise FlashError("the image ended before its bmap says it does. Fix: rebuild it")
            _pwrite_all(fd, block, offset)
            ours.update(block)
            theirs.update(block)
            offset += len(block)
            left -= len(block)
            advance(len(block))
        if expected and theirs.hexdigest() != expected:
            raise FlashError(
                f"the image does not match its bmap at bytes {start}-{start + length}: the "
                "image file is corrupt or the bmap belongs to another build. Fix: rebuild or "
                "re-download both"
            )
        out.append((start, length, ours.hexdigest()))
        position = start + length
    return Written(out)


def drop_cache(fd: int) -> None:
    """Make the read-back come from the card, not from the page cache."""
    os.fsync(fd)
    with contextlib.suppress(OSError):
        fcntl.ioctl(fd, BLKFLSBUF)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)


def verify(fd: int, device: Path, written: Written, advance: Callable[[int], None]) -> None:
    """Read back every written range through ``fd`` (named ``device`` in messages)."""
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    for start, length, expected in written.ranges:
        digest, offset, left = hashlib.sha256(), start, length
        while left:
            block = os.pread(fd, min(left, bootfs.CHUNK), offset)
            if not block:
                break
            digest.update(block)
            offset += len(block)
            left -= len(block)
            advance(len(block))
        if left or digest.hexdigest() != expected:
            raise FlashError(
                f"{device}: verification failed at bytes {start}-{start + length}: what "
                "was read back differs from the image. The card may be failing or fake. "
                "Fix: try again; if it fails again, use another card"
            )


def reread_partitions(fd: int, device: Path) -> str:
    """Ask the kernel to re-read the new partition table; a note when it cannot."""
    try:
        fcntl.ioctl(fd, BLKRRPART)
    except OSError as exc:
        return (
            f"{device}: the kernel did not re-read the partition table ({exc.strerror}); "
            "harmless: unplug and replug the card before mounting it"
        )
    return ""


def wipe_tail(fd: int, device: Device, image_end: int) -> None:
    if device.size - image_end >= TAIL_WIPE:
        _pwrite_all(fd, b"\0" * TAIL_WIPE, device.size - TAIL_WIPE)
