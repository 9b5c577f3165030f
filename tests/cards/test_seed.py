"""``picluster seed`` on real image files with real mtools (no root, no mounting)."""

from __future__ import annotations

import hashlib
import shutil
import stat
from pathlib import Path

import pytest

from picluster.cards import bootfs
from picluster.cli import main
from tests.cards import images

SEED = ("user-data", "meta-data", "network-config")


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_seeded(out: Path, card: Path, image: images.TestImage, scratch: Path) -> None:
    part = bootfs.boot_partition(out)
    assert part.start == image.boot_offset
    for name in SEED:
        assert images.mtype(out, part.start, name) == (card / name).read_bytes()
    # The files the image already had are untouched; the old meta-data is replaced.
    assert images.mtype(out, part.start, "config.txt") == b"arm_64bit=1\nenable_uart=1\n"
    images.fsck_vfat(out, image.boot_offset, image.boot_size, scratch)
    # Partition 2 is byte-for-byte the image's.
    assert images.sha256_range(out, image.root_offset, image.root_size) == images.sha256_range(
        image.img, image.root_offset, image.root_size
    )
    assert out.stat().st_size == image.img.stat().st_size


@pytest.mark.parametrize("kind", ["img", "xz"])
def test_seed_writes_card_files_into_bootfs(tmp_path, test_image, card, kind):
    source = test_image.img if kind == "img" else test_image.xz
    before = sha(source)
    out = tmp_path / "out" / "engine-1.img"
    assert main(["seed", str(source), "--card", str(card), "-o", str(out)]) == 0
    check_seeded(out, card, test_image, tmp_path)
    assert sha(source) == before
    assert stat.S_IMODE(out.stat().st_mode) == 0o600  # it holds the cluster secret
    assert list(out.parent.iterdir()) == [out]  # no temp files left


def test_seed_output_is_sparse(tmp_path, test_image, card):
    out = tmp_path / "c.img"
    bootfs.seed_image(test_image.xz, card, out)
    assert out.stat().st_blocks * 512 < out.stat().st_size


def test_reseeding_replaces_the_seed(tmp_path, test_image, card):
    out = tmp_path / "c.img"
    bootfs.seed_image(test_image.img, card, out)
    other = card.parent / "engine-2"
    bootfs.seed_image(out, other, tmp_path / "c2.img")
    check_seeded(tmp_path / "c2.img", other, test_image, tmp_path)


def test_missing_seed_files_leave_nothing_behind(tmp_path, test_image, card, capsys):
    (card / "meta-data").unlink()
    out = tmp_path / "out" / "x.img"
    assert main(["seed", str(test_image.img), "--card", str(card), "-o", str(out)]) == 1
    assert "missing meta-data" in capsys.readouterr().err
    assert not out.exists()


def test_not_an_image_fails_atomically(tmp_path, card, capsys):
    junk = tmp_path / "junk.img"
    junk.write_bytes(b"\1" * 4096)
    out = tmp_path / "out" / "x.img"
    assert main(["seed", str(junk), "--card", str(card), "-o", str(out)]) == 1
    assert "no MBR partition table" in capsys.readouterr().err
    assert list(out.parent.iterdir()) == []


def test_card_with_lint_errors_is_refused(tmp_path, test_image, card, capsys):
    meta = card / "meta-data"
    meta.write_text(meta.read_text().replace("instance-id", "instance_id"))
    out = tmp_path / "x.img"
    assert main(["seed", str(test_image.img), "--card", str(card), "-o", str(out)]) == 78
    assert "'instance_id' (underscore)" in capsys.readouterr().err
    assert not out.exists()


def test_output_must_not_be_the_source(tmp_path, test_image, card):
    copy = tmp_path / "same.img"
    shutil.copyfile(test_image.img, copy)
    with pytest.raises(bootfs.BootfsError, match="is the source image"):
        bootfs.seed_image(copy, card, copy)


def test_mbr_parsing_matches_sfdisk(test_image):
    import json
    import subprocess

    table = json.loads(
        subprocess.run(
            ["sfdisk", "--json", str(test_image.img)], capture_output=True, check=True
        ).stdout
    )["partitiontable"]["partitions"]
    parts = bootfs.read_mbr(test_image.img)
    assert [(p.start // 512, p.size // 512) for p in parts] == [
        (t["start"], t["size"]) for t in table
    ]
