"""Seed generation: content, uniqueness, lint-cleanliness, and that secrets stay out of output."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import yaml

from picluster import config, secret
from picluster.cards import cli as cards_cli
from picluster.cards import lint, manifest, seeds
from picluster.cli import main

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOnULl1FkcLuvLSZ1evLue8pNkcyzyzdRhIH/N5Lodkr me@laptop"
WIFI_PASSWORD = "correct horse battery"


def loaded(text: str, tmp_path=None) -> manifest.Loaded:
    m = manifest.parse(f'cluster = "lab"\nssh_keys = ["{KEY}"]\n' + text, "m.toml")
    return manifest.Loaded(m, (tmp_path or Path()) / "m.toml", [KEY])


FULL = f"""
user = "alice"
timezone = "Europe/London"
locale = "en_GB.UTF-8"
keyboard = "gb"
base_port = 48000
discovery = "static"
[wifi]
ssid = "lab-wifi"
password = "{WIFI_PASSWORD}"
country = "GB"
[[card]]
hostname = "controller"
address = "192.168.1.10/24"
gateway = "192.168.1.1"
[[card]]
hostname = "engine-1"
mac = "dc:a6:32:01:02:03"
[[card]]
hostname = "engine-2"
"""


def by_host(items: list[seeds.Seed]) -> dict[str, seeds.Seed]:
    return {s.hostname: s for s in items}


def user_data(seed: seeds.Seed) -> dict:
    text = seed.files["user-data"]
    assert text.startswith("#cloud-config\n")
    return yaml.safe_load(text)


def written(data: dict) -> dict[str, dict]:
    return {f["path"]: f for f in data["write_files"]}


def test_user_data_contents():
    value = secret.generate()
    seed = by_host(seeds.render(loaded("engines = 2\n"), value))["engine-1"]
    data = user_data(seed)
    assert data["hostname"] == "engine-1" and data["fqdn"] == "engine-1.local"
    assert data["preserve_hostname"] is False and data["manage_etc_hosts"] is True
    assert data["ssh_pwauth"] is False
    # No user named: the image's own first user (cloud-init's default user) gets the keys.
    assert data["users"] == ["default"]
    assert data["ssh_authorized_keys"] == [KEY]
    assert not {"packages", "package_update", "package_upgrade", "apt", "runcmd"} & set(data)
    files = written(data)
    sec = files["/etc/picluster/secret"]
    assert sec["permissions"] == "0600" and sec["owner"] == "root:root"
    assert secret.parse(sec["content"]) == value
    # The card's layer over the image's cluster.toml: only what the manifest sets.
    cfg = files[seeds.CONFIG_DROPIN]
    assert seeds.CONFIG_DROPIN == "/etc/picluster/cluster.toml.d/50-card.toml"
    assert cfg["permissions"] == "0644"
    assert config.overrides(config.parse(cfg["content"])) == {"cluster": {"name": "lab"}}
    assert seeds.CONFIG_PATH not in files, "the image's own cluster.toml is never replaced"


def test_cards_keep_the_image_secret_unless_the_manifest_names_one():
    data = user_data(seeds.render(loaded("engines = 1\n"), None)[0])
    assert list(written(data)) == [seeds.CONFIG_DROPIN]


def test_meta_data_and_role():
    seed = by_host(seeds.render(loaded("engines = 1\n"), secret.generate()))["controller"]
    meta = yaml.safe_load(seed.files["meta-data"])
    assert meta["local-hostname"] == "controller"
    assert meta["instance-id"] == seed.instance_id
    assert seed.instance_id.startswith("picluster-lab-controller-")
    assert seed.role == "controller"


def test_instance_ids_unique_per_card_and_per_run():
    spec = loaded("engines = 8\n")
    first = [s.instance_id for s in seeds.render(spec, secret.generate())]
    second = [s.instance_id for s in seeds.render(spec, secret.generate())]
    assert len(set(first)) == 9
    assert not set(first) & set(second)


def test_a_named_user_is_created_and_runs_jupyter():
    items = by_host(seeds.render(loaded(FULL), secret.generate()))
    data = user_data(items["engine-2"])
    (user,) = data["users"]
    assert user["name"] == "alice" and user["lock_passwd"] is True
    assert user["ssh_authorized_keys"] == [KEY]
    assert "sudo" in user["groups"].split(", ")
    assert not {"passwd", "hashed_passwd", "plain_text_passwd"} & set(user)
    files = written(data)
    cfg = config.parse(files[seeds.CONFIG_DROPIN]["content"])
    assert cfg.jupyter.user == "alice"
    assert cfg.cluster.base_port == 48000
    # discovery = static: the controller's address goes to every card, no mDNS.
    assert cfg.cluster.controller == "192.168.1.10"
    assert data["timezone"] == "Europe/London" and data["locale"] == "en_GB.UTF-8"
    assert data["keyboard"] == {"layout": "gb"}


def test_network_config_static_mac_and_wifi():
    items = by_host(seeds.render(loaded(FULL), secret.generate()))
    net = yaml.safe_load(items["controller"].files["network-config"])["network"]
    assert net["version"] == 2
    wired = net["ethernets"]["eth0"]
    assert "match" not in wired, "a name glob breaks cloud-init's networkd renderer"
    assert wired["addresses"] == ["192.168.1.10/24"] and wired["dhcp4"] is False
    assert wired["routes"] == [{"to": "default", "via": "192.168.1.1"}]
    assert wired["nameservers"] == {"addresses": ["192.168.1.1"]}
    wlan = net["wifis"]["wlan0"]
    assert wlan["regulatory-domain"] == "GB"
    assert wlan["access-points"]["lab-wifi"]["password"] == seeds.wpa_psk("lab-wifi", WIFI_PASSWORD)
    e1 = yaml.safe_load(items["engine-1"].files["network-config"])["network"]
    assert e1["ethernets"]["eth0"]["match"] == {"macaddress": "dc:a6:32:01:02:03"}
    assert e1["ethernets"]["eth0"]["set-name"] == "eth0"
    assert e1["ethernets"]["eth0"]["dhcp4"] is True


def test_wpa_psk_matches_ieee_802_11i_test_vector():
    assert seeds.wpa_psk("IEEE", "password") == (
        "f42c6fc52df0ebef9ebb4b90b38a5f902e83fe1b135a70e23aed762e9710a12e"
    )


@pytest.mark.parametrize("spec", ["engines = 3\n", FULL, "engines = 0\n"])
def test_generated_seeds_lint_clean(tmp_path, spec):
    for seed in seeds.render(loaded(spec), secret.generate()):
        seed.write(tmp_path / seed.hostname)
        findings = lint.lint_dir(tmp_path / seed.hostname)
        assert [f for f in findings if f.severity != lint.Severity.INFO] == []
        roles = [f for f in findings if f.rule == "role"]
        assert len(roles) == 1 and roles[0].message.startswith(str(seed.role))


def test_seed_files_modes(tmp_path):
    seed = seeds.render(loaded(FULL), secret.generate())[0]
    seed.write(tmp_path)
    assert stat.S_IMODE((tmp_path / "user-data").stat().st_mode) == 0o600
    # The Wi-Fi PSK is enough to join the network.
    assert "password" in (tmp_path / "network-config").read_text()
    assert stat.S_IMODE((tmp_path / "network-config").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "meta-data").stat().st_mode) == 0o644


def write_manifest(tmp_path, extra: str) -> Path:
    path = tmp_path / "m.toml"
    path.write_text(f'cluster = "lab"\nssh_keys = ["{KEY}"]\n' + extra)
    return path


def test_cards_command_never_prints_secrets(tmp_path, capsys):
    path = write_manifest(tmp_path, FULL.replace('user = "alice"\n', 'secret = "generate"\n'))
    out = tmp_path / "cards"
    assert main(["cards", str(path), "--out", str(out), "-v"]) == 0
    printed = capsys.readouterr()
    value = secret.load(tmp_path / "lab.secret")
    for text in (printed.out, printed.err):
        assert value.hex() not in text
        assert WIFI_PASSWORD not in text
        assert "controller" in printed.out
    assert stat.S_IMODE((tmp_path / "lab.secret").stat().st_mode) == 0o600
    for card in ("controller", "engine-1", "engine-2"):
        assert value.hex() in (out / card / "user-data").read_text()
        for name in seeds.SEED_FILES:
            assert WIFI_PASSWORD not in (out / card / name).read_text()


def test_generated_secret_is_reused_on_rerun(tmp_path, capsys):
    path = write_manifest(tmp_path, 'engines = 1\nsecret = "generate"\n')
    out = tmp_path / "cards"
    assert main(["cards", str(path), "--out", str(out)]) == 0
    first = secret.load(tmp_path / "lab.secret")
    assert main(["cards", str(path), "--out", str(out)]) == 0
    assert "reusing" in capsys.readouterr().out
    assert secret.load(tmp_path / "lab.secret") == first
    data = yaml.safe_load((out / "engine-1" / "user-data").read_text())
    assert secret.parse(written(data)[seeds.SECRET_PATH]["content"]) == first


@pytest.mark.parametrize(
    ("mode", "owner", "expected"),
    [(0o644, None, "chmod 600"), (0o640, None, "chmod 600"), (0o600, 65534, "owned by uid 65534")],
)
def test_generate_refuses_a_secret_file_others_could_have_planted(
    tmp_path, capsys, mode, owner, expected
):
    """A file beside the output that another user owns or could read is not reused."""
    path = write_manifest(tmp_path, 'engines = 1\nsecret = "generate"\n')
    planted = tmp_path / "lab.secret"
    planted.write_text("00" * 32 + "\n")
    planted.chmod(mode)
    if owner is not None:
        if os.geteuid() != 0:
            pytest.skip("chown needs root")
        os.chown(planted, owner, -1)
    out = tmp_path / "cards"
    assert main(["cards", str(path), "--out", str(out)]) == 78
    err = capsys.readouterr().err
    assert str(planted) in err and expected in err, err
    assert not out.exists(), "no card may be written with a secret that was not ours"


def test_secret_from_build_file(tmp_path):
    value = secret.generate()
    secret.write(tmp_path / "deploy" / "img.secret", value)
    path = write_manifest(tmp_path, 'engines = 1\nsecret = "deploy/img.secret"\n')
    assert main(["cards", str(path), "--out", str(tmp_path / "c")]) == 0
    data = yaml.safe_load((tmp_path / "c" / "controller" / "user-data").read_text())
    assert secret.parse(written(data)[seeds.SECRET_PATH]["content"]) == value


def test_cards_command_says_the_cards_keep_the_image_secret(tmp_path, capsys):
    path = write_manifest(tmp_path, "engines = 1\n")
    assert main(["cards", str(path), "--out", str(tmp_path / "c")]) == 0
    assert "secret: the image's own" in capsys.readouterr().out
    assert not list(tmp_path.glob("*.secret")), "no second secret is made"
    data = yaml.safe_load((tmp_path / "c" / "controller" / "user-data").read_text())
    assert seeds.SECRET_PATH not in written(data)


def test_cards_command_reports_manifest_errors(tmp_path, capsys):
    path = write_manifest(tmp_path, 'engines = 1\nsecret = "missing.secret"\n')
    assert main(["cards", str(path), "--out", str(tmp_path / "c")]) == cards_cli.EX_CONFIG
    assert "missing.secret: no cluster secret" in capsys.readouterr().err
    path.write_text('cluster = "Lab"\n')
    assert main(["cards", str(path), "--out", str(tmp_path / "c")]) == cards_cli.EX_CONFIG
    err = capsys.readouterr().err
    assert f"{path}: cluster: must be a DNS label" in err
