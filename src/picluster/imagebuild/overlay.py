"""What the stage puts into the image besides the venv.

Called by ``stage-cluster/01-service/00-run.sh`` on the build host:
``python -m picluster.imagebuild.overlay --rootfs DIR --files DIR``. The values
come from the variables pi-gen exports to every stage script (``config``).

- the systemd units from ``files/systemd`` (enabled later, in the chroot);
- ``/etc/picluster/cluster.toml`` holding only the node settings ``config`` set
  (``PICLUSTER_CLUSTER_NAME``...), written with a TOML library and checked by
  the node's own schema; everything else keeps the node's one default;
- ``/etc/picluster/secret`` (0600, root) from ``PICLUSTER_SECRET_FILE``;
- cloud-init's default user = ``FIRST_USER_NAME`` (locked, keys only), so a card
  seed that names no user gives its keys to the image's own first user;
- example seeds on the FAT partition (``/boot/firmware``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path

from picluster import config as config_mod
from picluster import secret as secret_mod
from picluster.cards.seeds import GROUPS, to_yaml
from picluster.errors import ConfigurationError
from picluster.files import atomic_write, atomic_write_text
from picluster.imagebuild import settings as settings_mod

UNIT_DIR = "usr/lib/systemd/system"


class OverlayError(ConfigurationError):
    pass


def _env(name: str) -> str:
    value = os.environ.get(name)
    if value is None:
        raise OverlayError(
            f"{name} is not set: run the stage through ./build.sh (or pi-gen with ./config)"
        )
    return value


def cluster_toml(env: Mapping[str, str] = os.environ) -> str:
    """The image's ``cluster.toml`` from the variables pi-gen exports (``config``)."""
    overrides = settings_mod.node_overrides_from_env(env)
    return config_mod.dumps(
        overrides,
        "picluster node settings from the build's config; `picluster doctor` checks them.\n"
        "Keys not here have the defaults in the README's cluster.toml reference. A card\n"
        "seed adds its own layer in cluster.toml.d/ (read after this file).",
    )


CLOUD_DEFAULT_USER = "etc/cloud/cloud.cfg.d/91-picluster-user.cfg"


def default_user(name: str) -> str:
    """cloud-init's default user: the image's first user, locked, keys only, sudo without
    a password (it has none). ``users: [default]`` in a seed means this user."""
    data = {
        "system_info": {
            "default_user": {
                "name": name,
                "gecos": "picluster user",
                "groups": list(GROUPS),
                "shell": "/bin/bash",
                "lock_passwd": True,
                "sudo": ["ALL=(ALL) NOPASSWD:ALL"],
            }
        }
    }
    return "# FIRST_USER_NAME of the build (picluster overlay)\n" + to_yaml(data)


BOOTFS_PRIVATE = "fmask=0077,dmask=0077"
"""The card seed on /boot/firmware holds the cluster secret (and maybe a Wi-Fi
password): FAT has no owners, so the mount options keep it root's."""


def private_bootfs(fstab: str) -> str:
    """``fstab`` with the /boot/firmware entry readable by root only (idempotent)."""
    lines = []
    for line in fstab.splitlines():
        fields = line.split()
        if len(fields) >= 4 and not line.lstrip().startswith("#") and fields[1] == "/boot/firmware":
            options = [o for o in fields[3].split(",") if not o.startswith(("fmask=", "dmask="))]
            fields[3] = ",".join([*options, BOOTFS_PRIVATE])
            line = "  ".join(fields)
        lines.append(line)
    return "\n".join(lines) + "\n"


def apply(rootfs: Path, files: Path) -> None:
    if not (rootfs / "usr").is_dir():
        raise OverlayError(f"{rootfs}: not a root file system")
    for unit in sorted((files / "systemd").glob("*.service")):
        shutil.copyfile(unit, rootfs / UNIT_DIR / unit.name)
        (rootfs / UNIT_DIR / unit.name).chmod(0o644)
    etc = rootfs / "etc/picluster"
    etc.mkdir(parents=True, exist_ok=True)
    etc.chmod(0o755)
    atomic_write_text(etc / "cluster.toml", cluster_toml(), 0o644)
    secret_file = Path(_env("PICLUSTER_SECRET_FILE"))
    secret = secret_mod.load(secret_file)
    atomic_write(etc / "secret", (secret_mod.encode(secret) + "\n").encode(), 0o600)
    os.chown(etc / "secret", 0, 0)
    atomic_write_text(rootfs / CLOUD_DEFAULT_USER, default_user(_env("FIRST_USER_NAME")), 0o644)
    # What the units' Documentation= lines point at.
    docs = rootfs / "opt/picluster/share/doc/picluster"
    docs.mkdir(parents=True, exist_ok=True)
    repo = files.parent
    for doc in [repo / "README.md", *sorted((repo / "docs").glob("*.md"))]:
        shutil.copyfile(doc, docs / doc.name)
    fstab = rootfs / "etc/fstab"
    if fstab.exists():
        atomic_write_text(fstab, private_bootfs(fstab.read_text()), 0o644)
    firmware = rootfs / "boot/firmware"
    firmware.mkdir(parents=True, exist_ok=True)
    for name in ("user-data", "meta-data", "network-config"):
        shutil.copyfile(files / "cloud-init" / name, firmware / name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m picluster.imagebuild.overlay", description=__doc__
    )
    parser.add_argument("--rootfs", type=Path, required=True)
    parser.add_argument("--files", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        apply(args.rootfs, args.files)
    except (OverlayError, config_mod.ConfigError, secret_mod.SecretError) as exc:
        print(f"overlay: {exc}", file=sys.stderr)
        return 1
    print("overlay: units, cluster.toml, secret (0600) and example seeds installed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
