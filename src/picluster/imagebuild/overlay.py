"""What picluster writes into the image besides the venv, run inside the image.

``stage-cluster/01-service/00-run.sh`` runs it in the chroot with the venv's own
python, after the venv exists, so it needs no picluster on the build host (stock
pi-gen, ``build-docker.sh``): ``/opt/picluster/bin/python -m
picluster.imagebuild.overlay --rootfs /``. The values come from the variables
pi-gen exports to every stage script (the build's ``config``), which reach the
chroot in the environment.

- ``/etc/picluster/cluster.toml`` holding only the node settings the config set
  (``PICLUSTER_CLUSTER_NAME``...), written with a TOML library and checked by the
  node's own schema; everything else keeps the node's one default;
- ``/etc/picluster/secret``: the one the stage script copied in (checked, made
  0600 root), else a new one (the script then saves it to the deploy dir);
- cloud-init's default user = ``FIRST_USER_NAME`` (locked, keys only), so a card
  seed that names no user gives its keys to the image's own first user;
- sshd keys only (the image has no password to log in with; a seed's
  ``ssh_pwauth`` still wins, its drop-in sorts first);
- ``/boot/firmware`` mounted root-only (the card seed holds the secret).

The units and the example seeds are plain files the script installs itself.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from pathlib import Path

from pydantic import TypeAdapter, ValidationError

from picluster import config as config_mod
from picluster import secret as secret_mod
from picluster.cards.seeds import GROUPS, to_yaml
from picluster.errors import ConfigurationError
from picluster.files import atomic_write_text
from picluster.imagebuild import settings as settings_mod
from picluster.names import LoginName

CLOUD_DEFAULT_USER = "etc/cloud/cloud.cfg.d/91-picluster-user.cfg"
SSHD_KEYS_ONLY = "etc/ssh/sshd_config.d/50-picluster.conf"
SSHD = """# picluster image: keys only (a card seed or Raspberry Pi Imager adds them).
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin no
"""


class OverlayError(ConfigurationError):
    pass


def cluster_toml(env: Mapping[str, str] = os.environ) -> str:
    """The image's ``cluster.toml`` from the variables pi-gen exports (``config``)."""
    overrides = settings_mod.node_overrides_from_env(env)
    return config_mod.dumps(
        overrides,
        "picluster node settings from the build's config; `picluster doctor` checks them.\n"
        "Keys not here have the defaults in the README's cluster.toml reference. A card\n"
        "seed adds its own layer in cluster.toml.d/ (read after this file).",
    )


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


def _first_user(env: Mapping[str, str]) -> str:
    # pi-gen exports it (its own default when the config has none), and so does our
    # runner (./config sets it): a second default here would be a twin of theirs.
    name = env.get("FIRST_USER_NAME")
    if not name:
        raise OverlayError(
            "FIRST_USER_NAME is not set: run the stage through pi-gen or ./build.sh, "
            "which export the build's config to every stage script"
        )
    try:
        return TypeAdapter(LoginName).validate_python(name)
    except ValidationError:
        raise OverlayError(
            f"FIRST_USER_NAME={name!r}: not a login name. Fix: set FIRST_USER_NAME in the config"
        ) from None


def ensure_secret(path: Path) -> str:
    """Keep the secret the stage copied in (checked, 0600 root) or make one."""
    if path.exists():
        secret = secret_mod.load(path)
        how = "from the build"
    else:
        secret = secret_mod.generate()
        how = "new"
    secret_mod.write(path, secret)
    os.chown(path, 0, 0)
    return f"{how}, fingerprint {secret_mod.fingerprint(secret)}"


def apply(rootfs: Path, env: Mapping[str, str] = os.environ) -> str:
    if not (rootfs / "usr").is_dir():
        raise OverlayError(f"{rootfs}: not a root file system")
    etc = rootfs / "etc/picluster"
    etc.mkdir(parents=True, exist_ok=True)
    etc.chmod(0o755)
    atomic_write_text(etc / "cluster.toml", cluster_toml(env), 0o644)
    secret = ensure_secret(etc / "secret")
    atomic_write_text(rootfs / CLOUD_DEFAULT_USER, default_user(_first_user(env)), 0o644)
    atomic_write_text(rootfs / SSHD_KEYS_ONLY, SSHD, 0o644)
    fstab = rootfs / "etc/fstab"
    if fstab.exists():
        atomic_write_text(fstab, private_bootfs(fstab.read_text()), 0o644)
    return secret


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m picluster.imagebuild.overlay", description=__doc__
    )
    parser.add_argument("--rootfs", type=Path, default=Path("/"))
    args = parser.parse_args(argv)
    try:
        secret = apply(args.rootfs)
    except ConfigurationError as exc:
        print(f"overlay: {exc}", file=sys.stderr)
        return 1
    print(f"overlay: cluster.toml, cloud-init default user, sshd keys only; secret {secret}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
