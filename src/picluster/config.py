"""``/etc/picluster/cluster.toml``: the schema, its defaults, its layers and its errors.

This schema is the one declaration of every node setting: its type, its default
and its help text (the attribute docstrings). The build settings, the card
manifest and the QEMU cluster never repeat a default: what they do not set is
left to this file, and the README's reference is generated from it.

A node reads ``cluster.toml`` and then ``cluster.toml.d/*.toml`` in name order,
each table merged over the last: the image's file holds what the build chose, a
card seed adds a drop-in with only what that card changes. Every error names the
file, the key and what to write instead, because the person reading it is
usually looking at a journal on a Pi with no other help. A missing file means
"all defaults": a card flashed with nothing but a hostname must still join.
"""

from __future__ import annotations

import ipaddress
import textwrap
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import tomli_w
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

from picluster.errors import ConfigurationError
from picluster.names import DnsLabel, LoginName, is_label
from picluster.validation import describe

PORTS_USED = 30
"""The cluster's TCP ports are B..B+29 (``--ports``, reserved from the kernel's
ephemeral range): ipcontroller draws from the front (B..B+14 in its connection
files, then its internal ones), Dask's scheduler and dashboard take the last two
(``connection.DASK_PORTS``)."""
DROPIN_SUFFIX = ".d"

BasePort = Annotated[int, Field(ge=1024, le=65535 - PORTS_USED)]
"""The first of the cluster's ports; the node config and the card manifest take it."""


class ConfigError(ConfigurationError):
    """The configuration cannot be used; ``str()`` says where and how to fix it."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class ClusterSection(_Section):
    name: DnsLabel = "picluster"
    """The cluster's mDNS name; clusters with other names on the LAN are ignored."""
    base_port: BasePort = 47000
    """First of the 30 TCP ports the controller uses (base_port .. base_port+29)."""
    controller: str = ""
    """Static controller address: skips mDNS discovery (networks that block multicast)."""
    curve: bool = True
    """Encrypt ipyparallel traffic with CurveZMQ (keys derived from the secret); false
    sends it in clear on the LAN (anyone there can read engine output), and doctor warns."""

    @field_validator("controller")
    @classmethod
    def _controller(cls, value: str) -> str:
        if value:
            try:
                ipaddress.IPv4Address(value)
            except ValueError:
                raise ValueError(
                    'must be an IPv4 address such as "192.168.1.10" '
                    '(or "" to find the controller by mDNS)'
                ) from None
        return value


class RolesSection(_Section):
    controller: list[str] = Field(
        default_factory=lambda: ["controller", "*-controller", "controller-*", "head", "*-head"]
    )
    """Hostname patterns (shell-style) that make a node the controller."""
    engine: list[str] = Field(default_factory=lambda: ["*"])
    """Hostname patterns that make a node an engine host (checked after controller)."""
    unassigned: list[str] = Field(default_factory=lambda: ["raspberrypi", "localhost"])
    """Names a card has before anyone named it (the image's own hostname): such a card
    names itself after self_name before it joins."""
    self_name: str = "engine-{id}"
    """The name an unnamed card gives itself: {id} = the last 6 hex digits of its board
    serial (of its wired MAC where it has none), all of them if another card took that
    name first; "" = an unnamed card joins nothing."""

    @field_validator("self_name")
    @classmethod
    def _self_name(cls, value: str) -> str:
        if value and (value.count("{id}") != 1 or not is_label(value.replace("{id}", "0" * 16))):
            raise ValueError(
                'must contain "{id}" once and otherwise be a hostname, e.g. "engine-{id}" '
                '(or "" for none)'
            )
        return value


Count = int | Literal["auto"]


def _count(value: object) -> Count:
    if value == "auto":
        return "auto"
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 256:
        return value
    raise ValueError('must be "auto" (one engine per CPU core) or a whole number from 0 to 256')


class EnginesSection(_Section):
    per_node: Count = "auto"
    """Engines on an engine host: "auto" = one per CPU core."""
    on_controller: Count = "auto"
    """Engines on the controller host itself (0 = none), like `ipcluster start`."""
    timeout: Annotated[float, Field(gt=0, le=3600)] = 60.0
    """Seconds an engine waits for the controller to answer its registration."""
    startup: str = ""
    """Python code each engine runs before it registers, e.g. "import numpy"."""

    @field_validator("per_node", "on_controller", mode="before")
    @classmethod
    def _counts(cls, value: object) -> Count:
        return _count(value)


def _ipv4(value: str) -> str:
    try:
        ipaddress.IPv4Address(value)
    except ValueError:
        raise ValueError('must be an IPv4 address, e.g. "0.0.0.0" for every interface') from None
    return value


IPv4Text = Annotated[str, AfterValidator(_ipv4)]
"""An IPv4 address to bind, kept as text (the form ipcontroller and Jupyter take)."""


class ControllerSection(_Section):
    listen: IPv4Text = "0.0.0.0"
    """Address ipcontroller binds; "0.0.0.0" = every interface (the LAN)."""


class JupyterSection(_Section):
    enabled: bool = True
    """Run JupyterLab on the controller (false: ipyparallel only)."""
    port: Annotated[int, Field(ge=1, le=65535)] = 8888
    """TCP port JupyterLab serves on."""
    ip: IPv4Text = "0.0.0.0"
    """Address JupyterLab binds; "0.0.0.0" = every interface (token or password required)."""
    user: Literal[""] | LoginName = ""
    """Who runs JupyterLab and gets `ipp.Client()`: "" = the first user (uid 1000)."""
    password_hash: str = ""
    """An argon2 hash from `jupyter_server.auth.passwd`; "" = log in with the token."""
    root_dir: str = "~/notebooks"
    """JupyterLab's file browser root; `~` is the user's home."""

    @field_validator("password_hash")
    @classmethod
    def _hash(cls, value: str) -> str:
        if value and not value.startswith(("argon2:", "sha1:")):
            raise ValueError(
                "must be a hash, never a plain password. Fix: python3 -c "
                '"from jupyter_server.auth import passwd; print(passwd())"'
            )
        return value


class SshSection(_Section):
    cluster_login: bool = True
    """SSH between the nodes without copying keys: a CA and a user key derived from the
    secret let the first user `ssh <host>.local` from any node to any other, with no
    host-key prompt; so holding the secret also means logging into every node as the
    first user. false: nothing of it is installed, and what was is removed at boot."""


class Config(_Section):
    """The whole ``cluster.toml``; every section and key is optional."""

    cluster: ClusterSection = Field(default_factory=ClusterSection)
    roles: RolesSection = Field(default_factory=RolesSection)
    engines: EnginesSection = Field(default_factory=EnginesSection)
    controller: ControllerSection = Field(default_factory=ControllerSection)
    jupyter: JupyterSection = Field(default_factory=JupyterSection)
    ssh: SshSection = Field(default_factory=SshSection)


_FIXES: dict[tuple[str | int, ...], str] = {
    ("cluster", "name"): 'e.g. name = "lab-cluster"',
    ("cluster", "base_port"): "",  # filled in below, from the default
    ("engines", "timeout"): "seconds, e.g. timeout = 60",
    ("jupyter", "port"): "e.g. port = 8888",
}


BASE_PORT_FIX = (
    f"a port from 1024 to {65535 - PORTS_USED} whose next {PORTS_USED - 1} are free, "
    f"e.g. {ClusterSection().base_port}"
)
_FIXES[("cluster", "base_port")] = BASE_PORT_FIX


DEFAULTS = "the defaults"


@dataclass(frozen=True)
class Layered:
    """A node's config and, for each key a file set, the file that set it last."""

    config: Config
    files: list[Path] = field(default_factory=list)
    """The files read, in order (the base file first when it exists)."""
    origin: dict[str, str] = field(default_factory=dict)
    """``"section.key"`` -> the file that set it; keys not here are defaults."""

    def source_of(self, section: str, key: str) -> str:
        """The file that set ``[section] key`` last, or "the defaults"."""
        return self.origin.get(f"{section}.{key}", DEFAULTS)

    def decided(self, decision: Any) -> str:
        """Where the ``[roles]`` key behind a ``roles.Decision`` was set."""
        section, key = decision.key.split(".", 1)
        return self.source_of(section, key)

    def describe(self) -> str:
        """Every setting in effect, as TOML, each with the file that set it."""
        out: list[str] = []
        for name, section in self.config:
            out.append(f"[{name}]")
            for key, value in section.model_dump().items():
                # One line per key: tomli_w puts each array item on a line of its own.
                shown = " ".join(tomli_w.dumps({key: value}).split())
                shown = shown.replace("[ ", "[").replace(", ]", "]")
                out.append(f"{shown}  # {self.source_of(name, key)}")
            out.append("")
        return "\n".join(out)


def _toml(text: str, source: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(
            f"{source}: not valid TOML: {exc}. Fix: check quotes and [section] headers "
            "on that line."
        ) from None


def _source_of(err: Any, origin: dict[str, str], default: str) -> str:
    """The file that set the key an error is about (a layer may be at fault)."""
    loc = tuple(str(p) for p in err["loc"])
    return origin.get(".".join(loc)) or origin.get(loc[0] if loc else "") or default


def _validate(data: dict[str, Any], origin: dict[str, str], source: str) -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        lines = [
            describe(e, _source_of(e, origin, source), Config, _FIXES)  # type: ignore[arg-type]
            for e in exc.errors()
        ]
        raise ConfigError("\n".join(lines)) from None


def _merge(
    into: dict[str, Any], layer: dict[str, Any], origin: dict[str, str], source: str
) -> None:
    """A layer's tables merge key by key; anything else replaces (and is checked later)."""
    for name, value in layer.items():
        if isinstance(value, dict) and isinstance(into.get(name), dict):
            into[name].update(value)
        else:
            into[name] = dict(value) if isinstance(value, dict) else value
        origin[name] = source
        if isinstance(value, dict):
            origin.update({f"{name}.{key}": source for key in value})


def parse(text: str, source: str = "cluster.toml") -> Config:
    data = _toml(text, source)
    origin: dict[str, str] = {}
    _merge({}, data, origin, source)
    return _validate(data, origin, source)


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except PermissionError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror}). Fix: chmod 644 {path}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text. Fix: save it as UTF-8 (it is TOML)") from None
    except OSError as exc:
        raise ConfigError(
            f"{path}: cannot read ({exc.strerror}). Fix: name the cluster.toml file itself"
        ) from None


def dropin_dir(path: Path) -> Path:
    """``cluster.toml.d`` beside ``cluster.toml``: where card seeds add their layer."""
    return path.with_name(path.name + DROPIN_SUFFIX)


def load_layered(path: Path) -> Layered:
    """``path`` then ``path.d/*.toml`` in name order, each merged over the last."""
    directory = dropin_dir(path)
    dropins = sorted(directory.glob("*.toml")) if directory.is_dir() else []
    data: dict[str, Any] = {}
    origin: dict[str, str] = {}
    files: list[Path] = []
    for layer in [path, *dropins]:
        text = _read(layer)
        if text is None:
            continue
        files.append(layer)
        _merge(data, _toml(text, str(layer)), origin, str(layer))
    return Layered(_validate(data, origin, str(path)), files, origin)


def load(path: Path) -> Config:
    return load_layered(path).config


def dumps(data: dict[str, Any], header: str = "") -> str:
    """TOML for a (partial) config, checked against the schema first: only what
    ``data`` sets is written, so every other key keeps its one default."""
    _validate(data, {}, "cluster.toml (generated)")
    comments = "".join(f"# {line}\n".replace("# \n", "#\n") for line in header.splitlines())
    return comments + tomli_w.dumps(data)


def overrides(config: Config) -> dict[str, Any]:
    """The keys of ``config`` that differ from the defaults, as ``dumps`` takes them."""
    return {
        name: changed
        for name, section in config
        if (changed := section.model_dump(exclude_defaults=True))
    }


def reference() -> str:
    """Every key with its default and help, as a ``cluster.toml`` (the README's reference)."""
    out: list[str] = []
    for name, info in Config.model_fields.items():
        section = info.annotation
        assert isinstance(section, type) and issubclass(section, _Section)
        out.append(f"[{name}]")
        for key, value in section().model_dump().items():
            help_text = " ".join((section.model_fields[key].description or "").split())
            out.extend(textwrap.wrap(help_text, 78, initial_indent="# ", subsequent_indent="# "))
            out.append(tomli_w.dumps({key: value}).strip())
        out.append("")
    return "\n".join(out).rstrip() + "\n"
