"""The ``.bmap`` beside an image: which ranges hold data, and their checksums.

build.sh writes it with ``bmaptool create``; ``picluster flash`` reads it
itself, without needing bmaptool, and writes only those ranges (plus the boot
metadata in full, see ``with_full_region``).
"""

from __future__ import annotations

import hashlib
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from picluster.cards.errors import FlashError


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
