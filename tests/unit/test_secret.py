import stat

import pytest

from picluster import secret
from picluster.cli import main
from picluster.secret import Keys, SecretError


def test_hkdf_matches_rfc5869_case_1():
    ikm = bytes.fromhex("0b" * 22)
    salt = bytes.fromhex("000102030405060708090a0b0c")
    info = bytes.fromhex("f0f1f2f3f4f5f6f7f8f9")
    okm = secret.hkdf_sha256(ikm, info, 42, salt=salt)
    assert okm.hex() == (
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
    )


def test_derivations_are_distinct_and_stable():
    s = bytes(range(32))
    a, b = Keys.derive(s), Keys.derive(s)
    assert a == b
    assert len({a.ipp_key, a.jupyter_token, a.fingerprint, a.record_key.hex()}) == 4
    assert len(a.ipp_key) == 64 and len(a.jupyter_token) == 48 and len(a.fingerprint) == 12
    assert s.hex() not in (a.ipp_key + a.jupyter_token)
    assert Keys.derive(secret.generate()).ipp_key != a.ipp_key


def test_curve_keys_form_valid_pairs():
    from zmq import curve_public

    pair = Keys.derive(bytes(32)).curve()
    assert curve_public(pair.server_secret) == pair.server_public
    assert len(pair.server_public) == 40
    assert pair.server_public != pair.client_public


def test_repr_hides_keys():
    keys = Keys.derive(bytes(32))
    assert keys.ipp_key not in repr(keys) and keys.jupyter_token not in repr(keys)


def test_write_is_private_and_round_trips(tmp_path):
    path = tmp_path / "secret"
    value = secret.generate()
    secret.write(path, value)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text() == value.hex() + "\n"
    assert secret.load(path) == value
    assert secret.check_permissions(path) == []


def test_open_permissions_are_reported(tmp_path):
    path = tmp_path / "secret"
    secret.write(path, secret.generate())
    path.chmod(0o644)
    [problem] = secret.check_permissions(path)
    assert "chmod 600" in problem


@pytest.mark.parametrize(
    ("text", "match"),
    [("abc\n", "expected 64 hex digits"), ("zz" * 32, "not hexadecimal")],
)
def test_malformed_secret(tmp_path, text, match):
    path = tmp_path / "secret"
    path.write_text(text)
    with pytest.raises(SecretError, match=match) as exc:
        secret.load(path)
    assert str(path) in str(exc.value)


def test_missing_secret_says_where_to_get_one(tmp_path):
    with pytest.raises(SecretError, match=r"deploy/<name>\.secret"):
        secret.load(tmp_path / "nope")


def test_credential_directory_wins(tmp_path, monkeypatch):
    creds = tmp_path / "creds"
    creds.mkdir()
    secret.write(creds / "picluster-secret", bytes(32))
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    assert secret.credential_path(tmp_path / "x") == creds / "picluster-secret"


def test_agent_refuses_a_secret_other_users_can_read(tmp_path, monkeypatch, caplog):
    """The service does not start on a secret that is no longer one (exit 78, the fix)."""
    monkeypatch.setenv("PICLUSTER_HOSTNAME", "engine-1")
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    path = tmp_path / "secret"
    secret.write(path, secret.generate())
    path.chmod(0o644)
    argv = ["agent", "--config", str(tmp_path / "absent.toml"), "--secret", str(path),
            "--state-dir", str(tmp_path / "state")]  # fmt: skip
    assert main(argv) == 78
    assert f"chmod 600 {path}" in caplog.text
    assert not (tmp_path / "state").exists(), "the agent did something before refusing"


def test_private_secret_check_names_owner_and_mode(tmp_path):
    path = tmp_path / "s"
    secret.write(path, secret.generate())
    secret.check_private(path, own=True)  # ours, 0600: accepted
    path.chmod(0o640)
    with pytest.raises(secret.SecretError, match="mode 0640"):
        secret.check_private(path)
    secret.check_private(tmp_path / "absent")  # left to load(), which names the fix
