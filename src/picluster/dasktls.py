"""Dask's TLS, derived from the cluster secret: nothing of Dask listens unauthenticated.

A ``distributed`` scheduler and its workers speak plain, unauthenticated TCP by
default: anyone on the LAN could submit work to them. ``rc.become_dask()`` on a
picluster cluster uses ``tls://`` with mutual authentication instead
(``distributed`` requires a certificate from both ends): an Ed25519 certificate
authority and one member certificate, both derived from the secret under their
own HKDF labels, so every node (the hub's scheduler, the engines' workers, the
notebook's client) makes the very same files and no file is copied.

Ed25519 signatures are deterministic and the validity period is fixed, so the
PEM files are byte-for-byte the same on every node, and a Pi without a
real-time clock (its date still in 1970 or stuck at its last shutdown before
NTP answers, or forever on a LAN without the Internet) never rejects a peer
as "not yet valid".

Where ``distributed`` looks: dask's own configuration. The agent gives it to
the ipcontroller and the engines as environment variables (``environment``);
``picluster jupyter`` and ``picluster connect`` write it to the user's dask
configuration directory (``write_user_config``), read by notebooks, terminals
and SSH sessions alike. Only ``tls://`` connections use it: a ``LocalCluster``
in the same notebook still works as usual.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from picluster.files import atomic_write_text, write_if_changed
from picluster.secret import LABEL_DASK_CA, LABEL_DASK_MEMBER, Keys

CA_FILE = "ca.pem"
CERT_FILE = "member.pem"
KEY_FILE = "member.key"

_NOT_BEFORE = datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC)
_NOT_AFTER = datetime.datetime(9999, 12, 31, 23, 59, 59, tzinfo=datetime.UTC)


@dataclass(frozen=True)
class Material:
    """The three PEM texts; ``key`` is as secret as the cluster secret."""

    ca: str
    cert: str
    key: str

    def __repr__(self) -> str:  # never let the key reach a log by accident
        return "Material(<dask tls>)"


def derive(keys: Keys) -> Material:
    """The cluster's CA certificate, member certificate and member key."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    ca_key = Ed25519PrivateKey.from_private_bytes(keys.seed(LABEL_DASK_CA))
    member_key = Ed25519PrivateKey.from_private_bytes(keys.seed(LABEL_DASK_MEMBER))
    # The fingerprint tells two clusters' CAs apart in an error message.
    ca_name = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, f"picluster {keys.fingerprint} dask CA")]
    )
    member_name = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, f"picluster {keys.fingerprint} member")]
    )

    def builder(subject: x509.Name, public: object, serial: int) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(ca_name)
            .public_key(public)  # type: ignore[arg-type]
            .serial_number(serial)
            .not_valid_before(_NOT_BEFORE)
            .not_valid_after(_NOT_AFTER)
        )

    ca_cert = (
        builder(ca_name, ca_key.public_key(), 1)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, None)
    )
    member_cert = (
        builder(member_name, member_key.public_key(), 2)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .sign(ca_key, None)
    )
    pem = serialization.Encoding.PEM
    return Material(
        ca=ca_cert.public_bytes(pem).decode("ascii"),
        cert=member_cert.public_bytes(pem).decode("ascii"),
        key=member_key.private_bytes(
            pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode("ascii"),
    )


def write(directory: Path, material: Material) -> Path:
    """The three files in ``directory`` (0700; the key 0600), each replaced in one
    step and only when it differs. Returns ``directory``."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    directory.chmod(0o700)
    for name, text, mode in (
        (CA_FILE, material.ca, 0o644),
        (CERT_FILE, material.cert, 0o644),
        (KEY_FILE, material.key, 0o600),
    ):
        write_if_changed(directory / name, text.encode("ascii"), mode)
    return directory


def settings(directory: Path) -> dict[str, str]:
    """The dask configuration (dotted keys) that makes every ``distributed`` role
    (scheduler, worker, client) use the files in ``directory``."""
    tls = "distributed.comm.tls"
    out = {f"{tls}.ca-file": str(directory / CA_FILE)}
    for role in ("scheduler", "worker", "client"):
        out[f"{tls}.{role}.cert"] = str(directory / CERT_FILE)
        out[f"{tls}.{role}.key"] = str(directory / KEY_FILE)
    return out


def environment(directory: Path) -> dict[str, str]:
    """``settings`` as the environment variables dask reads at import."""
    return {
        "DASK_" + "__".join(part.upper().replace("-", "_") for part in key.split(".")): value
        for key, value in settings(directory).items()
    }


USER_CONFIG_DIR = Path(".config/dask")
"""Under a user's home (or ``$DASK_CONFIG``): dask reads every YAML file there at import."""
USER_CONFIG = "picluster.yaml"
USER_TLS = "picluster-tls"
USER_CONFIG_HEADER = (
    "# Written by picluster (jupyter on the controller, connect elsewhere); edits are\n"
    "# lost. rc.become_dask() on the cluster authenticates with the TLS files derived\n"
    "# from its secret; nothing else of dask's configuration changes.\n"
)


def user_config_dir(home: Path | None = None) -> Path:
    """Where dask reads a user's configuration: ``$DASK_CONFIG`` or ``~/.config/dask``
    (``home`` given: that home's, whatever this process's environment says)."""
    if home is not None:
        return home / USER_CONFIG_DIR
    return Path(os.environ.get("DASK_CONFIG") or Path.home() / USER_CONFIG_DIR)


def write_user_config(config_dir: Path, keys: Keys, dashboard_link: str) -> Path:
    """``rc.become_dask()`` for the user whose dask configuration directory this is:
    a configuration file pointing at the cluster's TLS files (``picluster-tls``
    next to it, the key 0600) and at the dashboard (``distributed.dashboard.link``,
    where ``{port}`` is the dashboard's port; "" leaves dask's own). Returns the
    configuration file."""
    tls = write(config_dir / USER_TLS, derive(keys))
    values = settings(tls)
    if dashboard_link:
        values["distributed.dashboard.link"] = dashboard_link
    path = config_dir / USER_CONFIG
    atomic_write_text(path, USER_CONFIG_HEADER + config_yaml(values))
    return path


def config_yaml(values: dict[str, str]) -> str:
    """Dotted dask settings as a dask YAML configuration file."""
    import yaml

    tree: dict[str, Any] = {}
    for key, value in values.items():
        *parents, leaf = key.split(".")
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return yaml.safe_dump(tree, sort_keys=True)
