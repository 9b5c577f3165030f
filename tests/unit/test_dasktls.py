"""Dask's TLS material derived from the cluster secret (``picluster.dasktls``): the
same files on every node, a fixed validity period, private files, and dask reading
them the same way from the environment and from its YAML configuration; then real
mutual TLS on loopback: a ``distributed.Scheduler`` with one secret's files accepts a
client of the same secret and refuses another secret's client and one with no
certificate at all (the cluster-level check is tests/jupyter/test_dask.py)."""

from __future__ import annotations

import asyncio
import datetime
import json
import socket
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from picluster import dasktls
from picluster.secret import Keys

SECRET = bytes(range(32))
OTHER = bytes(range(1, 33))


@pytest.fixture(scope="module")
def material() -> dasktls.Material:
    return dasktls.derive(Keys.derive(SECRET))


def certs(material: dasktls.Material) -> tuple[x509.Certificate, x509.Certificate]:
    return (
        x509.load_pem_x509_certificate(material.ca.encode()),
        x509.load_pem_x509_certificate(material.cert.encode()),
    )


def test_same_secret_same_files_byte_for_byte(material):
    again = dasktls.derive(Keys.derive(SECRET))
    assert (again.ca, again.cert, again.key) == (material.ca, material.cert, material.key)


def test_another_secret_gives_other_keys_and_names(material):
    other = dasktls.derive(Keys.derive(OTHER))
    assert {other.ca, other.cert, other.key}.isdisjoint({material.ca, material.cert, material.key})
    ca, member = certs(material)
    other_ca, other_member = certs(other)
    assert ca.public_key() != other_ca.public_key()
    assert member.public_key() != other_member.public_key()
    # the fingerprint in the name tells two clusters apart in an error message
    assert ca.subject != other_ca.subject
    assert Keys.derive(SECRET).fingerprint in ca.subject.rfc4514_string()


def test_validity_is_fixed_so_a_pi_without_a_clock_accepts_it(material):
    for cert in certs(material):
        assert cert.not_valid_before_utc == datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC)
        assert cert.not_valid_after_utc == datetime.datetime(
            9999, 12, 31, 23, 59, 59, tzinfo=datetime.UTC
        )


def test_member_is_signed_by_the_ca_and_the_ca_is_a_ca(material):
    ca, member = certs(material)
    public = ca.public_key()
    assert isinstance(public, Ed25519PublicKey)
    public.verify(member.signature, member.tbs_certificate_bytes)  # raises if not
    public.verify(ca.signature, ca.tbs_certificate_bytes)  # self-signed
    assert member.issuer == ca.subject
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not member.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    usage = member.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert {u.dotted_string for u in usage} == {"1.3.6.1.5.5.7.3.1", "1.3.6.1.5.5.7.3.2"}
    # the key file holds the member certificate's key
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    key = load_pem_private_key(material.key.encode(), password=None)
    assert key.public_key() == member.public_key()
    # and another cluster's CA does not vouch for this member
    other_ca, _ = certs(dasktls.derive(Keys.derive(OTHER)))
    with pytest.raises(InvalidSignature):
        other_ca.public_key().verify(member.signature, member.tbs_certificate_bytes)  # type: ignore[union-attr]


def test_the_key_is_not_in_repr(material):
    assert "PRIVATE" not in repr(material)
    assert material.key.splitlines()[1] not in repr(material)


def test_write_makes_private_files(tmp_path, material):
    directory = dasktls.write(tmp_path / "a" / "dask-tls", material)
    assert directory.stat().st_mode & 0o777 == 0o700
    modes = {p.name: p.stat().st_mode & 0o777 for p in directory.iterdir()}
    assert modes == {dasktls.CA_FILE: 0o644, dasktls.CERT_FILE: 0o644, dasktls.KEY_FILE: 0o600}
    assert (directory / dasktls.KEY_FILE).read_text() == material.key
    # a directory left too open is closed again
    directory.chmod(0o755)
    dasktls.write(directory, material)
    assert directory.stat().st_mode & 0o777 == 0o700


def test_write_leaves_unchanged_files_alone(tmp_path, material):
    directory = dasktls.write(tmp_path / "dask-tls", material)
    before = {p.name: p.stat().st_ino for p in directory.iterdir()}
    dasktls.write(directory, material)
    assert {p.name: p.stat().st_ino for p in directory.iterdir()} == before
    # a changed secret replaces every file (new inodes: replaced in one step)
    dasktls.write(directory, dasktls.derive(Keys.derive(OTHER)))
    after = {p.name: p.stat().st_ino for p in directory.iterdir()}
    assert set(after) == set(before)
    assert all(after[name] != before[name] for name in before), (before, after)
    # a damaged file alone is replaced
    dasktls.write(directory, material)
    (directory / dasktls.CERT_FILE).write_text("garbage")
    kept = {p.name: p.stat().st_ino for p in directory.iterdir()}
    dasktls.write(directory, material)
    assert (directory / dasktls.CERT_FILE).read_text() == material.cert
    now = {p.name: p.stat().st_ino for p in directory.iterdir()}
    assert now[dasktls.CERT_FILE] != kept[dasktls.CERT_FILE]
    assert {n: now[n] for n in (dasktls.CA_FILE, dasktls.KEY_FILE)} == {
        n: kept[n] for n in (dasktls.CA_FILE, dasktls.KEY_FILE)
    }


def test_settings_cover_every_role(tmp_path):
    values = dasktls.settings(tmp_path)
    tls = "distributed.comm.tls"
    assert values[f"{tls}.ca-file"] == str(tmp_path / dasktls.CA_FILE)
    for role in ("scheduler", "worker", "client"):
        assert values[f"{tls}.{role}.cert"] == str(tmp_path / dasktls.CERT_FILE)
        assert values[f"{tls}.{role}.key"] == str(tmp_path / dasktls.KEY_FILE)


# dask as a fresh process sees it: from the environment (ipcontroller, engines) and
# from a YAML file in DASK_CONFIG (JupyterLab's kernels, picluster.jupyter).
READ_CONFIG = """
import json, sys
import dask.config
from distributed.security import Security
keys = json.loads(sys.argv[1])
sec = Security(require_encryption=True)
print(json.dumps({
    "values": {k: dask.config.get(k, None) for k in keys},
    "security": {role: [getattr(sec, f"tls_{role}_cert"), getattr(sec, f"tls_{role}_key")]
                 for role in ("scheduler", "worker", "client")} | {"ca": sec.tls_ca_file},
}))
"""


def read_config(env: dict[str, str], keys: list[str]) -> dict:
    base = {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent"}
    out = subprocess.run(
        [sys.executable, "-c", READ_CONFIG, json.dumps(keys)],
        env=base | env, capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_environment_and_yaml_say_the_same_to_dask(tmp_path):
    directory = tmp_path / "dask-tls"
    values = dasktls.settings(directory)
    keys = sorted(values)
    from_env = read_config(
        dasktls.environment(directory) | {"DASK_CONFIG": str(tmp_path / "none")}, keys
    )
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    (config_dir / "picluster.yaml").write_text(dasktls.config_yaml(values))
    from_yaml = read_config({"DASK_CONFIG": str(config_dir)}, keys)
    nothing = read_config({"DASK_CONFIG": str(tmp_path / "none")}, keys)
    assert from_env == from_yaml
    assert from_env["values"] == values
    cert, key = str(directory / dasktls.CERT_FILE), str(directory / dasktls.KEY_FILE)
    assert from_env["security"] == {
        "scheduler": [cert, key], "worker": [cert, key], "client": [cert, key],
        "ca": str(directory / dasktls.CA_FILE),
    }  # fmt: skip
    assert nothing["values"] == dict.fromkeys(keys)  # the check can fail


# -- real mutual TLS on loopback -------------------------------------------------------


def security(directory: Path):
    """What a process of that cluster builds: ``Security()`` from dask's configuration."""
    import dask.config
    from distributed.security import Security

    with dask.config.set(dasktls.settings(directory)):
        return Security(require_encryption=True)


def raw_tls(address: str, context: ssl.SSLContext) -> bytes:
    """What the server sends a TLS client before it says anything: distributed's
    handshake frame when it accepts the client; an alert (SSLError) or EOF when not."""
    host, port = address.removeprefix("tls://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as raw:
        try:
            with context.wrap_socket(raw) as tls:
                return tls.recv(1024)
        except (ssl.SSLError, ConnectionResetError):
            return b""


def client_context(directory: Path | None) -> ssl.SSLContext:
    """A TLS client that trusts any server, with ``directory``'s certificate or none."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if directory is not None:
        ctx.load_cert_chain(directory / dasktls.CERT_FILE, directory / dasktls.KEY_FILE)
    return ctx


def test_scheduler_accepts_its_cluster_only(tmp_path):
    ours = dasktls.write(tmp_path / "ours", dasktls.derive(Keys.derive(SECRET)))
    theirs = dasktls.write(tmp_path / "theirs", dasktls.derive(Keys.derive(OTHER)))

    async def main() -> dict:
        from distributed import Client, Scheduler

        got: dict = {}
        async with Scheduler(
            host="127.0.0.1", port=0, protocol="tls", security=security(ours),
            dashboard=False, dashboard_address="127.0.0.1:0",
        ) as scheduler:  # fmt: skip
            address = scheduler.address
            got["address"] = address
            async with Client(
                address, security=security(ours), asynchronous=True, timeout=10
            ) as client:
                got["ours"] = await client.run_on_scheduler(lambda: 42)
            try:
                async with Client(address, security=security(theirs), asynchronous=True, timeout=2):
                    got["theirs"] = "connected"
            except (OSError, TimeoutError) as exc:
                got["theirs"] = f"refused: {type(exc).__name__}: {exc}"
            loop = asyncio.get_running_loop()
            for name, directory in (("raw ours", ours), ("raw theirs", theirs), ("no cert", None)):
                ctx = client_context(directory)
                got[name] = await loop.run_in_executor(None, raw_tls, address, ctx)
        return got

    got = asyncio.run(asyncio.wait_for(main(), 60))
    assert got["address"].startswith("tls://127.0.0.1:"), got
    assert got["ours"] == 42, got
    assert got["theirs"].startswith("refused"), got
    # the same raw probe hears distributed's handshake with the right certificate...
    assert len(got["raw ours"]) > 0, got
    # ...and nothing at all with another cluster's certificate or none
    assert got["raw theirs"] == b"", got
    assert got["no cert"] == b"", got
