"""The mDNS TXT records: what a node may say about itself on the LAN, sealed.

Only non-secrets go here (DESIGN.md, "mDNS"): versions, names, ports, counts,
a controller instance id and a 48-bit fingerprint of the derived key.

Every record is **sealed** (:func:`seal`) before it goes on the wire and
**opened** (:func:`unseal`) before anything it says is used. The seal adds three
TXT fields:

``addr``
    the IPv4 addresses the sender announces (its A records), comma-separated;
``n``
    a freshness value ``<epoch>.<seq>`` (:class:`Freshness`);
``mac``
    HMAC-SHA256, truncated to 128 bits, keyed with ``Keys.record_key`` (its own
    HKDF label), over the service type, the SRV port and every other TXT field,
    ``addr`` and ``n`` included.

So nobody without the secret can make a record we accept, change one field of
one, or copy one and put another address under it: a receiver uses only the
addresses that the MAC covers (``discovery`` intersects them with what the A
records say). What a MAC cannot stop is a replay of a record we really sent;
that is what ``n`` is for. Pis have no real-time clock and an offline LAN may
have no time server, so freshness never compares two hosts' clocks: ``epoch``
goes up every time a node's agent starts (a counter in its state dir, at
least the local clock in seconds, so that a card whose state was wiped still
starts above its old self when its clock is sane), ``seq`` every time it
re-announces. An engine never follows a controller record older than the one
it already follows, so an old record played back later cannot move it.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from functools import total_ordering
from typing import Self

SCHEMA_VERSION = 1
CONTROLLER_TYPE = "_ipyparallel._tcp.local."
NODE_TYPE = "_picluster._tcp.local."


class RecordError(ValueError):
    """A TXT record we cannot use (other schema, missing or malformed field)."""


class Unauthenticated(RecordError):
    """A record whose seal is missing, malformed or does not verify with our key."""


def _text(props: dict[bytes, bytes | None], key: str) -> str:
    value = props.get(key.encode())
    if value is None:
        raise RecordError(f"TXT record has no '{key}'")
    return value.decode("utf-8", "replace")


def _int(props: dict[bytes, bytes | None], key: str) -> int:
    try:
        return int(_text(props, key))
    except ValueError:
        raise RecordError(f"TXT field '{key}' is not a number") from None


def _check_version(props: dict[bytes, bytes | None]) -> None:
    version = _int(props, "v")
    if version != SCHEMA_VERSION:
        raise RecordError(
            f"TXT schema v={version}, this node speaks v={SCHEMA_VERSION}: "
            "update picluster on the older card"
        )


@dataclass(frozen=True)
class ControllerRecord:
    """``<cluster>._ipyparallel._tcp.local.``"""

    cluster: str
    base_port: int
    ipp: str
    iid: str
    fp: str
    curve: bool
    py: str = ""
    """The engines' Python, "3.13": a client on another minor version cannot send them
    functions (``picluster connect`` refuses it); "" from an older controller."""
    lab: int = 0
    """JupyterLab's port on the controller (0: none)."""
    login: str = "token"
    """How JupyterLab logs in: "token" (derived from the secret) or "password"."""

    def encode(self) -> dict[str, str]:
        return {
            "v": str(SCHEMA_VERSION),
            "cluster": self.cluster,
            "port": str(self.base_port),
            "ipp": self.ipp,
            "iid": self.iid,
            "fp": self.fp,
            "curve": "1" if self.curve else "0",
            "py": self.py,
            "lab": str(self.lab),
            "login": self.login,
        }

    @classmethod
    def decode(cls, props: dict[bytes, bytes | None]) -> Self:
        _check_version(props)
        return cls(
            cluster=_text(props, "cluster"),
            base_port=_int(props, "port"),
            ipp=_text(props, "ipp"),
            iid=_text(props, "iid"),
            fp=_text(props, "fp"),
            curve=_text(props, "curve") == "1",
            py=(props.get(b"py") or b"").decode("ascii", "replace"),
            lab=_int(props, "lab") if b"lab" in props else 0,
            login=(props.get(b"login") or b"token").decode("ascii", "replace"),
        )

    @staticmethod
    def service_name(cluster: str) -> str:
        return f"{cluster}.{CONTROLLER_TYPE}"


@dataclass(frozen=True)
class NodeRecord:
    """``<hostname>._picluster._tcp.local.``: one per node, for ``picluster status``."""

    host: str
    role: str
    cluster: str
    engines: int
    registered: int
    state: str
    fp: str
    version: str
    hw: str = ""
    """The hardware id of a card that is naming itself (``naming``), else empty."""
    cores: int = 0
    """CPU cores of the host (``picluster hostfile``'s MPI slots); 0 from an older agent."""

    def encode(self) -> dict[str, str]:
        out = {"v": str(SCHEMA_VERSION)}
        for f in fields(self):
            out[f.name] = str(getattr(self, f.name))
        if not self.hw:  # only a card naming itself sends it
            del out["hw"]
        return out

    @classmethod
    def decode(cls, props: dict[bytes, bytes | None]) -> Self:
        _check_version(props)
        return cls(
            host=_text(props, "host"),
            role=_text(props, "role"),
            cluster=_text(props, "cluster"),
            engines=_int(props, "engines"),
            registered=_int(props, "registered"),
            state=_text(props, "state"),
            fp=_text(props, "fp"),
            version=_text(props, "version"),
            hw=(props.get(b"hw") or b"").decode("ascii", "replace"),
            cores=_int(props, "cores") if b"cores" in props else 0,
        )

    @staticmethod
    def service_name(host: str) -> str:
        return f"{host}.{NODE_TYPE}"


def to_props(record: ControllerRecord | NodeRecord) -> dict[bytes, bytes]:
    """The bytes form zeroconf puts on the wire (and hands back when resolving)."""
    return {k.encode(): v.encode() for k, v in record.encode().items()}


# -- the seal ------------------------------------------------------------------------------

ADDR = "addr"
FRESH = "n"
MAC = "mac"
SEAL_FIELDS = (ADDR, FRESH, MAC)
MAC_BYTES = 16
"""128 bits of HMAC-SHA256: forging one takes 2^128 tries, each a packet on the LAN."""
_DOMAIN = b"picluster record v1"


@total_ordering
@dataclass(frozen=True)
class Freshness:
    """``<epoch>.<seq>``: ordered by epoch (agent starts), then seq (re-announcements)."""

    epoch: int
    seq: int

    def __str__(self) -> str:
        return f"{self.epoch}.{self.seq}"

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Freshness):
            return NotImplemented
        return (self.epoch, self.seq) < (other.epoch, other.seq)

    @classmethod
    def parse(cls, text: str) -> Self:
        epoch, sep, seq = text.partition(".")
        if not (sep and epoch.isdigit() and seq.isdigit()):
            raise Unauthenticated(f"TXT field '{FRESH}' is not <epoch>.<seq>")
        return cls(int(epoch), int(seq))


@dataclass(frozen=True)
class Sealed:
    """What the seal vouches for besides the record's own fields."""

    addresses: tuple[str, ...]
    fresh: Freshness


def _field(value: bytes | None) -> bytes:
    """Length-prefixed, so that no two different field lists encode the same bytes
    (a key without '=' is not the same as an empty value)."""
    if value is None:
        return b"\xff\xff"
    return len(value).to_bytes(2, "big") + value


def _mac(key: bytes, service_type: str, port: int, props: Mapping[bytes, bytes | None]) -> str:
    msg = bytearray(_DOMAIN)
    msg += _field(service_type.lower().encode()) + port.to_bytes(2, "big")
    for k in sorted(props):
        if k.lower() != MAC.encode():
            msg += _field(k) + _field(props[k])
    return hmac.new(key, bytes(msg), hashlib.sha256).digest()[:MAC_BYTES].hex()


def seal(
    record: ControllerRecord | NodeRecord,
    key: bytes,
    *,
    service_type: str,
    port: int,
    addresses: Iterable[str],
    fresh: Freshness,
) -> dict[bytes, bytes]:
    """The record's TXT, with the addresses it is announced under, its freshness and a
    MAC over all of it (the bytes zeroconf puts on the wire)."""
    props = to_props(record)
    props[ADDR.encode()] = ",".join(sorted(addresses)).encode()
    props[FRESH.encode()] = str(fresh).encode()
    props[MAC.encode()] = _mac(key, service_type, port, props).encode()
    return props


def unseal(
    props: Mapping[bytes, bytes | None], key: bytes, *, service_type: str, port: int
) -> Sealed:
    """Check the seal; raise :class:`Unauthenticated` unless ``key`` made it."""
    mac = props.get(MAC.encode())
    if not mac:
        raise Unauthenticated("the record carries no MAC")
    if not hmac.compare_digest(mac, _mac(key, service_type, port, props).encode()):
        raise Unauthenticated("the record's MAC does not verify with this cluster's key")
    addresses = []
    for text in (props.get(ADDR.encode()) or b"").decode("ascii", "replace").split(","):
        try:
            addresses.append(str(ipaddress.IPv4Address(text)))
        except ValueError:
            continue
    fresh = Freshness.parse((props.get(FRESH.encode()) or b"").decode("ascii", "replace"))
    return Sealed(tuple(addresses), fresh)
