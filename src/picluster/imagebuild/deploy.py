"""``deploy/``: the compressed image, its block map, checksums and a manifest."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from picluster.files import atomic_write_text
from picluster.imagebuild.steps import StepLog
from picluster.imagebuild.wheelhouse import sha256


def venv_versions(rootfs: Path) -> dict[str, str]:
    """name -> version of every distribution in the image's venv."""
    versions = {}
    for meta in sorted((rootfs / "opt/picluster/lib").glob("python3*/site-packages/*.dist-info")):
        stem = meta.name.removesuffix(".dist-info")
        name, _, version = stem.rpartition("-")
        versions[name.replace("_", "-").lower()] = version
    return versions


def compress(image: Path, deploy: Path, level: int, log: StepLog) -> Path:
    """Write ``<image>.xz`` into ``deploy`` atomically; the raw image stays in the work dir."""
    out = deploy / f"{image.name}.xz"
    partial = out.with_name(out.name + ".partial")
    partial.unlink(missing_ok=True)
    # The image holds the cluster secret: as private as deploy/<name>.secret.
    with os.fdopen(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as fh:
        log.write(f"$ xz -T0 -{level} -c {image} > {partial}")
        subprocess.run(["xz", "-T0", f"-{level}", "-c", str(image)], stdout=fh, check=True)
    partial.replace(out)
    return out


def block_map(image: Path, deploy: Path, log: StepLog) -> Path:
    out = deploy / image.with_suffix(".img.bmap").name
    if shutil.which("bmaptool"):
        log.run(["bmaptool", "create", "-o", str(out), str(image)])
    else:
        log.warn("bmaptool not found: no .bmap written (apt install bmap-tools)")
    return out


def checksums(deploy: Path, name: str, files: list[Path]) -> tuple[Path, dict[Path, str]]:
    """``<name>.sha256`` over ``files`` (those that exist), and each file's digest."""
    sums = {f: sha256(f) for f in files if f.exists()}
    out = deploy / f"{name}.sha256"
    atomic_write_text(out, "".join(f"{digest}  {f.name}\n" for f, digest in sums.items()))
    return out, sums


IMAGER_DEVICES = ["pi5-64bit", "pi4-64bit", "pi3-64bit"]
"""Raspberry Pi Imager's names for the boards an arm64 trixie image boots on."""


def imager_manifest(
    deploy: Path, name: str, xz: Path, raw: Path, raw_sha256: str, description: str
) -> Path:
    """``<name>.rpi-imager-manifest``: what Raspberry Pi Imager 2.x needs to offer its
    customisation (hostname, user and key, Wi-Fi) for this image. Opened in Imager
    (double click, or ``rpi-imager --repo FILE``), it lists the image with
    ``init_format: cloudinit-rpi``, the cloud-init seed that Raspberry Pi OS trixie
    reads; a local ``.img.xz`` chosen with *Use custom* gets no customisation."""
    entry = {
        "name": name,
        "description": description,
        "url": xz.resolve().as_uri(),
        "release_date": datetime.now(UTC).date().isoformat(),
        "image_download_size": xz.stat().st_size,
        "extract_size": raw.stat().st_size,
        "extract_sha256": raw_sha256,
        "init_format": "cloudinit-rpi",
        "devices": IMAGER_DEVICES,
    }
    out = deploy / f"{name}.rpi-imager-manifest"
    atomic_write_text(out, json.dumps({"os_list": [entry]}, indent=2) + "\n")
    return out


def manifest(deploy: Path, name: str, data: dict[str, Any]) -> Path:
    out = deploy / f"{name}.manifest.json"
    atomic_write_text(out, json.dumps(data, indent=2, sort_keys=True) + "\n")
    return out
