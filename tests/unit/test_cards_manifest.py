"""The cluster manifest: validation and the messages a user sees."""

from __future__ import annotations

from pathlib import Path

import pytest

from picluster.cards import manifest

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOnULl1FkcLuvLSZ1evLue8pNkcyzyzdRhIH/N5Lodkr me@laptop"
BASE = f'cluster = "lab"\nssh_keys = ["{KEY}"]\n'


def parse(text: str) -> manifest.Manifest:
    return manifest.parse(text, "m.toml")


def error(text: str) -> str:
    with pytest.raises(manifest.ManifestError) as exc:
        parse(text)
    return str(exc.value)


def test_engines_count_expands_to_controller_and_engines():
    m = parse(BASE + "engines = 3\n")
    assert [c.hostname for c in m.cards()] == ["controller", "engine-1", "engine-2", "engine-3"]
    # Unset means the image's: its first user, its secret, its base port.
    assert m.user is None and m.secret == "" and m.base_port is None


def test_example_manifest_is_valid(tmp_path):
    example = Path(__file__).parents[2] / "examples" / "cluster-manifest.toml"
    pub = tmp_path / "id.pub"
    pub.write_text(KEY + "\n")
    text = example.read_text().replace("~/.ssh/id_ed25519.pub", str(pub))
    (tmp_path / "m.toml").write_text(text)
    loaded = manifest.load(tmp_path / "m.toml")
    assert loaded.ssh_keys == [KEY]
    assert len(loaded.manifest.cards()) == 5


def test_card_list_with_static_addresses():
    m = parse(
        BASE
        + '[[card]]\nhostname = "head"\naddress = "192.168.1.10/24"\ngateway = "192.168.1.1"\n'
        + '[[card]]\nhostname = "node-a"\nmac = "DC-A6-32-01-02-03"\n'
    )
    head, node = m.cards()
    assert head.address == "192.168.1.10/24" and node.mac == "dc:a6:32:01:02:03"
    assert manifest.node_overrides(m) == {"cluster": {"name": "lab"}}, (
        "mDNS stays on unless discovery = static; the image's user and port stay"
    )
    static = parse(
        BASE + 'discovery = "static"\n[[card]]\nhostname = "head"\naddress = "192.168.1.10/24"\n'
    )
    assert manifest.node_overrides(static)["cluster"]["controller"] == "192.168.1.10"
    named = parse(BASE + 'user = "alice"\nbase_port = 20000\nengines = 1\n')
    assert manifest.node_overrides(named) == {
        "cluster": {"name": "lab", "base_port": 20000},
        "jupyter": {"user": "alice"},
    }


def test_static_discovery_needs_the_controller_address():
    msg = error(BASE + 'discovery = "static"\nengines = 2\n')
    assert 'discovery = "static" needs the controller\'s address' in msg
    assert "address = " in msg


def test_unknown_key_suggests_the_right_one():
    msg = error('cluster = "lab"\nssh_key = ["x"]\nengines = 1\n')
    assert "m.toml: ssh_key: unknown key" in msg
    assert "did you mean 'ssh_keys'?" in msg


def test_unknown_key_in_card_names_the_card():
    msg = error(BASE + '[[card]]\nhostname = "controller"\n[[card]]\nhostname = "e1"\nip = "x"\n')
    assert "[[card]] #2 ip: unknown key" in msg
    assert "known keys: hostname, address" in msg


def test_missing_required_key_says_what_to_add():
    msg = error("engines = 2\n")
    assert "cluster" not in msg, "unset, the cluster is the image's"
    assert "ssh_keys: required key is missing" in msg


def test_engines_and_cards_are_exclusive():
    assert "not both" in error(BASE + 'engines = 2\n[[card]]\nhostname = "controller"\n')


def test_no_cards_at_all():
    assert "no cards: add engines = 4" in error(BASE)


def test_exactly_one_controller():
    assert "found none" in error(BASE + '[[card]]\nhostname = "engine-1"\n')
    two = BASE + '[[card]]\nhostname = "controller"\n[[card]]\nhostname = "head"\n'
    assert "found controller, head" in error(two)


def test_duplicate_hostnames():
    text = BASE + '[[card]]\nhostname = "controller"\n' + '[[card]]\nhostname = "e1"\n' * 2
    assert "hostname e1 appears twice" in error(text)


@pytest.mark.parametrize("name", ["Engine_1", "-a", "a" * 64, "engine.1"])
def test_invalid_hostname(name):
    msg = error(BASE + f'[[card]]\nhostname = "controller"\n[[card]]\nhostname = "{name}"\n')
    assert "[[card]] #2 hostname: must be 1-63 lower-case letters" in msg


def test_unassigned_hostname_is_refused():
    msg = error(BASE + '[[card]]\nhostname = "controller"\n[[card]]\nhostname = "raspberrypi"\n')
    assert "join no cluster" in msg


def test_gateway_outside_network():
    msg = error(
        BASE + '[[card]]\nhostname = "controller"\naddress = "10.0.0.5/24"\ngateway = "10.0.1.1"\n'
    )
    assert "gateway 10.0.1.1 is not inside 10.0.0.0/24" in msg


def test_address_needs_prefix():
    msg = error(BASE + '[[card]]\nhostname = "controller"\naddress = "10.0.0.5"\n')
    assert "needs a prefix length" in msg


def test_wifi_password_is_never_echoed():
    msg = error(BASE + 'engines = 1\n[wifi]\nssid = "x"\npassword = "short"\ncountry = "GB"\n')
    assert "[wifi] password" in msg and "short" not in msg


def test_wifi_country():
    msg = error(BASE + 'engines = 1\n[wifi]\nssid = "x"\npassword = "longenough"\ncountry = "uk"\n')
    assert "[wifi] country: must be a two-letter ISO 3166 country code" in msg


def test_user_root_refused():
    assert "user: must be a Linux user name" in error(BASE + 'engines = 1\nuser = "root"\n')


def test_base_port_range():
    msg = error(BASE + "engines = 1\nbase_port = 80\n")
    assert "base_port" in msg and "Fix: a port from 1024 to 65505" in msg


def test_toml_syntax_error():
    assert "m.toml: not valid TOML" in error('cluster = "lab\n')


def test_ssh_key_files(tmp_path):
    (tmp_path / "a.pub").write_text(f"# comment\n{KEY}\n\n")
    keys = manifest.read_ssh_keys(["a.pub", KEY], tmp_path, "m.toml")
    assert keys == [KEY, KEY]


def test_private_key_file_is_refused(tmp_path):
    (tmp_path / "id_ed25519").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    with pytest.raises(manifest.ManifestError, match=r"ssh_keys\[0\]: .*never the private key"):
        manifest.read_ssh_keys(["id_ed25519"], tmp_path, "m.toml")


def test_missing_key_file(tmp_path):
    with pytest.raises(manifest.ManifestError, match=r"cannot read .*nope.pub.*ssh-keygen"):
        manifest.read_ssh_keys(["nope.pub"], tmp_path, "m.toml")


def test_secret_path_is_relative_to_manifest(tmp_path):
    (tmp_path / "m.toml").write_text(BASE + 'engines = 1\nsecret = "deploy/x.secret"\n')
    loaded = manifest.load(tmp_path / "m.toml")
    assert loaded.secret_path() == (tmp_path / "deploy" / "x.secret").resolve()
