"""The cluster secret and everything derived from it.

One 32-byte secret per cluster is the root of all trust (DESIGN.md, "One cluster
secret"). It is stored as 64 hex digits on one line so that it survives YAML
(cloud-init ``write_files``), Raspberry Pi Imager and copy/paste unchanged.
Every key the cluster uses is derived from it with HKDF-SHA256 (RFC 5869) under
a distinct label, so a card needs nothing but the secret to join, and knowing
one derived value (say the Jupyter token) reveals neither the secret nor the
other keys.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

from picluster.errors import ConfigurationError
from picluster.files import atomic_write

SECRET_BYTES = 32
SECRET_HEX_LEN = SECRET_BYTES * 2

# Labels are part of the wire contract: changing one changes every key.
_SALT = b"picluster/v1"
LABEL_IPP_KEY = b"ipyparallel session hmac key"
LABEL_CURVE_SERVER = b"curvezmq server secret key"
LABEL_CURVE_CLIENT = b"curvezmq client secret key"
LABEL_JUPYTER_TOKEN = b"jupyter token"
LABEL_FINGERPRINT = b"key fingerprint"
LABEL_RECORD_MAC = b"mdns record mac key"
LABEL_SSH_CA = b"ssh certificate authority ed25519 seed"
LABEL_SSH_USER = b"ssh cluster user ed25519 seed"
LABEL_DASK_CA = b"dask tls certificate authority ed25519 seed"
LABEL_DASK_MEMBER = b"dask tls member ed25519 seed"

FINGERPRINT_LEN = 12
"""Hex digits of the fingerprint published over mDNS: 48 bits tell two secrets
apart with certainty in practice and are useless to an attacker because they
come out of HKDF, not out of the key itself."""


class SecretError(ConfigurationError):
    """The secret file is missing, unreadable, malformed or too open."""


def hkdf_sha256(ikm: bytes, info: bytes, length: int = 32, salt: bytes = _SALT) -> bytes:
    """HKDF (RFC 5869) with SHA-256: extract, then expand to ``length`` bytes."""
    if length > 255 * 32:
        raise ValueError("HKDF-SHA256 cannot produce more than 8160 bytes")
    prk = hmac.new(salt or b"\0" * 32, ikm, hashlib.sha256).digest()
    out, block = b"", b""
    counter = 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        out += block
        counter += 1
    return out[:length]


def generate() -> bytes:
    return secrets.token_bytes(SECRET_BYTES)


def encode(secret: bytes) -> str:
    return secret.hex() + "\n"


def parse(text: str, source: str = "secret") -> bytes:
    """Parse the on-disk form; the message never quotes the content."""
    value = "".join(text.split())
    if len(value) != SECRET_HEX_LEN:
        raise SecretError(
            f"{source}: expected {SECRET_HEX_LEN} hex digits ({SECRET_BYTES} bytes), "
            f"found {len(value)} characters. Fix: write a new one with "
            f"'picluster secret new {source}' or copy the build's deploy/<name>.secret."
        )
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise SecretError(
            f"{source}: not hexadecimal. Fix: the file must hold {SECRET_HEX_LEN} "
            "characters from 0-9a-f on one line."
        ) from None


def check_permissions(path: Path) -> list[str]:
    """Problems with who may read the secret file (empty when it is private)."""
    st = path.stat()
    problems = []
    if st.st_mode & (stat.S_IROTH | stat.S_IWOTH):
        problems.append(
            f"{path} is readable or writable by every user (mode {stat.S_IMODE(st.st_mode):04o}). "
            f"Fix: chmod 600 {path}"
        )
    if st.st_mode & stat.S_IWGRP:
        problems.append(
            f"{path} is writable by its group (mode {stat.S_IMODE(st.st_mode):04o}). "
            f"Fix: chmod 600 {path}"
        )
    if os.geteuid() == 0 and st.st_uid != 0:
        problems.append(f"{path} is not owned by root. Fix: chown root:root {path}")
    return problems


def check_private(path: Path, *, own: bool = False) -> None:
    """Refuse a secret file other users can read or write; with ``own``, also one that
    another user owns (it may be theirs, planted, not the cluster's). A file that is
    absent or cannot be looked at is left to ``load``, whose message names the fix."""
    try:
        st = path.stat()
    except OSError:
        return
    if own and st.st_uid != os.geteuid():
        raise SecretError(
            f"{path} is owned by uid {st.st_uid}, not by you (uid {os.geteuid()}): it may "
            f"not be the cluster's secret. Fix: check it, then chown {os.geteuid()} {path} "
            "and chmod 600, or name the right file."
        )
    if st.st_mode & 0o077:
        raise SecretError(
            f"{path} can be read or written by other users (mode "
            f"{stat.S_IMODE(st.st_mode):04o}). Fix: chmod 600 {path}"
        )


def credential_path(default: Path) -> Path:
    """Where the secret is: systemd's credential copy first, else ``default``.

    The units pass the root-only file with ``LoadCredential=``, so the
    unprivileged service user reads a private copy and the file itself can stay
    mode 0600 root:root.
    """
    creds = os.environ.get("CREDENTIALS_DIRECTORY")
    if creds:
        candidate = Path(creds) / "picluster-secret"
        if candidate.exists():
            return candidate
    return default


def load(path: Path) -> bytes:
    try:
        text = path.read_text(encoding="ascii", errors="replace")
    except FileNotFoundError:
        raise SecretError(
            f"{path}: no cluster secret. Fix: put the build's deploy/<name>.secret "
            f"there (the card seed does this), or run 'picluster secret new {path}' "
            "and copy the same file to every card."
        ) from None
    except PermissionError:
        raise SecretError(
            f"{path}: permission denied. Fix: run as root, or start through the "
            "systemd unit, which passes the secret as a credential."
        ) from None
    except OSError as exc:
        raise SecretError(
            f"{path}: cannot read ({exc.strerror}). Fix: name the secret file itself, "
            "e.g. deploy/<name>.secret"
        ) from None
    return parse(text, str(path))


def write(path: Path, secret: bytes) -> None:
    """Write the secret atomically, mode 0600, never leaving a partial file."""
    atomic_write(path, encode(secret).encode("ascii"), mode=0o600)


@dataclass(frozen=True)
class CurveKeys:
    server_public: bytes
    server_secret: bytes
    client_public: bytes
    client_secret: bytes


@dataclass(frozen=True)
class Keys:
    """Everything a node derives from the cluster secret."""

    ipp_key: str
    jupyter_token: str
    fingerprint: str
    record_key: bytes
    """Keys the MAC that authenticates this cluster's mDNS records (``records.seal``)."""
    _secret: bytes

    @classmethod
    def derive(cls, secret: bytes) -> Keys:
        if len(secret) != SECRET_BYTES:
            raise SecretError(f"the cluster secret must be {SECRET_BYTES} bytes")
        return cls(
            ipp_key=hkdf_sha256(secret, LABEL_IPP_KEY).hex(),
            jupyter_token=hkdf_sha256(secret, LABEL_JUPYTER_TOKEN, 24).hex(),
            fingerprint=fingerprint(secret),
            record_key=hkdf_sha256(secret, LABEL_RECORD_MAC),
            _secret=secret,
        )

    def curve(self) -> CurveKeys:
        """CurveZMQ key pairs, derived rather than generated so that no card
        needs a key file: the server public key is as secret as the HMAC key
        (knowing it is enough to connect)."""
        from zmq import curve_public
        from zmq.utils import z85

        server_secret = z85.encode(self.seed(LABEL_CURVE_SERVER))
        client_secret = z85.encode(self.seed(LABEL_CURVE_CLIENT))
        return CurveKeys(
            server_public=curve_public(server_secret),
            server_secret=server_secret,
            client_public=curve_public(client_secret),
            client_secret=client_secret,
        )

    def seed(self, label: bytes) -> bytes:
        """32 bytes derived from the secret under ``label`` (one of the ``LABEL_*``)."""
        return hkdf_sha256(self._secret, label)

    def __repr__(self) -> str:  # never let a derived key reach a log by accident
        return f"Keys(fingerprint={self.fingerprint!r})"


def fingerprint(secret: bytes) -> str:
    return hkdf_sha256(secret, LABEL_FINGERPRINT, 16).hex()[:FINGERPRINT_LEN]
