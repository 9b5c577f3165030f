"""The cluster manifest: one TOML file that describes every card of a cluster.

Everything a user would otherwise repeat per card (keys, Wi-Fi, secret, user)
is written once; only what differs per card (hostname, static address, MAC)
appears per card. Errors follow the house style of ``picluster.config``: the
file, the key, and what to write instead.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from picluster import roles
from picluster.config import BASE_PORT_FIX, BasePort, Config
from picluster.errors import ConfigurationError
from picluster.names import DnsLabel, LoginName
from picluster.validation import describe

GENERATE = "generate"
IMAGE_SECRET = ""
MAX_ENGINES = 256
MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
COUNTRY = re.compile(r"^[A-Z]{2}$")
SSH_KEY_TYPES = (
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
)


def key_problem(line: str) -> str | None:
    """Why ``line`` is not one OpenSSH public key line, or None when it is.

    The type word must be known, the blob base64 that names the same type (a
    placeholder or a truncated paste fails here), and a line break would turn one
    entry into two ``authorized_keys`` lines.
    """
    if "\n" in line or "\r" in line:
        return "holds a line break (one key per entry)"
    fields = line.split()
    if not fields or fields[0] not in SSH_KEY_TYPES:
        return f"does not start with a key type ({', '.join(SSH_KEY_TYPES[:3])}, ...)"
    if len(fields) < 2:
        return f"is a bare {fields[0]!r}: the key itself is missing"
    try:
        blob = base64.b64decode(fields[1], validate=True)
    except (binascii.Error, ValueError):
        return "is not a public key: its second field is not base64"
    size = int.from_bytes(blob[:4], "big")
    if blob[4 : 4 + size] != fields[0].encode():
        return f"is not a {fields[0]} key: the encoded key names another type or is cut short"
    return None


class ManifestError(ConfigurationError):
    """The manifest cannot be used; ``str()`` names the file, the key and the fix."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Wifi(_Model):
    ssid: Annotated[str, Field(min_length=1, max_length=32)]
    password: Annotated[str, Field(min_length=8, max_length=63)]
    country: str

    @field_validator("country")
    @classmethod
    def _country(cls, value: str) -> str:
        # Without a regulatory domain the Pi's Wi-Fi stays soft-blocked.
        if not COUNTRY.match(value):
            raise ValueError('must be a two-letter ISO 3166 country code in capitals, e.g. "GB"')
        return value


class Card(_Model):
    hostname: str
    address: str = ""
    """Static IPv4 address with prefix length, e.g. "192.168.1.10/24"; "" = DHCP."""
    gateway: str = ""
    dns: list[str] = Field(default_factory=list)
    mac: str = ""
    """Match the wired interface by MAC instead of by name (several NICs)."""

    @field_validator("hostname")
    @classmethod
    def _hostname(cls, value: str) -> str:
        try:
            roles.check_hostname(value)
        except roles.RoleError:
            raise ValueError(
                "must be 1-63 lower-case letters, digits and '-', not starting or ending "
                "with '-' (RFC 1123), e.g. \"engine-3\""
            ) from None
        try:
            roles.decide(value, Config())
        except roles.RoleError:
            raise ValueError(
                "is a name a card has before anyone named it, so it would join no cluster; "
                'use e.g. "controller" or "engine-1"'
            ) from None
        return value

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        if value:
            try:
                iface = ipaddress.IPv4Interface(value)
            except ValueError:
                raise ValueError(
                    'must be an IPv4 address with prefix, e.g. "192.168.1.10/24"'
                ) from None
            if "/" not in value:
                raise ValueError('needs a prefix length, e.g. "192.168.1.10/24"')
            return str(iface)
        return value

    @field_validator("gateway")
    @classmethod
    def _gateway(cls, value: str) -> str:
        if value:
            try:
                ipaddress.IPv4Address(value)
            except ValueError:
                raise ValueError('must be an IPv4 address, e.g. "192.168.1.1"') from None
        return value

    @field_validator("dns")
    @classmethod
    def _dns(cls, value: list[str]) -> list[str]:
        for item in value:
            try:
                ipaddress.ip_address(item)
            except ValueError:
                raise ValueError(
                    f'{item!r} is not an IP address, e.g. dns = ["192.168.1.1"]'
                ) from None
        return value

    @field_validator("mac")
    @classmethod
    def _mac(cls, value: str) -> str:
        value = value.lower().replace("-", ":")
        if value and not MAC.match(value):
            raise ValueError('must be a MAC address such as "dc:a6:32:01:02:03"')
        return value

    @model_validator(mode="after")
    def _static(self) -> Card:
        if (self.gateway or self.dns) and not self.address:
            raise ValueError(
                "gateway and dns only apply to a static address: add address = "
                '"192.168.1.10/24" or remove them'
            )
        if self.gateway and self.address:
            net = ipaddress.IPv4Interface(self.address).network
            if ipaddress.IPv4Address(self.gateway) not in net:
                raise ValueError(f"gateway {self.gateway} is not inside {net}")
        return self


class Manifest(_Model):
    cluster: DnsLabel | None = None
    """The cluster's name; unset = the image's (its build's PICLUSTER_CLUSTER_NAME)."""
    secret: str = IMAGE_SECRET
    """"" = the image's own secret (cards carry none, so they join every card of that
    image); a path to a secret file, relative to the manifest; or "generate"."""
    ssh_keys: Annotated[list[str], Field(min_length=1)]
    user: LoginName | None = None
    """The first user; unset = the image's own (FIRST_USER_NAME of its build)."""
    wifi: Wifi | None = None
    timezone: str = ""
    locale: str = ""
    keyboard: str = ""
    base_port: BasePort | None = None
    """Unset = the image's (its build's PICLUSTER_BASE_PORT, else the node default)."""
    discovery: Literal["mdns", "static"] = "mdns"
    """"static": engines use the controller card's static address instead of mDNS."""
    engines: Annotated[int, Field(ge=0, le=MAX_ENGINES)] | None = None
    cluster_ssh: bool | None = None
    """false: no SSH between the cards with keys derived from the secret ([ssh]
    cluster_login); unset = the image's (on)."""
    card: list[Card] = Field(default_factory=list)

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        if value and not re.match(r"^[A-Za-z0-9_+-]+(/[A-Za-z0-9_+-]+)*$", value):
            raise ValueError('must be a tz database name, e.g. "Europe/London"')
        return value

    @model_validator(mode="after")
    def _cards(self) -> Manifest:
        if self.engines is not None and self.card:
            raise ValueError(
                "give either engines = N or [[card]] entries, not both. Fix: remove one"
            )
        if self.engines is None and not self.card:
            raise ValueError(
                "no cards: add engines = 4 (controller + engine-1..engine-4) or [[card]] "
                'entries with hostname = "..."'
            )
        names = [c.hostname for c in self.card]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"hostname {', '.join(dupes)} appears twice in [[card]]")
        controllers = [
            c.hostname
            for c in self.cards()
            if roles.decide(c.hostname, Config()).role == roles.Role.CONTROLLER
        ]
        if len(controllers) != 1:
            found = ", ".join(controllers) or "none"
            raise ValueError(
                f"a cluster needs exactly one controller card, found {found}. Fix: name one "
                'card "controller" (or *-controller, controller-*, head, *-head) and the '
                'others e.g. "engine-1"'
            )
        if self.discovery == "static" and not self.controller_address():
            raise ValueError(
                'discovery = "static" needs the controller\'s address. Fix: give the '
                f'{controllers[0]} card address = "192.168.1.10/24" in [[card]], or use '
                'discovery = "mdns"'
            )
        return self

    def title(self) -> str:
        """How output names this cluster."""
        return repr(self.cluster) if self.cluster else "of the image"

    def controller_address(self) -> str:
        """The controller card's static IPv4 address, or ""."""
        for card in self.cards():
            decision = roles.decide(card.hostname, Config())
            if decision.role == roles.Role.CONTROLLER and card.address:
                return str(ipaddress.IPv4Interface(card.address).ip)
        return ""

    def cards(self) -> list[Card]:
        if self.engines is not None:
            return [Card(hostname="controller")] + [
                Card(hostname=f"engine-{i}") for i in range(1, self.engines + 1)
            ]
        return list(self.card)


@dataclass(frozen=True)
class Loaded:
    manifest: Manifest
    path: Path
    ssh_keys: list[str]
    """Public key lines, files already read."""

    def secret_path(self) -> Path | None:
        if self.manifest.secret in (GENERATE, IMAGE_SECRET):
            return None
        return (self.path.parent / Path(self.manifest.secret).expanduser()).resolve()


_FIXES: dict[tuple[str | int, ...], str] = {
    ("cluster",): 'e.g. cluster = "lab"',
    ("ssh_keys",): 'e.g. ssh_keys = ["~/.ssh/id_ed25519.pub"] (a file or the key line itself)',
    ("base_port",): BASE_PORT_FIX,
    ("engines",): f"a whole number from 0 to {MAX_ENGINES}",
    ("wifi", "password"): "the WPA2 passphrase, 8 to 63 characters",
}


def parse(text: str, source: str = "cluster manifest") -> Manifest:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ManifestError(
            f"{source}: not valid TOML: {exc}. Fix: check quotes, [wifi] and [[card]] "
            "headers on that line."
        ) from None
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        lines = [describe(e, source, Manifest, _FIXES) for e in exc.errors()]  # type: ignore[arg-type]
        raise ManifestError("\n".join(lines)) from None


def read_ssh_keys(entries: list[str], base: Path, source: str) -> list[str]:
    """Key lines from entries that are either a key line or a path to a .pub file."""
    keys: list[str] = []
    for i, entry in enumerate(entries):
        entry = entry.strip()
        if (entry.split() or [""])[0] in SSH_KEY_TYPES:
            problem = key_problem(entry)
            if problem:
                raise ManifestError(
                    f"{source}: ssh_keys[{i}]: the key {problem}. Fix: paste the whole line "
                    'of your .pub file, or give its path, e.g. "~/.ssh/id_ed25519.pub"'
                )
            keys.append(entry)
            continue
        path = (base / Path(entry).expanduser()).resolve()
        if path.suffix != ".pub":
            raise ManifestError(
                f"{source}: ssh_keys[{i}]: {entry!r} is neither a public key line nor a "
                ".pub file. Fix: give the public key (never the private key), e.g. "
                '"~/.ssh/id_ed25519.pub"'
            )
        try:
            lines = [
                ln.strip()
                for ln in path.read_text(encoding="utf-8").splitlines()
                if ln.strip() and not ln.startswith("#")
            ]
        except OSError as exc:
            raise ManifestError(
                f"{source}: ssh_keys[{i}]: cannot read {path} ({exc.strerror}). Fix: create "
                "it with ssh-keygen -t ed25519 or correct the path (relative to the manifest)"
            ) from None
        bad = [problem for ln in lines if (problem := key_problem(ln))]
        if not lines or bad:
            why = f": a line {bad[0]}" if bad else ""
            raise ManifestError(
                f"{source}: ssh_keys[{i}]: {path} does not hold OpenSSH public keys{why}. "
                "Fix: point at the .pub file written by ssh-keygen"
            )
        keys.extend(lines)
    return keys


def load(path: Path) -> Loaded:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ManifestError(
            f"{path}: cannot read ({exc.strerror}). Fix: copy examples/cluster-manifest.toml "
            "and edit it"
        ) from None
    except UnicodeDecodeError:
        raise ManifestError(f"{path}: not UTF-8 text. Fix: save it as UTF-8 (it is TOML)") from None
    manifest = parse(text, str(path))
    keys = read_ssh_keys(manifest.ssh_keys, path.parent, str(path))
    return Loaded(manifest=manifest, path=path, ssh_keys=keys)


def node_overrides(manifest: Manifest) -> dict[str, dict[str, Any]]:
    """What every card of this cluster changes in the image's ``cluster.toml``: only
    what the manifest sets (nothing at all for a manifest of names and keys)."""
    cluster: dict[str, Any] = {}
    if manifest.cluster is not None:
        cluster["name"] = manifest.cluster
    if manifest.base_port is not None:
        cluster["base_port"] = manifest.base_port
    # Only on request: a static address silently switched off mDNS otherwise.
    if manifest.discovery == "static":
        cluster["controller"] = manifest.controller_address()
    data: dict[str, dict[str, Any]] = {"cluster": cluster} if cluster else {}
    if manifest.user is not None:
        # Explicit, because the image's own first user (uid 1000) may be another one.
        data["jupyter"] = {"user": manifest.user}
    if manifest.cluster_ssh is not None:
        data["ssh"] = {"cluster_login": manifest.cluster_ssh}
    return data
