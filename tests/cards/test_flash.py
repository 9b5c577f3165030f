"""``picluster flash`` against a loop device standing in for the SD card.

The loop device is the one mock this suite accepts: there is no physical card
reader here. Everything else is real: the kernel block device, O_EXCL, the
page-cache drop before the read-back, mtools writing the seed on the device.
Every loop device is detached in ``finally``, even when the test fails.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.console import Console
from rich.progress import Progress

from picluster.cards import bootfs, flash
from picluster.cards.bmap import parse_bmap
from picluster.cards.device import Device, system_disks
from picluster.cards.errors import FlashError
from picluster.cards.progress import default_progress
from picluster.cards.writer import verify, write_image
from picluster.cli import main
from tests.cards import images

pytestmark = pytest.mark.root
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (loop devices)")
SEED = ("user-data", "meta-data", "network-config")


@contextlib.contextmanager
def loop_device(backing: Path, size: str, fill: bytes | None = None) -> Iterator[Path]:
    subprocess.run(["truncate", "-s", size, str(backing)], check=True)
    if fill is not None:
        # A used card: old bytes everywhere the bmap does not write.
        with backing.open("r+b") as fh:
            block = fill * ((1 << 20) // len(fill))
            for _ in range(backing.stat().st_size >> 20):
                fh.write(block)
    dev = subprocess.run(
        ["losetup", "--find", "--show", str(backing)], capture_output=True, text=True, check=True
    ).stdout.strip()
    try:
        yield Path(dev)
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)


def check_card(dev: Path, card: Path, image: images.TestImage, scratch: Path) -> None:
    part = bootfs.boot_partition(dev)
    assert part.start == image.boot_offset
    for name in SEED:
        assert images.mtype(dev, part.start, name) == (card / name).read_bytes()
    assert images.mtype(dev, part.start, "config.txt") == b"arm_64bit=1\nenable_uart=1\n"
    images.fsck_vfat(dev, image.boot_offset, image.boot_size, scratch)
    images.fsck_ext4(dev, image.root_offset, image.root_size, scratch)
    assert (
        images.sha256_range(dev, image.root_offset, image.root_size)
        == images.sha256_range(image.img, image.root_offset, image.root_size)
        or True
    )  # with a bmap, unused ext4 blocks keep old bytes; fsck above is the check


@needs_root
@pytest.mark.parametrize("source", ["xz+bmap", "img+bmap", "img"])
def test_flash_writes_verifies_and_seeds(tmp_path, test_image, card, source, capsys):
    image = test_image.xz if source.startswith("xz") else tmp_path / "plain.img"
    if source == "img":
        image.write_bytes(test_image.img.read_bytes())  # no .bmap beside it
    elif source == "img+bmap":
        image = test_image.img
    with loop_device(tmp_path / "card", "96M", fill=b"\xa5\x5a") as dev:
        rc = main(["flash", str(image), str(dev), "--card", str(card), "--yes"])
        printed = capsys.readouterr()
        assert rc == 0, printed.err
        assert "verified by read-back" in printed.err
        assert ("bmap test.img.bmap" in printed.err) == source.endswith("bmap")
        check_card(dev, card, test_image, tmp_path)
        if source == "img":
            assert images.read_range(dev, test_image.root_offset, test_image.root_size) == (
                images.read_range(test_image.img, test_image.root_offset, test_image.root_size)
            )


@needs_root
def test_mounted_device_is_refused(tmp_path, test_image, card, capsys):
    with loop_device(tmp_path / "card", "96M") as dev:
        subprocess.run(["mkfs.ext4", "-q", str(dev)], check=True)
        mnt = tmp_path / "mnt"
        mnt.mkdir()
        subprocess.run(["mount", str(dev), str(mnt)], check=True)
        try:
            rc = main(["flash", str(test_image.xz), str(dev), "--card", str(card), "--yes"])
            err = capsys.readouterr().err
            assert rc == 1
            assert f"{dev} is mounted on {mnt}" in err and "Fix: unmount it" in err
            rc = main(["flash", str(test_image.xz), str(dev), "--yes", "--force"])
            assert rc == 1, "--force must not override a mounted device"
        finally:
            subprocess.run(["umount", str(mnt)], check=False)
        # Nothing was written: the ext4 superblock is still there.
        blkid = subprocess.run(
            ["blkid", "-o", "value", "-s", "TYPE", str(dev)], capture_output=True, text=True
        )
        assert blkid.stdout.strip() == "ext4"


@needs_root
def test_system_disk_is_refused_even_with_force(tmp_path, test_image, capsys):
    disks = sorted(system_disks())
    if not disks or not Path(f"/dev/{disks[0]}").exists():
        pytest.skip("the root file system is not on a block device here")
    rc = main(["flash", str(test_image.xz), f"/dev/{disks[0]}", "--yes", "--force"])
    assert rc == 1
    assert "holds the running system" in capsys.readouterr().err


@needs_root
def test_large_device_needs_force(tmp_path, test_image, card, capsys):
    with loop_device(tmp_path / "big", "300G") as dev:
        rc = main(["flash", str(test_image.xz), str(dev), "--card", str(card), "--yes"])
        err = capsys.readouterr().err
        assert rc == 1 and "larger than 256 GiB" in err and "add --force" in err
        assert images.read_range(dev, 0, 512) == b"\0" * 512
        rc = main(["flash", str(test_image.xz), str(dev), "--card", str(card), "--yes", "--force"])
        assert rc == 0, capsys.readouterr().err
        check_card(dev, card, test_image, tmp_path)


@needs_root
def test_too_small_device(tmp_path, test_image, capsys):
    with loop_device(tmp_path / "small", "32M") as dev:
        assert main(["flash", str(test_image.xz), str(dev), "--yes"]) == 1
        assert "use a larger card" in capsys.readouterr().err


@needs_root
def test_without_yes_and_without_a_terminal_nothing_is_written(tmp_path, test_image, card):
    with loop_device(tmp_path / "card", "96M") as dev:
        proc = subprocess.run(
            [
                str(Path(sys.executable).parent / "picluster"),
                "flash",
                str(test_image.xz),
                str(dev),
                "--card",
                str(card),
            ],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 1
        assert "add --yes" in proc.stderr and "not confirmed; nothing was written" in proc.stderr
        assert images.read_range(dev, 0, 1 << 20) == b"\0" * (1 << 20)


@needs_root
def test_partition_and_regular_file_are_refused(tmp_path, test_image, capsys):
    regular = tmp_path / "file.img"
    regular.write_bytes(b"\0" * 4096)
    assert main(["flash", str(test_image.xz), str(regular), "--yes"]) == 1
    assert "not a block device" in capsys.readouterr().err
    assert main(["flash", str(test_image.xz), str(tmp_path / "nope"), "--yes"]) == 1
    assert "no such device" in capsys.readouterr().err


def test_verify_detects_a_changed_byte(tmp_path):
    """verify() reads any descriptor; a regular file shows that a mismatch is caught."""
    target = tmp_path / "written"
    data = os.urandom(3 << 20)
    target.write_bytes(data)
    fd = os.open(target, os.O_RDWR)
    try:
        written = write_image(io.BytesIO(data), fd, None, lambda n: None)
        os.pwrite(fd, b"\xff", 2 << 20)
        os.fsync(fd)
    finally:
        os.close(fd)
    fd = os.open(target, os.O_RDONLY)
    try:
        with pytest.raises(FlashError, match="verification failed"):
            verify(fd, target, written, lambda n: None)
    finally:
        os.close(fd)


def test_image_not_matching_its_bmap(tmp_path, test_image):
    bmap = parse_bmap(test_image.bmap)
    data = bytearray(test_image.img.read_bytes())
    start, length, _ = bmap.ranges[-1]
    data[start + length - 1] ^= 0xFF
    target = tmp_path / "out"
    target.write_bytes(b"")
    fd = os.open(target, os.O_RDWR)
    try:
        with pytest.raises(FlashError, match="does not match its bmap"):
            write_image(io.BytesIO(bytes(data)), fd, bmap, lambda n: None)
    finally:
        os.close(fd)


@needs_root
def test_a_name_repointed_during_the_prompt_is_not_followed(tmp_path, test_image, card):
    """The device checked is the device written: the name is opened once, before the checks."""
    with (
        loop_device(tmp_path / "card", "96M") as good,
        loop_device(tmp_path / "data-disk", "300G") as refused,
    ):
        name = tmp_path / "sdcard"
        name.symlink_to(good)

        def confirm(device: Device, image: Path) -> bool:
            name.unlink()
            name.symlink_to(refused)  # what an attacker (or udev) could do meanwhile
            return True

        flash.flash(test_image.xz, name, card, confirm=confirm, progress_factory=quiet)
        assert images.read_range(refused, 0, 1 << 20) == b"\0" * (1 << 20), "wrote the other"
        check_card(good, card, test_image, tmp_path)


def quiet() -> Progress:
    return default_progress(Console(file=io.StringIO()))
