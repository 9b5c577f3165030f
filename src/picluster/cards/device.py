"""Which block devices ``picluster flash`` may write, opened once.

Safety first: writing to the wrong disk destroys someone's data, so a device is
refused when it (or any of its partitions) is mounted, used as swap or held by
device-mapper, when it holds the running system, and, unless ``--force``, when
it is larger than any SD card one would put in a Pi (256 GiB). The device is
opened once, with ``O_EXCL`` (which the kernel refuses for a device in use),
before any check: the checks, the write, the read-back and the seed all go
through that descriptor, so a name repointed meanwhile changes nothing.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from picluster.cards.errors import FlashError

GiB = 1024**3
MAX_DEVICE = 256 * GiB


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


def held_path(fd: int) -> Path:
    """A name for the descriptor we hold (its /proc link): a tool given it (mtools)
    opens the device we checked, never the name again."""
    return Path(f"/proc/{os.getpid()}/fd/{fd}")


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
