"""SSH trust derived from the cluster secret (``picluster.sshtrust``) and the MPI hostfile
(``picluster.hostfile``): derivation, file formats, idempotence, removal, rendering.
Real ``openssl`` and ``ssh-keygen``; the real-sshd test is tests/cluster/test_ssh_trust.py."""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from picluster import secret, sshtrust
from picluster.discovery import Member
from picluster.hostfile import lines
from picluster.records import NodeRecord, to_props

pytestmark = pytest.mark.skipif(
    not (shutil.which("ssh-keygen") and shutil.which("openssl")),
    reason="needs ssh-keygen and openssl (apt-get install openssh-client openssl)",
)

SECRET = bytes(range(32))
OTHER = bytes(range(1, 33))


def test_public_key_is_rfc8032s():
    """RFC 8032, section 7.1, test 1: the seed gives the published public key."""
    seed = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
    public = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
    assert sshtrust.public_from_seed(seed).hex() == public


def test_derivation_is_deterministic_and_distinct():
    a, again, b = (sshtrust.ClusterSsh.derive(s) for s in (SECRET, SECRET, OTHER))
    assert a == again
    assert a.ca.public != a.user.public
    assert {a.ca.public, a.user.public}.isdisjoint({b.ca.public, b.user.public})
    assert a.ca.private_openssh("x") == again.ca.private_openssh("x")  # byte for byte
    labels = [v for k, v in vars(secret).items() if k.startswith("LABEL_")]
    assert len(labels) == len(set(labels)), "two derivations share an HKDF label"


def test_no_key_material_in_repr():
    keys = sshtrust.ClusterSsh.derive(SECRET)
    assert keys.ca.seed.hex() not in repr(keys) and str(keys.ca.seed) not in repr(keys)


def test_openssh_reads_the_private_key_file(tmp_path):
    key = sshtrust.ClusterSsh.derive(SECRET).user
    path = tmp_path / "id"
    path.write_bytes(key.private_openssh("me"))
    path.chmod(0o600)
    out = subprocess.run(["ssh-keygen", "-y", "-f", path], capture_output=True, text=True)
    assert out.stdout.split()[:2] == key.public_line("me").split()[:2], out.stderr
    listed = subprocess.run(["ssh-keygen", "-l", "-f", path], capture_output=True, text=True)
    assert key.fingerprint() in listed.stdout


def test_certificate_fields_are_read_back():
    keys = sshtrust.ClusterSsh.derive(SECRET)
    line = keys.user.public_line("u")
    cert = sshtrust.sign(keys.ca, line, key_id="t", principals=["a", "a.local"], host=True)
    read = sshtrust.read_certificate(cert)
    assert read == sshtrust.Certificate(keys.user.public, ("a", "a.local"), keys.ca.blob(), True)
    assert sshtrust.read_certificate(line) is None
    assert sshtrust.read_certificate("ssh-ed25519-cert-v01@openssh.com AAAA") is None


def test_known_hosts_keeps_other_lines():
    mine = f"@cert-authority *.local ssh-ed25519 AAAA {sshtrust.KNOWN_HOSTS_MARK}"
    other = "nas.lan ssh-ed25519 BBBB"
    text = sshtrust.known_hosts(
        f"{other}\n@cert-authority *.local x {sshtrust.KNOWN_HOSTS_MARK}\n", mine
    )
    assert text == f"{other}\n{mine}\n"
    assert sshtrust.known_hosts(text, None) == f"{other}\n"


@pytest.fixture
def node(tmp_path):
    """A root with a host key, and the user running the test as the first user."""
    layout = sshtrust.Layout(tmp_path)
    layout.host_key.parent.mkdir(parents=True)
    key = layout.host_key.with_suffix("")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key], check=True)
    layout.known_hosts.write_text("nas.lan ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA\n")
    return layout, pwd.getpwuid(os.geteuid())


def _tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_apply_writes_the_trust_once_and_signs_again_only_for_a_new_name(
    node, tmp_path_factory, monkeypatch
):
    layout, user = node
    scratch = tmp_path_factory.mktemp("run")  # where the CA key exists while signing
    monkeypatch.setattr(sshtrust, "_private_tmp", lambda: str(scratch))
    first = sshtrust.apply(SECRET, "engine-1", user, layout)
    assert first.sshd_changed
    key = layout.user_key(user)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    cert = sshtrust.read_certificate(layout.host_cert.read_text())
    assert cert is not None and cert.host and cert.principals == ("engine-1", "engine-1.local")
    user_cert = sshtrust.read_certificate(Path(f"{key}-cert.pub").read_text())
    assert user_cert is not None and user_cert.principals == (user.pw_name,)
    assert (layout.principals_dir / user.pw_name).read_text() == f"{user.pw_name}\n"
    assert "nas.lan" in layout.known_hosts.read_text()
    assert f"HostCertificate {layout.host_cert}" in layout.sshd_dropin.read_text()
    resolved = subprocess.run(
        ["ssh", "-G", "-F", layout.ssh_dropin, "engine-2.local"], capture_output=True, text=True
    ).stdout.splitlines()
    identities = [ln.split(" ", 1)[1] for ln in resolved if ln.startswith("identityfile ")]
    assert identities[0] == str(key) and "~/.ssh/id_ed25519" in identities, identities
    elsewhere = subprocess.run(
        ["ssh", "-G", "-F", layout.ssh_dropin, "example.org"], capture_output=True, text=True
    )
    assert str(key) not in elsewhere.stdout, "the cluster key is offered outside *.local"
    assert list(scratch.iterdir()) == [], "the CA key was left on disk"

    before = _tree(layout.root)
    again = sshtrust.apply(SECRET, "engine-1", user, layout)
    assert not again.sshd_changed and _tree(layout.root) == before, "a second boot changed files"

    renamed = sshtrust.apply(SECRET, "engine-7", user, layout)
    assert renamed.sshd_changed
    cert = sshtrust.read_certificate(layout.host_cert.read_text())
    assert cert is not None and cert.principals == ("engine-7", "engine-7.local")


def test_remove_leaves_nothing_of_ours(node):
    layout, user = node
    untouched = _tree(layout.root)
    sshtrust.apply(SECRET, "engine-1", user, layout)
    out = sshtrust.remove(user, layout)
    assert out.sshd_changed
    assert _tree(layout.root) == untouched
    assert sshtrust.remove(user, layout).said == []  # nothing left to remove


def test_cli_follows_the_switch(node, tmp_path, capsys, monkeypatch):
    from picluster import users
    from picluster.cli import main

    layout, user = node
    # The first user is whoever runs the test (root in CI, which [jupyter] user refuses).
    monkeypatch.setattr(users, "jupyter_user", lambda layered: user)
    (tmp_path / "secret").write_text(secret.encode(SECRET))
    conf = tmp_path / "cluster.toml"
    conf.write_text("")
    args = ["ssh-trust", "--root", str(layout.root), "--config", str(conf)]
    args += ["--secret", str(tmp_path / "secret")]
    assert main(args) == 0
    assert layout.sshd_dropin.exists() and layout.user_key(user).exists()
    assert SECRET.hex() not in capsys.readouterr().out
    conf.write_text("[ssh]\ncluster_login = false\n")
    assert main(args) == 0
    assert "removed" in capsys.readouterr().out
    assert not layout.sshd_dropin.exists() and not layout.user_key(user).exists()
    assert not layout.trust_dir.exists()


# -- picluster hostfile ------------------------------------------------------------------


def _member(host: str, role: str, engines: int, cores: int, verified: bool = True) -> Member:
    rec = NodeRecord(host, role, "lab", engines, engines, "running", "fp", "1", cores=cores)
    return Member(rec, f"10.0.0.{len(host)}", verified)


MEMBERS = [
    _member("engine-10", "engine", 4, 4),
    _member("engine-2", "engine", 2, 4),
    _member("controller", "controller", 1, 4),
    _member("spare", "engine", 0, 4),
    _member("stranger", "engine", 4, 4, verified=False),
]


def test_hostfile_lists_engine_hosts_controller_first_with_their_cores():
    assert lines(MEMBERS) == [
        "controller.local slots=4",
        "engine-2.local slots=4",
        "engine-10.local slots=4",
    ]


def test_hostfile_slots_by_engines_and_addresses():
    assert lines(MEMBERS, slots="engines", address=True) == [
        "10.0.0.10 slots=1",
        "10.0.0.8 slots=2",
        "10.0.0.9 slots=4",
    ]


def test_hostfile_without_cores_from_an_older_agent_uses_engines():
    assert lines([_member("old", "engine", 3, 0)]) == ["old.local slots=3"]


def test_node_record_carries_cores():
    rec = NodeRecord("e", "engine", "lab", 2, 2, "running", "fp", "1", cores=4)
    assert NodeRecord.decode(to_props(rec)).cores == 4
    props = to_props(rec)
    del props[b"cores"]
    assert NodeRecord.decode(props).cores == 0


# -- the switch in the card manifest -------------------------------------------------------


def test_the_manifest_turns_cluster_ssh_off_in_the_card_layer():
    from picluster.cards.manifest import node_overrides, parse
    from picluster.cards.seeds import card_layer

    base = 'ssh_keys = ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA x"]\nengines = 1\n'
    assert "ssh" not in node_overrides(parse(base))  # unset: the image's setting applies
    off = parse("cluster_ssh = false\n" + base)
    assert node_overrides(off)["ssh"] == {"cluster_login": False}
    assert "[ssh]\ncluster_login = false" in card_layer(off)
