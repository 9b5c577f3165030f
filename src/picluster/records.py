"""The mDNS TXT records: what a node may say about itself on the LAN.

Only non-secrets go here (DESIGN.md, "mDNS"): versions, names, ports, counts,
a controller instance id and a 48-bit fingerprint of the derived key.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Self

SCHEMA_VERSION = 1
CONTROLLER_TYPE = "_ipyparallel._tcp.local."
NODE_TYPE = "_picluster._tcp.local."


class RecordError(ValueError):
    """A TXT record we cannot use (other schema, missing or malformed field)."""


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

    def encode(self) -> dict[str, str]:
        return {
            "v": str(SCHEMA_VERSION),
            "cluster": self.cluster,
            "port": str(self.base_port),
            "ipp": self.ipp,
            "iid": self.iid,
            "fp": self.fp,
            "curve": "1" if self.curve else "0",
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

    def encode(self) -> dict[str, str]:
        out = {"v": str(SCHEMA_VERSION)}
        for f in fields(self):
            out[f.name] = str(getattr(self, f.name))
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
        )

    @staticmethod
    def service_name(host: str) -> str:
        return f"{host}.{NODE_TYPE}"


def to_props(record: ControllerRecord | NodeRecord) -> dict[bytes, bytes]:
    """The bytes form zeroconf puts on the wire (and hands back when resolving)."""
    return {k.encode(): v.encode() for k, v in record.encode().items()}
