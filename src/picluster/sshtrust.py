"""SSH between the nodes of one cluster, derived from the cluster secret.

Two Ed25519 keys come out of the secret by HKDF, each under its own label
(``secret.LABEL_SSH_CA``, ``secret.LABEL_SSH_USER``), so every node derives the
same ones and nothing is copied between Pis:

- the cluster's **certificate authority**. Each node signs its own host key with
  it (principals: its hostname and ``<hostname>.local``) and trusts it for
  ``*.local`` hosts (``@cert-authority`` in ``/etc/ssh/ssh_known_hosts``): no
  host-key prompt between nodes. sshd trusts it for user certificates too
  (``TrustedUserCAKeys``), but only for the first user
  (``AuthorizedPrincipalsFile``: root and any other account accept none);
- the **cluster user key**, installed for the first user as
  ``~/.ssh/id_ed25519_picluster`` with a user certificate whose one principal is
  that user's name, and an ``ssh_config`` drop-in that offers it to ``*.local``
  hosts: ``ssh engine-1.local`` from the controller just works. Nothing is added
  to ``authorized_keys``: from outside, only the user's own keys work.

Everything the node trusts lives in ``/etc/ssh/picluster/`` plus one drop-in each
for sshd and ssh and one marked line in ``ssh_known_hosts``, so that
``[ssh] cluster_login = false`` removes all of it (:func:`remove`).

The crypto is done by the tools the image already has: OpenSSL computes the
public key of a derived private key (``openssl pkey``; the private key goes in on
a pipe) and ``ssh-keygen -s`` signs certificates with the CA key written to a
private temporary directory (0700, key 0600, on ``/run`` when we can) that is
removed however signing ends. What is written by hand is OpenSSH's key *file
format* (``PROTOCOL.key``: a few length-prefixed strings), and the reading of a
certificate's principals and signer to decide whether it must be signed again.
Keys never reach a log or a command line.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from picluster import secret as secret_mod
from picluster import users
from picluster.errors import PiclusterError
from picluster.files import write_if_changed

KEY_TYPE = "ssh-ed25519"
CERT_TYPE = "ssh-ed25519-cert-v01@openssh.com"
SEED_BYTES = 32
_PKCS8_PREFIX = bytes.fromhex("302e020100300506032b657004220420")
"""DER of an Ed25519 PrivateKeyInfo (RFC 8410) up to the 32-byte private key."""
_SPKI_PREFIX = bytes.fromhex("302a300506032b6570032100")
"""DER of an Ed25519 SubjectPublicKeyInfo up to the 32-byte public key."""

KNOWN_HOSTS_MARK = "picluster-cluster-ca"
"""The comment that marks our line in ``ssh_known_hosts`` (so it can be replaced)."""
HOST_PATTERN = "*.local"
"""Which host names the cluster CA vouches for on the client side: mDNS names only."""
USER_KEY_NAME = "id_ed25519_picluster"
SSHD_SERVICE = "ssh.service"


class SshTrustError(PiclusterError):
    """The cluster's SSH trust cannot be set up; ``str()`` says why and the fix."""


# -- keys ---------------------------------------------------------------------------------


def _string(data: bytes) -> bytes:
    """An SSH wire ``string``: uint32 length, then the bytes (RFC 4251)."""
    return len(data).to_bytes(4, "big") + data


def _run(argv: Sequence[str], what: str, stdin: bytes | None = None) -> bytes:
    try:
        proc = subprocess.run(list(argv), input=stdin, capture_output=True, check=False)
    except FileNotFoundError:
        raise SshTrustError(
            f"{what}: {argv[0]} not found. Fix: apt-get install openssh-client openssl "
            "(both are in the picluster image)"
        ) from None
    if proc.returncode != 0:
        # stderr of these tools names files, never key material.
        error = proc.stderr.decode(errors="replace").strip()
        raise SshTrustError(f"{what}: {argv[0]} failed ({proc.returncode}): {error}")
    return proc.stdout


def public_from_seed(seed: bytes) -> bytes:
    """The Ed25519 public key of ``seed`` (RFC 8032), computed by OpenSSL."""
    if len(seed) != SEED_BYTES:
        raise ValueError(f"an Ed25519 private key is {SEED_BYTES} bytes")
    der = _PKCS8_PREFIX + seed
    pem = (
        b"-----BEGIN PRIVATE KEY-----\n" + base64.b64encode(der) + b"\n-----END PRIVATE KEY-----\n"
    )
    out = _run(["openssl", "pkey", "-pubout", "-outform", "DER"], "deriving a public key", pem)
    if len(out) != len(_SPKI_PREFIX) + 32 or not out.startswith(_SPKI_PREFIX):
        raise SshTrustError("openssl pkey: unexpected output for an Ed25519 key")
    return out[len(_SPKI_PREFIX) :]


@dataclass(frozen=True)
class Ed25519Key:
    """An Ed25519 key pair from a 32-byte seed; ``repr`` never shows the seed."""

    seed: bytes = field(repr=False)
    public: bytes

    @classmethod
    def from_seed(cls, seed: bytes) -> Ed25519Key:
        return cls(seed, public_from_seed(seed))

    def blob(self) -> bytes:
        return _string(KEY_TYPE.encode()) + _string(self.public)

    def public_line(self, comment: str) -> str:
        return f"{KEY_TYPE} {base64.b64encode(self.blob()).decode()} {comment}"

    def fingerprint(self) -> str:
        """``SHA256:...`` as ``ssh-keygen -l`` prints it."""
        digest = hashlib.sha256(self.blob()).digest()
        return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")

    def private_openssh(self, comment: str) -> bytes:
        """The unencrypted ``openssh-key-v1`` file (OpenSSH's ``PROTOCOL.key``)."""
        check = hashlib.sha256(self.public).digest()[:4]  # any value; fixed = same file
        body = (
            check
            + check
            + _string(KEY_TYPE.encode())
            + _string(self.public)
            + _string(self.seed + self.public)
            + _string(comment.encode())
        )
        body += bytes(range(1, 1 + (-len(body) % 8)))  # pad to the cipher block size
        data = (
            b"openssh-key-v1\0"
            + _string(b"none")
            + _string(b"none")
            + _string(b"")
            + (1).to_bytes(4, "big")
            + _string(self.blob())
            + _string(body)
        )
        text = base64.b64encode(data).decode()
        lines = [text[i : i + 70] for i in range(0, len(text), 70)]
        armored = "\n".join(
            ["-----BEGIN OPENSSH PRIVATE KEY-----", *lines, "-----END OPENSSH PRIVATE KEY-----"]
        )
        return (armored + "\n").encode()


@dataclass(frozen=True)
class ClusterSsh:
    """The cluster's SSH keys, derived from its secret."""

    ca: Ed25519Key
    user: Ed25519Key

    @classmethod
    def derive(cls, secret: bytes) -> ClusterSsh:
        if len(secret) != secret_mod.SECRET_BYTES:
            raise secret_mod.SecretError(
                f"the cluster secret must be {secret_mod.SECRET_BYTES} bytes"
            )
        return cls(
            ca=Ed25519Key.from_seed(secret_mod.hkdf_sha256(secret, secret_mod.LABEL_SSH_CA)),
            user=Ed25519Key.from_seed(secret_mod.hkdf_sha256(secret, secret_mod.LABEL_SSH_USER)),
        )


# -- certificates -------------------------------------------------------------------------


def _private_tmp() -> str | None:
    """A RAM-backed place for the CA key while ``ssh-keygen`` signs (root: /run)."""
    return "/run" if os.access("/run", os.W_OK) else None


def sign(
    ca: Ed25519Key, public_line: str, *, key_id: str, principals: Sequence[str], host: bool
) -> str:
    """``public_line`` certified by ``ca`` (a host or user certificate, valid forever:
    a Pi has no clock to check a validity period against). The CA key exists on disk
    only inside a 0700 temporary directory, 0600, for the time ``ssh-keygen`` runs."""
    with tempfile.TemporaryDirectory(prefix="picluster-ssh-", dir=_private_tmp()) as tmp:
        ca_file = Path(tmp) / "ca"
        fd = os.open(ca_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(ca.private_openssh("picluster cluster CA"))
        target = Path(tmp) / "key.pub"
        target.write_text(public_line + "\n")
        argv = ["ssh-keygen", "-q", "-s", str(ca_file), "-I", key_id]
        argv += ["-n", ",".join(principals), "-V", "always:forever"]
        if host:
            argv.append("-h")
        _run([*argv, str(target)], f"signing the {'host' if host else 'user'} certificate")
        return (Path(tmp) / "key-cert.pub").read_text().strip()


@dataclass(frozen=True)
class Certificate:
    """What decides whether a certificate must be signed again."""

    key: bytes
    """The certified public key (raw 32 bytes)."""
    principals: tuple[str, ...]
    signer: bytes
    """The CA's public key blob."""
    host: bool


def read_certificate(line: str) -> Certificate | None:
    """The fields of an OpenSSH Ed25519 certificate line (``PROTOCOL.certkeys``), or
    None when ``line`` is not one."""
    fields = line.split()
    if len(fields) < 2 or fields[0] != CERT_TYPE:
        return None
    try:
        blob = base64.b64decode(fields[1], validate=True)
    except ValueError:
        return None
    pos = 0

    def take(n: int) -> bytes:
        nonlocal pos
        if pos + n > len(blob):
            raise ValueError("truncated")
        pos += n
        return blob[pos - n : pos]

    def string() -> bytes:
        return take(int.from_bytes(take(4), "big"))

    try:
        if string() != CERT_TYPE.encode():
            return None
        string()  # nonce
        key = string()
        take(8)  # serial
        cert_type = int.from_bytes(take(4), "big")
        string()  # key id
        packed, names = string(), []
        while packed:
            size = int.from_bytes(packed[:4], "big")
            names.append(packed[4 : 4 + size].decode("utf-8", "replace"))
            packed = packed[4 + size :]
        take(16)  # valid after, valid before
        string(), string(), string()  # critical options, extensions, reserved
        signer = string()
    except ValueError:
        return None
    return Certificate(key, tuple(names), signer, cert_type == 2)


# -- where things go ----------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """The paths this module writes, under ``root`` (``/`` on a node; a test's or an
    image's directory otherwise)."""

    root: Path = Path("/")

    def at(self, path: str) -> Path:
        return self.root / path.lstrip("/")

    @property
    def host_key(self) -> Path:
        return self.at("/etc/ssh/ssh_host_ed25519_key.pub")

    @property
    def trust_dir(self) -> Path:
        return self.at("/etc/ssh/picluster")

    @property
    def ca_pub(self) -> Path:
        return self.trust_dir / "ca.pub"

    @property
    def host_cert(self) -> Path:
        return self.trust_dir / "ssh_host_ed25519_key-cert.pub"

    @property
    def principals_dir(self) -> Path:
        return self.trust_dir / "principals"

    @property
    def sshd_dropin(self) -> Path:
        return self.at("/etc/ssh/sshd_config.d/60-picluster-cluster.conf")

    @property
    def ssh_dropin(self) -> Path:
        return self.at("/etc/ssh/ssh_config.d/60-picluster-cluster.conf")

    @property
    def known_hosts(self) -> Path:
        return self.at("/etc/ssh/ssh_known_hosts")

    def user_key(self, user: pwd.struct_passwd) -> Path:
        return self.at(user.pw_dir) / ".ssh" / USER_KEY_NAME

    def user_files(self, user: pwd.struct_passwd) -> list[Path]:
        key = self.user_key(user)
        return [key, key.with_name(key.name + ".pub"), key.with_name(key.name + "-cert.pub")]


HEADER = (
    "# picluster: SSH between the nodes of this cluster, trusted through a CA derived from\n"
    "# the cluster secret. Written by `picluster ssh-trust` at every boot; removed with\n"
    "# [ssh] cluster_login = false in /etc/picluster/cluster.toml.\n"
)


def sshd_dropin(layout: Layout, with_host_cert: bool) -> str:
    lines = [HEADER.rstrip("\n")]
    if with_host_cert:
        lines.append(f"HostCertificate {layout.host_cert}")
    lines += [
        f"TrustedUserCAKeys {layout.ca_pub}",
        "# Only the first user has a principals file: the CA logs in no other account.",
        f"AuthorizedPrincipalsFile {layout.principals_dir}/%u",
    ]
    return "\n".join(lines) + "\n"


DEFAULT_IDENTITIES = ("id_rsa", "id_ecdsa", "id_ecdsa_sk", "id_ed25519", "id_ed25519_sk")
"""ssh's own default identity files, which any ``IdentityFile`` line replaces: listed
after the cluster key so the user's own keys still reach ``.local`` hosts."""


def ssh_dropin(layout: Layout, user: pwd.struct_passwd) -> str:
    key = layout.user_key(user)
    return (
        HEADER
        + f"Match host {HOST_PATTERN} localuser {user.pw_name}\n"
        + f"    IdentityFile {key}\n"
        + f"    CertificateFile {key}-cert.pub\n"
        + "    # The user's own keys too (an IdentityFile line replaces ssh's defaults):\n"
        + "".join(f"    IdentityFile ~/.ssh/{name}\n" for name in DEFAULT_IDENTITIES)
    )


def known_hosts(current: str, ca_line: str | None) -> str:
    """``ssh_known_hosts`` with our marked line replaced by ``ca_line`` (None: removed);
    every other line is kept as it is."""
    kept = [ln for ln in current.splitlines() if not ln.rstrip().endswith(" " + KNOWN_HOSTS_MARK)]
    if ca_line:
        kept.append(ca_line)
    return "".join(f"{ln}\n" for ln in kept)


# -- applying and removing -----------------------------------------------------------------


@dataclass
class Outcome:
    said: list[str] = field(default_factory=list)
    """What was done, one line each, for the journal (no key material)."""
    sshd_changed: bool = False
    """sshd must read its configuration again (a reload)."""


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _drop(path: Path) -> bool:
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True


def _as(user: pwd.struct_passwd, work: Callable[[], None]) -> None:
    """``users.as_user``, its failure told in terms of the user's ~/.ssh."""
    try:
        users.as_user(user, work)
    except OSError as exc:
        raise SshTrustError(
            f"cannot write {USER_KEY_NAME} in {user.pw_name}'s ~/.ssh: {exc.strerror or exc}. "
            f"Fix: make ~{user.pw_name}/.ssh a directory {user.pw_name} owns"
        ) from None


def install_user_key(layout: Layout, user: pwd.struct_passwd, keys: ClusterSsh, cert: str) -> None:
    key, pub, cert_file = layout.user_files(user)
    comment = f"{user.pw_name} (picluster cluster user key)"

    def work() -> None:
        key.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_if_changed(key, keys.user.private_openssh(comment), 0o600)
        write_if_changed(pub, (keys.user.public_line(comment) + "\n").encode())
        write_if_changed(cert_file, (cert + "\n").encode())

    _as(user, work)


def _host_key(layout: Layout) -> tuple[str, bytes] | None:
    """This host's Ed25519 public key line and raw key, or None when it has none."""
    line = (_read(layout.host_key) or b"").decode(errors="replace").strip()
    fields = line.split()
    if len(fields) < 2 or fields[0] != KEY_TYPE:
        return None
    try:
        blob = base64.b64decode(fields[1], validate=True)
    except ValueError:
        return None
    if blob != _string(KEY_TYPE.encode()) + _string(blob[-32:]):
        return None
    return line, blob[-32:]


def _certified(
    path: Path, wanted: Certificate, ca: Ed25519Key, public_line: str, key_id: str
) -> str | None:
    """A certificate to write at ``path``, or None when the one there is already right."""
    if read_certificate((_read(path) or b"").decode(errors="replace")) == wanted:
        return None
    return sign(ca, public_line, key_id=key_id, principals=wanted.principals, host=wanted.host)


def apply(secret: bytes, host: str, user: pwd.struct_passwd, layout: Layout) -> Outcome:
    """Make this node's SSH trust match the secret, its hostname and its first user.

    Idempotent: a file is written only when it would change, and a certificate is
    signed again only when its key, principals or CA differ from what is wanted
    (after ``picluster name`` gave the card its name, after new host keys, after a
    new secret). Both certificates are signed before any file is written, so a
    signing that fails changes nothing; every file is replaced atomically.
    """
    keys = ClusterSsh.derive(secret)
    out = Outcome()
    ca_line = keys.ca.public_line("picluster cluster CA")
    host_key = _host_key(layout)
    host_cert = None
    if host_key is not None:
        principals = (host, f"{host}.local")
        wanted = Certificate(host_key[1], principals, keys.ca.blob(), True)
        host_cert = _certified(layout.host_cert, wanted, keys.ca, host_key[0], f"picluster {host}")
        if host_cert is not None:
            out.said.append(f"host certificate signed for {', '.join(principals)}")
    else:
        out.said.append(
            f"no Ed25519 host key at {layout.host_key}: sshd gets no host certificate, so "
            "other nodes will ask about this host's key. Fix: ssh-keygen -A, then "
            "systemctl restart picluster-agent"
        )
    user_cert_file = layout.user_files(user)[2]
    wanted = Certificate(keys.user.public, (user.pw_name,), keys.ca.blob(), False)
    user_cert = _certified(
        user_cert_file,
        wanted,
        keys.ca,
        keys.user.public_line(user.pw_name),
        f"picluster user {user.pw_name}",
    )
    if user_cert is None:
        user_cert = (_read(user_cert_file) or b"").decode().strip()

    # sshd's side: the CA for user certificates, who may log in with one, the host
    # certificate, and the drop-in naming them.
    out.sshd_changed |= write_if_changed(layout.ca_pub, (ca_line + "\n").encode())
    out.sshd_changed |= write_if_changed(
        layout.principals_dir / user.pw_name, f"{user.pw_name}\n".encode()
    )
    for stale in layout.principals_dir.iterdir():
        if stale.name != user.pw_name:  # an earlier first user's, before a rename
            out.sshd_changed |= _drop(stale)
    if host_cert is not None:
        out.sshd_changed |= write_if_changed(layout.host_cert, (host_cert + "\n").encode())
    elif host_key is None:
        out.sshd_changed |= _drop(layout.host_cert)
    dropin = sshd_dropin(layout, with_host_cert=host_key is not None)
    out.sshd_changed |= write_if_changed(layout.sshd_dropin, dropin.encode())

    # ssh's side: the CA for *.local hosts, and the first user's key offered to them.
    current = (_read(layout.known_hosts) or b"").decode(errors="replace")
    trusted = f"@cert-authority {HOST_PATTERN} {ca_line} {KNOWN_HOSTS_MARK}"
    write_if_changed(layout.known_hosts, known_hosts(current, trusted).encode())
    write_if_changed(layout.ssh_dropin, ssh_dropin(layout, user).encode())
    install_user_key(layout, user, keys, user_cert)
    out.said.append(
        f"cluster CA {keys.ca.fingerprint()} trusted for {HOST_PATTERN} hosts and for "
        f"{user.pw_name}'s cluster key (~{user.pw_name}/.ssh/{USER_KEY_NAME})"
    )
    return out


def remove(user: pwd.struct_passwd | None, layout: Layout) -> Outcome:
    """Undo :func:`apply`: nothing of the cluster's SSH trust is left (``[ssh]
    cluster_login = false``). Other lines of ``ssh_known_hosts`` are kept."""
    out = Outcome()
    out.sshd_changed |= _drop(layout.sshd_dropin)
    if layout.trust_dir.exists():
        shutil.rmtree(layout.trust_dir)
        out.sshd_changed = True
    removed = _drop(layout.ssh_dropin)
    current = _read(layout.known_hosts)
    if current is not None:
        text = current.decode(errors="replace")
        left = known_hosts(text, None)
        if left != text:
            removed = True
            if left:
                write_if_changed(layout.known_hosts, left.encode())
            else:
                _drop(layout.known_hosts)
    if user is not None:
        files = layout.user_files(user)

        def work() -> None:
            for path in files:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()

        if any(p.exists() or p.is_symlink() for p in files):
            _as(user, work)
            removed = True
    if removed or out.sshd_changed:
        out.said.append("cluster SSH trust removed ([ssh] cluster_login = false)")
    return out


def reload_sshd(layout: Layout) -> str | None:
    """Ask systemd to have sshd read its configuration again, without waiting (it may
    not have started yet, or be starting now: it then reads the new files anyway).
    Only on a live system; None when there is nothing to ask."""
    if layout.root != Path("/") or not Path("/run/systemd/system").is_dir():
        return None
    if shutil.which("systemctl") is None:
        return None
    proc = subprocess.run(
        ["systemctl", "try-reload-or-restart", "--no-block", SSHD_SERVICE],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        return f"sshd not reloaded ({proc.stderr.strip()}): it reads the new files when it starts"
    return "sshd asked to reload"
