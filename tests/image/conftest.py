"""The image tier: one debian-base build per session, shared with the boot tier.

The build is the user's command (``./build.sh --base debian``) writing into
``work/`` and ``deploy/`` of the checkout; the base rootfs comes from the
cache in /var/cache/picluster when its inputs match (a fresh machine builds it
from nothing). Set PICLUSTER_TEST_REUSE_IMAGE=1 to inspect an existing build
without rebuilding.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.harness import imagebuild
from tests.harness.imagebuild import DEPLOY, WORK

NAME = "picluster"


@dataclass(frozen=True)
class BuiltImage:
    raw: Path
    xz: Path
    bmap: Path
    sha256: Path
    secret: Path
    manifest: dict
    log: Path


def build_image() -> BuiltImage:
    """The session's image: the background build's result (see tests/harness/imagebuild.py)."""
    code, output = imagebuild.finish()
    print(output)
    if code != 0:
        pytest.fail(f"./build.sh --base debian failed ({code}):\n{output[-4000:]}")
    manifest_path = DEPLOY / f"{NAME}.manifest.json"
    manifest = json.loads(manifest_path.read_text())
    return BuiltImage(
        raw=Path(manifest["raw_image"]),
        xz=DEPLOY / f"{NAME}.img.xz",
        bmap=DEPLOY / f"{NAME}.img.bmap",
        sha256=DEPLOY / f"{NAME}.sha256",
        secret=DEPLOY / f"{NAME}.secret",
        manifest=manifest,
        log=WORK / "build.log",
    )


@pytest.fixture(scope="session")
def built_image() -> BuiltImage:
    if os.geteuid() != 0:
        pytest.skip("the image tier needs root (chroot, mounts)")
    return build_image()


@contextlib.contextmanager
def mounted_partitions(raw: Path, mountpoint: Path):
    """The ext4 root mounted read-only through a loop device, detached afterwards.

    The FAT partition is read with mtools instead (this kernel may lack vfat,
    and the card tools never mount it either); it gets a loop device for blkid.
    """
    table = json.loads(
        subprocess.run(
            ["sfdisk", "--json", str(raw)], capture_output=True, text=True, check=True
        ).stdout
    )["partitiontable"]["partitions"]
    loops: list[str] = []
    mounted: list[Path] = []
    try:
        for part in table:
            loop = subprocess.run(
                ["losetup", "--find", "--show", "--read-only", "--offset", str(part["start"] * 512),
                 "--sizelimit", str(part["size"] * 512), str(raw)],
                capture_output=True, text=True, check=True,
            ).stdout.strip()  # fmt: skip
            loops.append(loop)
        mountpoint.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-o", "ro", loops[1], str(mountpoint)], check=True)
        mounted.append(mountpoint)
        yield table, loops
    finally:
        for point in reversed(mounted):
            subprocess.run(["umount", "--lazy", str(point)], check=False)
        for loop in loops:
            subprocess.run(["losetup", "-d", loop], check=False)
