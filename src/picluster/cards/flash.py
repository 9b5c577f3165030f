"""Write an image to an SD card, verify it, then put one card's seed on its boot partition.

The steps, each in its own module: ``device`` decides which block devices may
be written and opens the card once (``O_EXCL``), ``bmap`` reads the ``.bmap``
beside the image, ``writer`` copies the image's ranges through that one
descriptor and reads them back, ``progress`` shows the bar, and ``bootfs``
puts the seed on the card. Every step raises ``errors.FlashError``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rich.progress import Progress

from picluster.cards import bootfs
from picluster.cards.bmap import find_bmap, parse_bmap, with_full_region
from picluster.cards.device import Device, check, held_path, open_device
from picluster.cards.errors import FlashError
from picluster.cards.progress import default_progress
from picluster.cards.writer import (
    boot_metadata_end,
    drop_cache,
    reread_partitions,
    verify,
    wipe_tail,
    write_image,
    xz_size,
)


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
            held = held_path(fd)
            part = bootfs.write_seed(held, files)
            bootfs.verify_seed(held, files, part)
            drop_cache(fd)
    finally:
        os.close(fd)
    return Result(device_path, written.bytes, verify_after, bmap_path, part, notes)
