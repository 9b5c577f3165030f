"""Every lint rule, each with a failing example, and the ``lint`` command's exit codes."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pytest

from picluster import secret
from picluster.cards import lint, manifest, seeds
from picluster.cli import main

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOnULl1FkcLuvLSZ1evLue8pNkcyzyzdRhIH/N5Lodkr me@laptop"


@pytest.fixture
def seed(tmp_path) -> Path:
    """A good seed folder for engine-1, as ``picluster cards`` writes it."""
    m = manifest.parse(
        f'cluster = "lab"\nssh_keys = ["{KEY}"]\nuser = "pi"\nengines = 1\n'
        '[wifi]\nssid = "w"\npassword = "12345678"\ncountry = "GB"\n',
        "m.toml",
    )
    items = seeds.render(manifest.Loaded(m, tmp_path / "m.toml", [KEY]), secret.generate())
    card = next(s for s in items if s.hostname == "engine-1")
    card.write(tmp_path / "engine-1")
    return tmp_path / "engine-1"


def edit(seed: Path, name: str, old: str, new: str) -> None:
    path = seed / name
    text = path.read_text()
    assert old in text, f"{old!r} not in {name}"
    path.write_text(text.replace(old, new, 1))
    path.chmod(0o600)


def problems(seed: Path, rule: str) -> list[lint.Finding]:
    return [f for f in lint.lint_dir(seed) if f.rule == rule and f.severity != lint.Severity.INFO]


def line_of(seed: Path, name: str, needle: str) -> int:
    for number, line in enumerate((seed / name).read_text().splitlines(), 1):
        if needle in line:
            return number
    raise AssertionError(needle)


def only(seed: Path, rule: str) -> lint.Finding:
    found = problems(seed, rule)
    assert len(found) == 1, found
    return found[0]


def test_good_seed_is_clean(seed):
    findings = lint.lint_dir(seed)
    assert [f for f in findings if f.severity != lint.Severity.INFO] == []


RULE_IDS = {
    "apt",
    "cmdline",
    "config",
    "encoding",
    "header",
    "hostname",
    "instance-id",
    "missing-file",
    "network",
    "no-effect",
    "packages",
    "password",
    "role",
    "runcmd",
    "schema",
    "secret",
    "secret-mode",
    "ssh-key",
    "tabs",
    "user",
    "wifi-country",
    "yaml",
}


def write_seed(directory: Path, files: Mapping[str, str | bytes]) -> Path:
    """A seed folder holding ``files``, each with mode 0644 as an editor leaves it."""
    directory.mkdir()
    for name, content in files.items():
        path = directory / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
        path.chmod(0o644)
    return directory


def test_rule_ids_are_stable():
    assert {rule.id for rule in lint.RULES} == RULE_IDS


@pytest.mark.parametrize(
    "rule", lint.RULES, ids=[f"{n:02}-{rule.id}" for n, rule in enumerate(lint.RULES)]
)
def test_each_rule_fires_on_its_example_and_not_on_a_good_seed(seed, tmp_path, rule):
    if rule.id == "schema" and not lint.schema_available():
        pytest.skip("cloudinit module not importable (apt install cloud-init)")
    example = write_seed(tmp_path / "example", rule.example)
    found = rule.run(example)
    assert found, f"{rule.id} ({rule.message!r}) does not fire on its example"
    assert {(f.rule, f.level) for f in found} == {(rule.id, rule.level)}
    assert set(found) <= set(lint.lint_dir(example))
    if rule.level is not lint.Severity.INFO:
        assert rule.run(seed) == []


def test_header_missing(seed):
    edit(seed, "user-data", "#cloud-config\n", "# cloud-config\n")
    f = only(seed, "header")
    assert (f.file.name, f.line, f.severity) == ("user-data", 1, "error")
    assert "#cloud-config" in f.message and "Fix:" in f.message


def test_tabs(seed):
    edit(seed, "user-data", "ssh_pwauth: false", "ssh_pwauth:\tfalse")
    f = only(seed, "tabs")
    assert f.line == line_of(seed, "user-data", "ssh_pwauth") and f.severity == "error"
    assert str(f).startswith(f"{seed}/user-data:{f.line}: error: tab character")


def test_yaml_parse_error_has_line(seed):
    edit(seed, "user-data", "manage_etc_hosts: true", "manage_etc_hosts: [true")
    f = only(seed, "yaml")
    assert f.line >= line_of(seed, "user-data", "manage_etc_hosts")
    assert "YAML does not parse" in f.message


def test_yaml_error_in_meta_data(seed):
    edit(seed, "meta-data", "local-hostname:", "local-hostname: : :")
    f = only(seed, "yaml")
    assert f.file.name == "meta-data" and f.line == 2


def test_instance_id_with_underscore(seed):
    edit(seed, "meta-data", "instance-id:", "instance_id:")
    f = only(seed, "instance-id")
    assert (f.file.name, f.line) == ("meta-data", 1)
    assert "'instance_id' (underscore)" in f.message


def test_instance_id_missing(seed):
    (seed / "meta-data").write_text("local-hostname: engine-1\n")
    assert "no instance-id" in only(seed, "instance-id").message


def test_missing_files(seed):
    (seed / "meta-data").unlink()
    (seed / "user-data").unlink()
    found = problems(seed, "missing-file")
    assert {f.file.name for f in found} == {"meta-data", "user-data"}


@pytest.mark.parametrize(
    "key", ["packages:\n- htop\n", "package_update: true\n", "packages: [avahi-daemon, htop]\n"]
)
def test_network_install_warning(seed, key):
    (seed / "user-data").write_text((seed / "user-data").read_text() + key)
    f = only(seed, "no-effect")
    assert f.severity == "warning" and "network at first boot" in f.message
    assert f.line == line_of(seed, "user-data", key.split(":")[0] + ":")


def test_packages_already_in_the_image_are_info(seed):
    (seed / "user-data").write_text(
        (seed / "user-data").read_text() + "packages:\n- avahi-daemon\n"
    )
    assert problems(seed, "no-effect") == []
    (info,) = [f for f in lint.lint_dir(seed) if f.rule == "packages"]
    assert info.line == line_of(seed, "user-data", "packages:")
    assert "avahi-daemon is already in the picluster image" in info.message
    assert "'apt-get update'" in info.message and "Internet" in info.message


def test_apt_conf_that_keeps_the_sources_is_info(seed):
    apt = 'apt:\n  preserve_sources_list: true\n  conf: |\n    Acquire { Check-Date "false"; };\n'
    (seed / "user-data").write_text((seed / "user-data").read_text() + apt)
    assert problems(seed, "no-effect") == []
    (info,) = [f for f in lint.lint_dir(seed) if f.rule == "apt"]
    assert "Check-Date" in info.message and "sources stay as built" in info.message
    # Without preserve_sources_list: true cloud-init rewrites sources.list: still a warning.
    edit(seed, "user-data", "preserve_sources_list: true", "preserve_sources_list: false")
    assert only(seed, "no-effect").message.startswith("'apt':")


def test_apt_and_snap_do_nothing(seed):
    extra = "apt:\n  primary:\n  - arches: [default]\n    uri: http://x\nsnap:\n  commands: []\n"
    (seed / "user-data").write_text((seed / "user-data").read_text() + extra)
    found = problems(seed, "no-effect")
    assert [f.message.split(":")[0] for f in found] == ["'apt'", "'snap'"]


def test_invalid_hostname(seed):
    edit(seed, "user-data", "hostname: engine-1", "hostname: Engine_1")
    edit(seed, "meta-data", "local-hostname: engine-1", "local-hostname: Engine_1")
    found = problems(seed, "hostname")
    assert {f.file.name for f in found} == {"user-data", "meta-data"}
    assert all("RFC 1123" in f.message for f in found)


def test_unassigned_hostname_names_itself(seed):
    edit(seed, "user-data", "hostname: engine-1", "hostname: raspberrypi")
    assert not problems(seed, "role")
    (info,) = [f for f in lint.lint_dir(seed) if f.rule == "role"]
    assert info.message.startswith("engine: 'raspberrypi' matches 'raspberrypi'")
    assert "names itself engine-<last 6 hex digits of its board serial>" in info.message


def test_unassigned_hostname_without_self_name_joins_nothing(seed):
    edit(seed, "user-data", "hostname: engine-1", "hostname: raspberrypi")
    edit(seed, "user-data", 'name = "lab"', 'name = "lab"\n    [roles]\n    self_name = ""')
    f = only(seed, "role")
    assert f.severity == "error" and "joins no cluster" in f.message


def test_role_is_reported_as_info(seed):
    (info,) = [f for f in lint.lint_dir(seed) if f.rule == "role"]
    assert info.severity == "info" and info.message.startswith("engine: 'engine-1' matches '*'")


def test_hostname_mismatch(seed):
    edit(seed, "meta-data", "local-hostname: engine-1", "local-hostname: engine-2")
    assert "differs from meta-data" in only(seed, "hostname").message


def test_no_hostname(seed):
    edit(seed, "user-data", "hostname: engine-1\n", "")
    (seed / "meta-data").write_text("instance-id: x\n")
    assert "keeps the image's name" in only(seed, "hostname").message


def test_secret_wrong_length(seed):
    text = (seed / "user-data").read_text()
    hexed = next(line.strip() for line in text.splitlines() if len(line.strip()) == 64)
    edit(seed, "user-data", hexed, hexed[:40])
    f = only(seed, "secret")
    assert "expected 64 hex digits" in f.message and f.line == line_of(seed, "user-data", "content")


def test_secret_mode_not_0600(seed):
    edit(seed, "user-data", "permissions: '0600'", "permissions: '0644'")
    f = only(seed, "secret-mode")
    assert f.line == line_of(seed, "user-data", "permissions: '0644'")
    assert "permissions: '0600'" in f.message


def test_secret_owner_not_root(seed):
    edit(seed, "user-data", "owner: root:root", "owner: pi:pi")
    assert "owned by root" in only(seed, "secret-mode").message


def test_seed_file_readable_by_others_on_host(seed):
    (seed / "user-data").chmod(0o644)
    f = only(seed, "secret-mode")
    assert f.severity == "warning" and "chmod 600" in f.message


def test_ssh_password_auth_is_a_warning(seed):
    # Imager writes it for "use password authentication": a choice, not a broken card.
    edit(seed, "user-data", "ssh_pwauth: false", "ssh_pwauth: true")
    f = only(seed, "password")
    assert f.line == line_of(seed, "user-data", "ssh_pwauth") and f.severity == "warning"
    assert "public-key authentication only" in f.message


@pytest.mark.parametrize(
    ("key", "why"),
    [
        ("passwd", "not a crypt hash"),
        ("plain_text_passwd", "in clear text"),
        ("hashed_passwd", "not a crypt hash"),
    ],
)
def test_user_password(seed, key, why):
    edit(seed, "user-data", "  lock_passwd: true", f"  {key}: secret\n  lock_passwd: true")
    f = only(seed, "password")
    assert f"users: '{key}' sets a password" in f.message and why in f.message
    assert f.severity == "error"


HASH = "$y$j9T$0123456789abcdef$0123456789abcdef0123456789abcdef01234567"


@pytest.mark.parametrize("holder", ["users", "user"])
def test_password_hash_is_info_not_error(seed, holder):
    if holder == "user":
        edit(seed, "user-data", "users:\n- name: pi", "user:\n  name: pi")
    edit(seed, "user-data", "lock_passwd: true", f"lock_passwd: false\n  passwd: '{HASH}'")
    assert problems(seed, "password") == []  # neither the hash nor lock_passwd: false
    (info,) = [f for f in lint.lint_dir(seed) if f.rule == "password"]
    assert info.severity == "info" and info.line == line_of(seed, "user-data", "  passwd:")
    assert info.message.startswith(f"{holder}: 'passwd' is a password hash for 'pi'")


def test_plain_password_under_singular_user_is_an_error(seed):
    edit(seed, "user-data", "users:\n- name: pi", "user:\n  name: pi")
    edit(seed, "user-data", "lock_passwd: true", "plain_text_passwd: raspberry")
    f = only(seed, "password")
    assert f.message.startswith("user: 'plain_text_passwd' sets a password in clear text")


def test_bad_key_under_singular_user(seed):
    edit(seed, "user-data", "users:\n- name: pi", "user:\n  name: pi")
    edit(seed, "user-data", KEY, "ssh-rsa")
    assert "the key itself is missing" in only(seed, "ssh-key").message


def test_chpasswd(seed):
    (seed / "user-data").write_text(
        (seed / "user-data").read_text() + "chpasswd:\n  users:\n  - {name: pi, password: x}\n"
    )
    assert "'chpasswd' sets a password" in only(seed, "password").message


def test_lock_passwd_false(seed):
    edit(seed, "user-data", "lock_passwd: true", "lock_passwd: false")
    assert only(seed, "password").severity == "warning"


def test_cluster_toml_errors_are_reported(seed):
    edit(seed, "user-data", 'name = "lab"', 'nmae = "lab"')
    f = only(seed, "config")
    assert "did you mean 'name'?" in f.message


def test_network_config_version(seed):
    (seed / "network-config").write_text("network:\n  version: 3\n")
    assert "version: 2" in only(seed, "network").message


def test_wifi_without_country(seed):
    path = seed / "network-config"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(ln for ln in lines if "regulatory-domain" not in ln))
    f = only(seed, "wifi-country")
    assert f.severity == "warning" and f.line == line_of(seed, "network-config", "wlan0")


def test_cloudinit_schema_when_available(seed):
    if not lint.schema_available():
        pytest.skip("cloudinit module not importable (apt install cloud-init)")
    (seed / "user-data").write_text((seed / "user-data").read_text() + "bogus_key: 1\n")
    f = only(seed, "schema")
    assert "bogus_key" in f.message and f.line == line_of(seed, "user-data", "bogus_key")


def test_seed_dirs_finds_card_folders(tmp_path, seed):
    assert lint.seed_dirs(seed) == [seed]
    assert lint.seed_dirs(seed.parent) == [seed]


def test_lint_command_exit_codes(seed, capsys):
    assert main(["lint", str(seed)]) == 0
    (seed / "user-data").write_text((seed / "user-data").read_text() + "package_update: true\n")
    assert main(["lint", str(seed)]) == 0
    assert main(["lint", "--strict", str(seed)]) == 1
    edit(seed, "meta-data", "instance-id:", "instance_id:")
    assert main(["lint", str(seed.parent)]) == 1
    out = capsys.readouterr().out
    assert f"{seed}/meta-data:1: error: 'instance_id' (underscore)" in out.replace("\n", "")
    assert main(["lint", str(seed / "nope")]) == 78


def test_lint_never_prints_the_secret(seed, capsys):
    text = (seed / "user-data").read_text()
    hexed = next(line.strip() for line in text.splitlines() if len(line.strip()) == 64)
    edit(seed, "user-data", hexed, hexed[:-2])
    main(["lint", "-v", str(seed)])
    printed = capsys.readouterr()
    assert hexed[:-2] not in printed.out + printed.err


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        ("ssh-ed25519 AAAA...replace-with-your-public-key you@laptop", "not base64"),
        ("ssh-rsa", "bare 'ssh-rsa'"),
        ("ssh-rsa " + KEY.split()[1], "not a ssh-rsa key"),
    ],
)
def test_ssh_key_that_can_never_log_in(seed, bad, why):
    edit(seed, "user-data", KEY, bad)
    f = only(seed, "ssh-key")
    assert f.line == line_of(seed, "user-data", bad.split()[-1]) and f.severity == "error"
    assert why in f.message and "Fix:" in f.message


@pytest.mark.parametrize(
    ("entry", "why"),
    [
        ("ssh-ed25519 AAAA...replace-with-your-public-key", "not base64"),
        ("ssh-rsa", "the key itself is missing"),
        (KEY + "\nssh-rsa AAAAB3NzaC1yc2E", "line break"),
        ("ssh-rsa " + KEY.split()[1], "names another type"),
    ],
)
def test_cards_refuses_a_key_that_can_never_log_in(entry, why):
    with pytest.raises(manifest.ManifestError, match=r"ssh_keys\[0\]: the key .*" + why):
        manifest.read_ssh_keys([entry], Path(), "m.toml")
