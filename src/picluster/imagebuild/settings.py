"""The build's settings: the pi-gen ``config`` file, read the way pi-gen reads it.

``config`` is a shell fragment that pi-gen itself sources, so it is read here
by sourcing it with bash (plus an optional ``-c`` extra fragment, then the
environment for ``PICLUSTER_*`` overrides) and validated with pydantic. An
unknown ``PICLUSTER_*`` name or a bad value is an error naming the file, the
variable and the fix.
"""

from __future__ import annotations

import difflib
import os
import re
import subprocess
from pathlib import Path
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from picluster.cards.manifest import USERNAME
from picluster.config import DNS_LABEL, ClusterSection


class SettingsError(Exception):
    pass


PI_GEN_VARS = (
    "IMG_NAME",
    "RELEASE",
    "FIRST_USER_NAME",
    "FIRST_USER_PASS",
    "DISABLE_FIRST_BOOT_USER_RENAME",
    "LOCALE_DEFAULT",
    "TIMEZONE_DEFAULT",
    "KEYBOARD_KEYMAP",
    "KEYBOARD_LAYOUT",
    "TARGET_HOSTNAME",
    "ENABLE_SSH",
    "PUBKEY_ONLY_SSH",
    "PUBKEY_SSH_FIRST_USER",
    "DEPLOY_COMPRESSION",
    "COMPRESSION_LEVEL",
    "WPA_COUNTRY",
)

_FIELD_OF_VAR = {
    "IMG_NAME": "img_name",
    "RELEASE": "release",
    "FIRST_USER_NAME": "first_user_name",
    "FIRST_USER_PASS": "first_user_pass",
    "DISABLE_FIRST_BOOT_USER_RENAME": "disable_first_boot_user_rename",
    "LOCALE_DEFAULT": "locale",
    "TIMEZONE_DEFAULT": "timezone",
    "KEYBOARD_KEYMAP": "keyboard_keymap",
    "KEYBOARD_LAYOUT": "keyboard_layout",
    "TARGET_HOSTNAME": "target_hostname",
    "ENABLE_SSH": "enable_ssh",
    "PUBKEY_ONLY_SSH": "pubkey_only_ssh",
    "PUBKEY_SSH_FIRST_USER": "pubkey_ssh_first_user",
    "DEPLOY_COMPRESSION": "compression",
    "COMPRESSION_LEVEL": "compression_level",
    "WPA_COUNTRY": "wpa_country",
    "PICLUSTER_BASE": "base",
    "PICLUSTER_CLUSTER_NAME": "cluster_name",
    "PICLUSTER_BASE_PORT": "base_port",
    "PICLUSTER_ENGINES_PER_NODE": "engines_per_node",
    "PICLUSTER_SECRET_FILE": "secret_file",
    "PICLUSTER_PIGEN_REPO": "pigen_repo",
    "PICLUSTER_PIGEN_BRANCH": "pigen_branch",
    "PICLUSTER_PIGEN_COMMIT": "pigen_commit",
    "PICLUSTER_DEBIAN_MIRROR": "debian_mirror",
    "PICLUSTER_IMAGE_EXTRA_MB": "image_extra_mb",
    "PICLUSTER_CACHE_DIR": "cache_dir",
}
VAR_OF_FIELD = {v: k for k, v in _FIELD_OF_VAR.items()}

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_SHAPES = {
    "locale": (re.compile(r"^[A-Za-z]+(_[A-Za-z]+)?(\.[A-Za-z0-9-]+)?(@[A-Za-z]+)?$"),
               "locale name such as en_GB.UTF-8"),
    "timezone": (re.compile(r"^[A-Za-z0-9_+-]+(/[A-Za-z0-9_+-]+)*$"),
                 "time zone name such as Europe/London"),
    "keyboard_keymap": (re.compile(r"^[a-z0-9_-]+$"), "keymap name such as gb"),
    "target_hostname": (DNS_LABEL, "hostname: lower-case letters, digits and '-'"),
}  # fmt: skip


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    img_name: str = "picluster"
    release: Literal["trixie"] = "trixie"
    first_user_name: str = "pi"
    first_user_pass: str = ""
    disable_first_boot_user_rename: Literal["0", "1"] = "1"
    locale: str = "en_GB.UTF-8"
    timezone: str = "Europe/London"
    keyboard_keymap: str = "gb"
    keyboard_layout: str = "English (UK)"
    target_hostname: str = "raspberrypi"
    enable_ssh: Literal["0", "1"] = "1"
    pubkey_only_ssh: Literal["0", "1"] = "1"
    pubkey_ssh_first_user: str = ""
    compression: Literal["xz", "none"] = "xz"
    compression_level: int = Field(1, ge=0, le=9)
    wpa_country: str = ""
    base: Literal["auto", "raspios", "debian"] = "auto"
    cluster_name: str = "picluster"
    base_port: int = Field(10100, ge=1024, le=65505)
    engines_per_node: str = "auto"
    secret_file: str = ""
    pigen_repo: str = "https://github.com/RPi-Distro/pi-gen.git"
    pigen_branch: str = "arm64"
    pigen_commit: str = "7f33e570ef00f8bdd7397f8d343033e0e6fa41ce"
    debian_mirror: str = "http://deb.debian.org/debian"
    image_extra_mb: int = Field(512, ge=64)
    cache_dir: str = "/var/cache/picluster"

    @field_validator("img_name")
    @classmethod
    def _img_name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError("letters, digits, '.', '_' and '-' only (it names files in deploy/)")
        return value

    @field_validator("first_user_name")
    @classmethod
    def _user(cls, value: str) -> str:
        if not USERNAME.match(value) or value == "root":
            raise ValueError("a lower-case login name such as pi (never root)")
        return value

    @field_validator("first_user_pass")
    @classmethod
    def _no_password(cls, value: str) -> str:
        if value:
            raise ValueError(
                "images carry no password: the first user is locked until a card seed gives "
                "an SSH key (picluster cards) or Raspberry Pi Imager sets one. Remove it"
            )
        return value

    # These reach a root shell in the build chroot (and pi-gen's own scripts): each
    # is held to what such a value really looks like, so nothing else gets there.
    @field_validator("locale", "timezone", "keyboard_keymap", "target_hostname")
    @classmethod
    def _shell_safe(cls, value: str, info: ValidationInfo) -> str:
        pattern, example = _SHAPES[info.field_name or ""]
        if not pattern.match(value):
            raise ValueError(f"not a {example}")
        return value

    @field_validator("cluster_name")
    @classmethod
    def _cluster(cls, value: str) -> str:
        ClusterSection(name=value)
        return value

    @field_validator("engines_per_node")
    @classmethod
    def _engines(cls, value: str) -> str:
        if value != "auto" and not (value.isdigit() and int(value) >= 0):
            raise ValueError("'auto' (one per core) or a whole number")
        return value


def read_shell(files: list[Path]) -> dict[str, str]:
    """Source ``files`` with bash and return pi-gen's and our variables."""
    script = (
        'set -a; for f in "$@"; do source "$f" || exit 1; done; '
        f"for v in {' '.join(PI_GEN_VARS)} $(compgen -v PICLUSTER_); do "
        '[[ -v $v ]] && printf "%s\\0%s\\0" "$v" "${!v}"; done'
    )
    env = {k: v for k, v in os.environ.items() if k.startswith("PICLUSTER_")}
    env["PATH"] = os.environ.get("PATH", "/usr/bin:/bin")
    proc = subprocess.run(
        ["bash", "-c", script, "config", *map(str, files)],
        capture_output=True,
        env=env,
        check=False,
    )
    if proc.returncode != 0:
        names = ", ".join(map(str, files))
        raise SettingsError(f"{names}: bash could not source it: {proc.stderr.decode().strip()}")
    parts = proc.stdout.decode().split("\0")
    return dict(zip(parts[0::2], parts[1::2], strict=False))


def load(config: Path, extra: Path | None = None) -> Settings:
    files = [config] + ([extra] if extra else [])
    for f in files:
        if not f.is_file():
            raise SettingsError(f"{f}: no such config file. Fix: pass an existing file to -c")
    raw = read_shell(files)
    # The environment wins over the files, as the config's header promises.
    raw.update({k: v for k, v in os.environ.items() if k.startswith("PICLUSTER_")})
    where = " + ".join(map(str, files))
    values: dict[str, str] = {}
    for var, value in raw.items():
        if var not in _FIELD_OF_VAR:
            close = difflib.get_close_matches(var, list(_FIELD_OF_VAR), n=1)
            hint = f"did you mean {close[0]}?" if close else "see the comments in ./config"
            raise SettingsError(f"{where}: unknown setting {var}. Fix: {hint}")
        if value != "":
            values[_FIELD_OF_VAR[var]] = value
    try:
        return Settings(**values)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = str(err["loc"][0]) if err["loc"] else "?"
        var = VAR_OF_FIELD.get(field, field)
        found = values.get(field, "")
        raise SettingsError(
            f"{where}: {var}={found!r}: {err['msg'].removeprefix('Value error, ')}. "
            f"Fix: set {var} in {config.name} or the environment"
        ) from None


def shell_exports(settings: Settings) -> dict[str, str]:
    """The variables every stage script sees (pi-gen's names and ours)."""
    data = settings.model_dump()
    return {var: str(data[field]) for field, var in VAR_OF_FIELD.items() if field in data}
