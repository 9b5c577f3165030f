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
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from picluster import config as config_mod
from picluster import roles
from picluster.errors import ConfigurationError
from picluster.names import DnsLabel, LoginName


class SettingsError(ConfigurationError):
    """A build setting cannot be used; ``str()`` names the file, the variable and the fix."""


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
}  # fmt: skip

NODE_KEYS: dict[str, tuple[str, str]] = {
    "cluster_name": ("cluster", "name"),
    "base_port": ("cluster", "base_port"),
    "engines_per_node": ("engines", "per_node"),
}
"""Build settings that are node settings: the image's ``cluster.toml`` gets each one
set; left empty in ``config``, the node's own default (``picluster.config``) applies."""

Unset = Literal[""]


class Settings(BaseModel):
    """What ``config`` (and ``-c``, and the environment) set. ``config`` is the one place
    a build default is written, with its help text beside it, so a field here has no
    default of its own: it is required (``config`` sets it) or optional, "" or None
    meaning unset."""

    model_config = ConfigDict(extra="forbid")

    img_name: str
    release: Literal["trixie"]
    first_user_name: LoginName
    first_user_pass: Unset = ""
    disable_first_boot_user_rename: Literal["0", "1"]
    locale: str
    timezone: str
    keyboard_keymap: str
    keyboard_layout: str
    target_hostname: DnsLabel
    enable_ssh: Literal["0", "1"]
    pubkey_only_ssh: Literal["0", "1"]
    pubkey_ssh_first_user: str = ""
    compression: Literal["xz", "none"]
    compression_level: int = Field(ge=0, le=9)
    wpa_country: str = ""
    base: Literal["auto", "raspios", "debian"]
    cluster_name: str | None = None
    base_port: int | None = None
    engines_per_node: str | None = None
    secret_file: str = ""
    pigen_repo: str
    pigen_branch: str
    pigen_commit: str
    debian_mirror: str
    image_extra_mb: int = Field(ge=64)
    cache_dir: str

    @field_validator("img_name")
    @classmethod
    def _img_name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError("letters, digits, '.', '_' and '-' only (it names files in deploy/)")
        return value

    @field_validator("first_user_pass", mode="before")
    @classmethod
    def _no_password(cls, value: str) -> str:
        if value:
            raise ValueError(
                "images carry no password: the first user is locked until a card seed gives "
                "an SSH key (picluster cards) or Raspberry Pi Imager sets one. Remove it"
            )
        return value

    @field_validator("target_hostname")
    @classmethod
    def _unassigned(cls, value: str) -> str:
        # Every card flashed without a seed boots with this name: it must be one that
        # makes the card name itself, or all of them would answer to the same name.
        if not roles.is_unassigned(value, config_mod.Config()):
            raise ValueError(
                f"every card flashed without a seed boots as {value!r}, so it must be a name "
                f"in [roles] unassigned ({', '.join(config_mod.RolesSection().unassigned)}) "
                "for each card to name itself. Fix: TARGET_HOSTNAME=raspberrypi"
            )
        return value

    # These reach a root shell in the build chroot (and pi-gen's own scripts): each
    # is held to what such a value really looks like, so nothing else gets there.
    @field_validator("locale", "timezone", "keyboard_keymap")
    @classmethod
    def _shell_safe(cls, value: str, info: ValidationInfo) -> str:
        pattern, example = _SHAPES[info.field_name or ""]
        if not pattern.match(value):
            raise ValueError(f"not a {example}")
        return value

    def node_overrides(self) -> dict[str, dict[str, Any]]:
        """What the image's ``cluster.toml`` sets: the node settings ``config`` gave."""
        return node_overrides({name: getattr(self, name) for name in NODE_KEYS})


def node_overrides(values: Mapping[str, str | int | None]) -> dict[str, dict[str, Any]]:
    """Node settings by field name (unset: None or "") as ``cluster.toml`` tables."""
    out: dict[str, dict[str, Any]] = {}
    for name, (section, key) in NODE_KEYS.items():
        value = values.get(name)
        if value is not None and value != "":
            # The shell has only text; the node's schema takes numbers as numbers.
            number = isinstance(value, str) and value.isdigit()
            out.setdefault(section, {})[key] = int(value) if number else value
    return out


def node_overrides_from_env(env: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """The same, from the variables a stage script sees (``shell_exports``)."""
    return node_overrides({name: env.get(VAR_OF_FIELD[name]) for name in NODE_KEYS})


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
        settings = Settings(**values)
        # Node settings are checked by the node's own schema: the build accepts
        # exactly what a node would.
        config_mod.Config.model_validate(settings.node_overrides())
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = tuple(str(part) for part in err["loc"])
        field = _FIELD_OF_NODE_KEY.get(loc[:2], loc[0] if loc else "?")
        var = VAR_OF_FIELD.get(field, field)
        if err["type"] == "missing":
            raise SettingsError(
                f"{where}: {var} is not set. Fix: set {var} in {config.name} (see its comment "
                "in the repository's config)"
            ) from None
        found = values.get(field, "")
        raise SettingsError(
            f"{where}: {var}={found!r}: {err['msg'].removeprefix('Value error, ')}. "
            f"Fix: set {var} in {config.name} or the environment"
        ) from None
    _pigen_rules(settings, where)
    return settings


def _pigen_rules(settings: Settings, where: str) -> None:
    """pi-gen's build.sh refuses these pairs (see ``raspios.refusals``); images carry no
    password, so each has one way out, named here."""
    if settings.disable_first_boot_user_rename == "1":
        raise SettingsError(
            f"{where}: DISABLE_FIRST_BOOT_USER_RENAME=1: pi-gen accepts it only with "
            "FIRST_USER_PASS, and picluster images carry no password. Fix: set "
            "DISABLE_FIRST_BOOT_USER_RENAME=0 (Raspberry Pi OS may rename the first user at "
            "first boot; picluster finds it by uid 1000, not by name)"
        )
    if settings.pubkey_only_ssh == "1" and not settings.pubkey_ssh_first_user:
        raise SettingsError(
            f"{where}: PUBKEY_ONLY_SSH=1 without PUBKEY_SSH_FIRST_USER: pi-gen refuses it. "
            "Fix: set PUBKEY_ONLY_SSH=0 (stage-cluster makes sshd key-only itself; card "
            "seeds bring the keys) or give PUBKEY_SSH_FIRST_USER a public key"
        )


_FIELD_OF_NODE_KEY = {key: name for name, key in NODE_KEYS.items()}


def shell_exports(settings: Settings) -> dict[str, str]:
    """The variables every stage script sees (pi-gen's names and ours)."""
    data = settings.model_dump()
    return {
        var: "" if data[field] is None else str(data[field])
        for field, var in VAR_OF_FIELD.items()
        if field in data
    }
