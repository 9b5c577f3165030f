"""``/etc/picluster/cluster.toml``: the schema, its defaults and its error messages.

Every error names the file, the key and what to write instead, because the
person reading it is usually looking at a journal on a Pi with no other help.
A missing file means "all defaults": a card flashed with nothing but a
hostname must still join its cluster.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

DNS_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
PORTS_USED = 30
"""ipyparallel's fixed layout uses B..B+14; we reserve B..B+29 (``--ports``)."""


class ConfigError(Exception):
    """The configuration cannot be used; ``str()`` says where and how to fix it."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ClusterSection(_Section):
    name: str = "picluster"
    base_port: Annotated[int, Field(ge=1024, le=65535 - PORTS_USED)] = 47000
    controller: str = ""
    """Static controller address: skips mDNS discovery (networks that block multicast)."""
    curve: bool = True
    """Encrypt ipyparallel traffic with CurveZMQ (keys derived from the secret); false
    sends it in clear on the LAN (anyone there can read engine output), and doctor warns."""

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not DNS_LABEL.match(value):
            raise ValueError(
                "must be a DNS label: 1-63 lower-case letters, digits and '-', "
                "not starting or ending with '-'. Fix: e.g. name = \"lab-cluster\""
            )
        return value

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
    engine: list[str] = Field(default_factory=lambda: ["*"])
    unassigned: list[str] = Field(default_factory=lambda: ["raspberrypi", "localhost"])
    """Names a card has before anyone named it: such a node joins nothing."""


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
    """Engines on the controller host itself (0 = none), like ``ipcluster start``."""
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
    port: Annotated[int, Field(ge=1, le=65535)] = 8888
    ip: IPv4Text = "0.0.0.0"
    """Address JupyterLab binds; "0.0.0.0" = every interface (token or password required)."""
    user: str = ""
    """Who runs JupyterLab and gets ``ipp.Client()``: "" = the first user (uid 1000)."""
    password_hash: str = ""
    """An argon2 hash from ``jupyter_server.auth.passwd``; "" = log in with the token."""
    root_dir: str = "~/notebooks"

    @field_validator("password_hash")
    @classmethod
    def _hash(cls, value: str) -> str:
        if value and not value.startswith(("argon2:", "sha1:")):
            raise ValueError(
                "must be a hash, never a plain password. Fix: python3 -c "
                '"from jupyter_server.auth import passwd; print(passwd())"'
            )
        return value


class Config(_Section):
    cluster: ClusterSection = Field(default_factory=ClusterSection)
    roles: RolesSection = Field(default_factory=RolesSection)
    engines: EnginesSection = Field(default_factory=EnginesSection)
    controller: ControllerSection = Field(default_factory=ControllerSection)
    jupyter: JupyterSection = Field(default_factory=JupyterSection)


def _known_keys(model: type[BaseModel], path: tuple[str | int, ...]) -> list[str]:
    for part in path:
        field = model.model_fields.get(str(part))
        annotation = field.annotation if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


def _describe(source: str, err: dict[str, Any]) -> str:
    loc = tuple(err["loc"])
    section = ".".join(str(p) for p in loc[:-1])
    key = str(loc[-1]) if loc else ""
    where = f"[{section}] {key}" if section else key
    if err["type"] == "extra_forbidden":
        known = _known_keys(Config, loc[:-1])
        close = difflib.get_close_matches(key, known, n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"known keys: {', '.join(known)}"
        return f"{source}: {where}: unknown key. Fix: remove it or correct it ({hint})"
    message = err["msg"].removeprefix("Value error, ")
    got = err.get("input")
    shown = "" if isinstance(got, dict) else f" (found {got!r})"
    fix = _FIXES.get(loc, "")
    return f"{source}: {where}: {message}{shown}{'. Fix: ' + fix if fix else ''}"


_FIXES: dict[tuple[str | int, ...], str] = {
    ("cluster", "base_port"): "a port from 1024 to 65505 whose next 29 are free, e.g. 47000",
    ("engines", "timeout"): "seconds, e.g. timeout = 60",
    ("jupyter", "port"): "e.g. port = 8888",
}


def parse(text: str, source: str = "cluster.toml") -> Config:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(
            f"{source}: not valid TOML: {exc}. Fix: check quotes and [section] headers "
            "on that line."
        ) from None
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        lines = [_describe(source, e) for e in exc.errors()]  # type: ignore[arg-type]
        raise ConfigError("\n".join(lines)) from None


def load(path: Path) -> Config:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return Config()
    except PermissionError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror}). Fix: chmod 644 {path}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text. Fix: save it as UTF-8 (it is TOML)") from None
    except OSError as exc:
        raise ConfigError(
            f"{path}: cannot read ({exc.strerror}). Fix: name the cluster.toml file itself"
        ) from None
    return parse(text, str(path))


def dumps(config: Config) -> str:
    """The TOML form of a config (used by the card tool and the stage)."""

    def value(v: object) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        text = str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f'"{text}"'

    out: list[str] = []
    for section, model in config:
        out.append(f"[{section}]")
        out.extend(f"{key} = {value(v)}" for key, v in model)
        out.append("")
    return "\n".join(out)
