"""Write a card's seed into the FAT boot partition of an image or a device, without mounting.

mtools addresses a FAT file system inside a bigger file with
``-i FILE@@OFFSET``, so no loop device, no mount and no root are needed for an
image file, and the same call works on a block device. The offset comes from
the MBR, which we parse here (16-byte entries at 446, little-endian LBA start
and length), because the two image bases only ever use an MBR.
"""

from __future__ import annotations

import contextlib
import lzma
import os
import secrets
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from picluster.cards.seeds import SEED_FILES
from picluster.errors import PiclusterError

SECTOR = 512
CHUNK = 4 * 1024 * 1024
FAT_TYPES = {0x01, 0x04, 0x06, 0x0B, 0x0C, 0x0E}
REQUIRED = ("user-data", "meta-data")


class BootfsError(PiclusterError):
    """The image or card cannot take a seed; ``str()`` says why and what to do."""


@dataclass(frozen=True)
class Partition:
    number: int
    type: int
    start: int
    """Byte offset of the partition."""
    size: int
    """Length in bytes."""


def parse_mbr(sector: bytes, source: str) -> list[Partition]:
    if len(sector) < SECTOR or sector[510:512] != b"\x55\xaa":
        raise BootfsError(
            f"{source}: no MBR partition table (boot signature missing). Fix: give a "
            "picluster image (deploy/<name>.img or .img.xz), not a partition or a raw file system"
        )
    parts = []
    for i in range(4):
        entry = sector[446 + 16 * i : 446 + 16 * (i + 1)]
        ptype = entry[4]
        lba, count = struct.unpack("<II", entry[8:16])
        if ptype == 0xEE:
            raise BootfsError(
                f"{source}: GPT partition table; picluster images use an MBR. Fix: use "
                "an image built by build.sh"
            )
        if ptype and count:
            parts.append(Partition(i + 1, ptype, lba * SECTOR, count * SECTOR))
    return parts


def read_mbr(target: Path) -> list[Partition]:
    with target.open("rb") as fh:
        return parse_mbr(fh.read(SECTOR), str(target))


def fat_partition(parts: list[Partition], source: Path) -> Partition:
    first = next((p for p in parts if p.number == 1), None)
    if first is None or first.type not in FAT_TYPES:
        kind = f"type 0x{first.type:02x}" if first else "missing"
        raise BootfsError(
            f"{source}: partition 1 is {kind}, not the FAT 'bootfs'. Fix: use a "
            "picluster or Raspberry Pi OS image"
        )
    return first


def boot_partition(target: Path) -> Partition:
    return fat_partition(read_mbr(target), target)


def fat_metadata_end(boot_sector: bytes, part: Partition) -> int:
    """Image byte offset where the FAT's metadata ends (reserved area, every FAT, root dir).

    Free-cluster entries in a FAT are zeros, which an image file may store as
    holes and a bmap then leaves out; on a used card the old bytes there would
    read as allocated clusters. Whoever writes with a bmap must write this
    region in full.
    """
    bps = int.from_bytes(boot_sector[11:13], "little")
    spc = boot_sector[13]
    reserved = int.from_bytes(boot_sector[14:16], "little")
    fats = boot_sector[16]
    root_entries = int.from_bytes(boot_sector[17:19], "little")
    fat_size = int.from_bytes(boot_sector[22:24], "little") or int.from_bytes(
        boot_sector[36:40], "little"
    )
    if boot_sector[510:512] != b"\x55\xaa" or bps not in (512, 1024, 2048, 4096) or not spc:
        raise BootfsError("partition 1 does not start with a FAT boot sector")
    root_sectors = (root_entries * 32 + bps - 1) // bps
    data_start = reserved + fats * fat_size + root_sectors
    # FAT32 keeps its root directory in clusters; its first one is usually cluster 2.
    root_cluster = int.from_bytes(boot_sector[44:48], "little") if root_entries == 0 else 2
    end_sector = (
        data_start + (max(root_cluster, 2) - 2 + 1) * spc if root_entries == 0 else data_start
    )
    return min(part.start + end_sector * bps, part.start + part.size)


def _env() -> dict[str, str]:
    # SKIP_CHECK: images made by mkfs.vfat -C or genimage can trip mtools' geometry checks.
    return {**os.environ, "MTOOLS_SKIP_CHECK": "1", "MTOOLSRC": os.devnull}


def _mtools(argv: list[str], what: str) -> bytes:
    if shutil.which(argv[0]) is None:
        raise BootfsError(f"{argv[0]} not found. Fix: apt install mtools")
    proc = subprocess.run(argv, capture_output=True, env=_env(), check=False)
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip()
        raise BootfsError(f"{what} failed: {err or 'exit ' + str(proc.returncode)}")
    return proc.stdout


def seed_files(card: Path) -> dict[str, Path]:
    """The seed files of a card directory, checked to exist."""
    if not card.is_dir():
        raise BootfsError(
            f"{card}: not a directory. Fix: give one card folder made by 'picluster cards', "
            "e.g. cards/engine-1"
        )
    missing = [n for n in REQUIRED if not (card / n).is_file()]
    if missing:
        raise BootfsError(
            f"{card}: missing {', '.join(missing)}. Fix: run 'picluster cards MANIFEST' "
            "and pass one of its card folders"
        )
    return {n: card / n for n in SEED_FILES if (card / n).is_file()}


def write_seed(target: Path, files: dict[str, Path], part: Partition | None = None) -> Partition:
    """Copy the seed files into the root of partition 1 of ``target`` (image or device)."""
    part = part or boot_partition(target)
    spec = f"{target}@@{part.start}"
    for name, src in files.items():
        _mtools(["mcopy", "-o", "-i", spec, str(src), f"::{name}"], f"mcopy {name} to {target}")
    return part


def read_file(target: Path, name: str, part: Partition | None = None) -> bytes:
    part = part or boot_partition(target)
    return _mtools(["mtype", "-i", f"{target}@@{part.start}", f"::{name}"], f"mtype {name}")


def verify_seed(target: Path, files: dict[str, Path], part: Partition) -> None:
    for name, src in files.items():
        if read_file(target, name, part) != src.read_bytes():
            raise BootfsError(f"{target}: {name} reads back different from {src}")


def open_image(image: Path) -> BinaryIO:
    """The image's bytes as a stream: .xz is decompressed on the fly, never to disk."""
    if not image.is_file():
        raise BootfsError(f"{image}: no such image. Fix: run build.sh or give deploy/<name>.img.xz")
    if image.suffix == ".xz":
        return lzma.open(image, "rb")  # type: ignore[return-value]
    return image.open("rb")


def chunks(stream: BinaryIO, size: int = CHUNK) -> Iterator[bytes]:
    while block := stream.read(size):
        yield block


def copy_image(image: Path, dest: BinaryIO, progress: Callable[[int], None] | None = None) -> int:
    """Stream the image into a regular file, leaving all-zero blocks as holes."""
    total = 0
    with open_image(image) as src:
        for block in chunks(src):
            if block.count(0) == len(block):
                dest.seek(len(block), os.SEEK_CUR)
            else:
                dest.write(block)
            total += len(block)
            if progress:
                progress(len(block))
    dest.truncate(total)
    return total


def require_image(image: Path) -> None:
    """An image file to read, or an error that says which and what to give instead."""
    if not image.is_file():
        raise BootfsError(
            f"{image}: no such image file. Fix: give the build's deploy/<name>.img.xz (or a .img)"
        )


def seed_image(
    image: Path, card: Path, output: Path, progress: Callable[[int], None] | None = None
) -> Partition:
    """Copy ``image`` to ``output`` with ``card``'s seed in its bootfs, all or nothing."""
    require_image(image)
    files = seed_files(card)
    if output.exists() and output.resolve() == image.resolve():
        raise BootfsError(f"{output}: is the source image. Fix: choose another -o")
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(
        prefix=f".{output.name}.", suffix=f".{secrets.token_hex(3)}.partial", dir=output.parent
    )
    tmp = Path(name)
    try:
        # The seeded image holds the cluster secret: keep it private like the secret file.
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as dest:
            copy_image(image, dest, progress)
            dest.flush()
            os.fsync(dest.fileno())
        part = write_seed(tmp, files)
        verify_seed(tmp, files, part)
        tmp.replace(output)
        return part
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
