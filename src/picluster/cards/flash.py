"""Write an image to an SD card, verify it, then put one card's seed on its boot partition.

Safety first: writing to the wrong disk destroys someone's data, so a device is
refused when it (or any of its partitions) is mounted, used as swap or held by
device-mapper, when it holds the running system, and, unless ``--force``, when
it is larger than any SD card one would put in a Pi (256 GiB). The device is
opened once, with ``O_EXCL`` (which the kernel refuses for a device in use),
before any check: the checks, the write, the read-back and the seed all go
through that descriptor, so a name repointed meanwhile changes nothing.

The copy is bmap-aware without needing bmaptool: the ``.bmap`` beside the image
(written by build.sh with ``bmaptool create``) lists the ranges that hold data
and their SHA-256, so only those are written, each checked against the bmap
while it streams out of the ``.xz``, and read back from the card afterwards
(after dropping the page cache) and compared. Without a bmap the whole stream
is written and its SHA-256 compared with a read-back of the same length. One
code path gives the same progress bar (rate, ETA) and the same read-back
verification either way, which bmaptool's own progress output and its
source-side checksums would not.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import shutil
import stat
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from picluster.cards import bootfs

GiB = 1024**3
MAX_DEVICE = 256 * GiB
BLKFLSBUF = 0x1261
BLKRRPART = 0x125F
TAIL_WIPE = 1024 * 1024
"""Zeroed at the end of the card: an old GPT's backup header lives there."""


class FlashError(Exception):
    """The device is refused or the write failed; ``str()`` says why and what to do."""


# --- the device ---------------------------------------------------------------


@dataclass(frozen=True)
class Device:
    path: Path
    name: str
    """Kernel name, e.g. ``sdb`` or ``loop3``."""
    rdev: int
    size: int
    description: str
    sysfs: Path
    partitions: dict[int, str] = field(default_factory=dict)
    """rdev -> kernel name of each partition."""


def _sysfs(rdev: int) -> Path:
    return Path(os.path.realpath(f"/sys/dev/block/{os.major(rdev)}:{os.minor(rdev)}"))


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _dev_number(sysdir: Path) -> int:
    major, minor = _read(sysdir / "dev").split(":")
    return os.makedev(int(major), int(minor))


def inspect(path: Path, fd: int | None = None) -> Device:
    """What ``path`` is; with ``fd``, what that open descriptor is (a symlink repointed
    since it was opened changes nothing)."""
    try:
        st = os.fstat(fd) if fd is not None else path.stat()
    except FileNotFoundError:
        raise FlashError(
            f"{path}: no such device. Fix: check 'lsblk' for the card's name"
        ) from None
    if not stat.S_ISBLK(st.st_mode):
        raise FlashError(
            f"{path}: not a block device. Fix: give the whole card, e.g. /dev/sdb or "
            "/dev/mmcblk0 (for an image file use 'picluster seed')"
        )
    sysdir = _sysfs(st.st_rdev)
    if (sysdir / "partition").exists():
        parent = sysdir.parent.name
        raise FlashError(
            f"{path}: is a partition of /dev/{parent}. Fix: give the whole card, /dev/{parent}"
        )
    size = int(_read(sysdir / "size") or 0) * 512
    model = " ".join(
        x for x in (_read(sysdir / "device" / "vendor"), _read(sysdir / "device" / "model")) if x
    )
    backing = _read(sysdir / "loop" / "backing_file")
    description = model or (f"loop device on {backing}" if backing else sysdir.name)
    partitions = {
        _dev_number(p): p.name
        for p in sysdir.iterdir()
        if p.is_dir() and (p / "partition").exists()
    }
    return Device(path, sysdir.name, st.st_rdev, size, description, sysdir, partitions)


def open_device(path: Path) -> tuple[int, Device]:
    """Open the card once, exclusively (the kernel refuses while anything has it mounted
    or open exclusively); every check, the write, the read-back and the seed then use
    this descriptor, so the device checked is the device written."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_EXCL | os.O_CLOEXEC)
    except OSError as exc:
        # Say why when the name tells (absent, a partition, mounted, the system disk).
        check(inspect(path), force=True, image_size=None)
        fix = {
            errno.EBUSY: "something uses it. Fix: unmount it and close programs using it",
            errno.EROFS: "it is read-only. Fix: slide the card's lock switch up (unlocked)",
        }.get(exc.errno or 0, "Fix: run as root (sudo) and check 'lsblk'")
        raise FlashError(f"{path}: cannot open for writing ({exc.strerror}): {fix}") from None
    try:
        return fd, inspect(path, fd)
    except BaseException:
        os.close(fd)
        raise


def _disks_of(rdev: int) -> set[str]:
    """Whole-disk names under a device number, through partitions and device-mapper."""
    try:
        sysdir = _sysfs(rdev)
    except OSError:
        return set()
    if not sysdir.exists() or sysdir.name.isdigit():
        return set()
    if (sysdir / "partition").exists():
        sysdir = sysdir.parent
    slaves = sysdir / "slaves"
    found = {sysdir.name}
    if slaves.is_dir():
        for slave in slaves.iterdir():
            with contextlib.suppress(OSError, ValueError):
                found |= _disks_of(_dev_number(slave.resolve()))
    return found


def system_disks() -> set[str]:
    """Disks that hold the running system (/, /boot, /usr, /var)."""
    disks: set[str] = set()
    for mountpoint in ("/", "/boot", "/boot/firmware", "/usr", "/var"):
        with contextlib.suppress(OSError):
            disks |= _disks_of(Path(mountpoint).stat().st_dev)
    for source, target in _mounts():
        if target in ("/", "/boot", "/boot/firmware", "/usr", "/var"):
            with contextlib.suppress(OSError):
                disks |= _disks_of(Path(source).stat().st_rdev)
    return disks


def _mounts() -> list[tuple[str, str]]:
    out = []
    for line in _read(Path("/proc/mounts")).splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0].startswith("/dev/"):
            out.append((fields[0], fields[1].replace("\\040", " ")))
    return out


def _in_use(device: Device) -> list[str]:
    ours = {device.rdev: device.name, **device.partitions}
    problems = []
    for source, target in _mounts():
        with contextlib.suppress(OSError):
            rdev = Path(source).stat().st_rdev
            if rdev in ours:
                problems.append(f"/dev/{ours[rdev]} is mounted on {target}")
    for line in _read(Path("/proc/swaps")).splitlines()[1:]:
        with contextlib.suppress(OSError, IndexError):
            rdev = Path(line.split()[0]).stat().st_rdev
            if rdev in ours:
                problems.append(f"/dev/{ours[rdev]} is used as swap")
    for name in [device.name, *device.partitions.values()]:
        sysdir = device.sysfs if name == device.name else device.sysfs / name
        holders = sorted(p.name for p in (sysdir / "holders").glob("*"))
        if holders:
            problems.append(f"/dev/{name} is held by {', '.join(holders)} (LVM/LUKS/RAID)")
    return problems


def check(device: Device, *, force: bool, image_size: int | None) -> None:
    """Refuse devices that must not be overwritten; each message says what to do."""
    if device.name in system_disks():
        raise FlashError(
            f"{device.path}: holds the running system (/). Refusing, even with --force. "
            "Fix: check 'lsblk' and give the SD card's device"
        )
    problems = _in_use(device)
    if problems:
        raise FlashError(
            f"{device.path}: in use: {'; '.join(problems)}. Fix: unmount it first, e.g. "
            f"'udisksctl unmount -b /dev/<partition>' or 'sudo umount /dev/<partition>'"
        )
    if device.size > MAX_DEVICE and not force:
        raise FlashError(
            f"{device.path}: {device.size / GiB:.0f} GiB is larger than {MAX_DEVICE // GiB} GiB, "
            "bigger than an SD card for a Pi usually is; this may be a data disk. "
            "Fix: check 'lsblk'; if it really is the card, add --force"
        )
    if device.size == 0:
        raise FlashError(f"{device.path}: has no medium (size 0). Fix: insert the card")
    if image_size is not None and image_size > device.size:
        raise FlashError(
            f"{device.path}: the image needs {image_size / GiB:.2f} GiB but the device has "
            f"{device.size / GiB:.2f} GiB. Fix: use a larger card"
        )


# --- the image ----------------------------------------------------------------


@dataclass(frozen=True)
class Bmap:
    image_size: int
    block_size: int
    checksum_type: str
    ranges: list[tuple[int, int, str]]
    """(first byte, length, checksum of those bytes)."""

    @property
    def mapped(self) -> int:
        return sum(length for _, length, _ in self.ranges)


def with_full_region(bmap: Bmap, end: int) -> Bmap:
    """The bmap's ranges, but bytes 0..end written in full (MBR, FAT metadata).

    Checksums are kept only for bmap ranges wholly after ``end``; the read-back
    still checks every byte written.
    """
    end = min(end, bmap.image_size)
    ranges: list[tuple[int, int, str]] = [(0, end, "")]
    for start, length, checksum in bmap.ranges:
        stop = start + length
        if stop <= end:
            continue
        if start < end:
            ranges.append((end, stop - end, ""))
        else:
            ranges.append((start, length, checksum))
    return Bmap(bmap.image_size, bmap.block_size, bmap.checksum_type, ranges)


def boot_metadata_end(image: Path) -> int:
    """Where the MBR + FAT metadata of the image end (see bootfs.fat_metadata_end)."""
    with bootfs.open_image(image) as src:
        first = bootfs.fat_partition(bootfs.parse_mbr(src.read(bootfs.SECTOR), str(image)), image)
        _skip(src, first.start - bootfs.SECTOR)
        return bootfs.fat_metadata_end(src.read(bootfs.SECTOR), first)


def find_bmap(image: Path) -> Path | None:
    base = image.with_suffix("") if image.suffix == ".xz" else image
    for candidate in (base.with_name(base.name + ".bmap"), base.with_suffix(".bmap")):
        if candidate.is_file():
            return candidate
    return None


def parse_bmap(path: Path) -> Bmap:
    """The bmap format of bmap-tools 2.x/3.x (``bmaptool create``)."""
    try:
        # The bmap comes from our own build next to the image, not from the network.
        root = ET.parse(path).getroot()  # noqa: S314
        image_size = int(root.findtext("ImageSize", "").strip())
        block_size = int(root.findtext("BlockSize", "").strip())
        ctype = (root.findtext("ChecksumType") or "sha1").strip()
        ranges = []
        for rng in root.iter("Range"):
            text = (rng.text or "").strip()
            first, _, last = text.partition("-")
            start = int(first) * block_size
            end = min((int(last or first) + 1) * block_size, image_size)
            ranges.append((start, end - start, rng.get("chksum", "")))
    except (ET.ParseError, ValueError, OSError) as exc:
        raise FlashError(
            f"{path}: not a usable bmap ({exc}). Fix: regenerate it with 'bmaptool create' "
            "or delete it to write the whole image"
        ) from None
    if ctype not in hashlib.algorithms_available:
        raise FlashError(f"{path}: unknown ChecksumType {ctype!r}")
    return Bmap(image_size, block_size, ctype, sorted(ranges))


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


@dataclass(frozen=True)
class Result:
    device: Path
    written: int
    verified: bool
    bmap: Path | None
    boot: bootfs.Partition | None
    notes: list[str]


def flash(
    image: Path,
    device_path: Path,
    card: Path | None,
    *,
    force: bool = False,
    verify_after: bool = True,
    confirm: Callable[[Device, Path], bool],
    progress_factory: Callable[[], Progress] | None = None,
) -> Result:
    """Write ``image`` to ``device_path`` and ``card``'s seed onto it; ``confirm`` may veto."""
    bootfs.require_image(image)
    files = bootfs.seed_files(card) if card else None
    bmap_path = find_bmap(image)
    bmap = parse_bmap(bmap_path) if bmap_path else None
    if bmap:
        bmap = with_full_region(bmap, boot_metadata_end(image))
    size = bmap.image_size if bmap else xz_size(image)
    fd, device = open_device(device_path)
    try:
        check(device, force=force, image_size=size)
        if not confirm(device, image):
            raise FlashError("not confirmed; nothing was written")
        notes: list[str] = []
        make = progress_factory or default_progress
        with bootfs.open_image(image) as src, make() as bar:
            total = bmap.mapped if bmap else size
            task = bar.add_task(f"write {image.name}", total=total)
            written = write_image(src, fd, bmap, lambda n: bar.advance(task, n))
            end = max(start + length for start, length, _ in written.ranges)
            wipe_tail(fd, device, end)
            drop_cache(fd)
            if verify_after:
                check_task = bar.add_task("verify", total=written.bytes)
                verify(fd, device_path, written, lambda n: bar.advance(check_task, n))
        note = reread_partitions(fd, device_path)
        if note:
            notes.append(note)
        part = None
        if files:
            # mtools opens the descriptor we hold (its /proc link), never the name again.
            held = Path(f"/proc/{os.getpid()}/fd/{fd}")
            part = bootfs.write_seed(held, files)
            bootfs.verify_seed(held, files, part)
            drop_cache(fd)
    finally:
        os.close(fd)
    return Result(device_path, written.bytes, verify_after, bmap_path, part, notes)


def default_progress(console: Console | None = None) -> Progress:
    return Progress(
        TextColumn("{task.description:<24}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
    )
