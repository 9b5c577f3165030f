"""./config read like pi-gen reads it, and the build's preflight messages."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from picluster.imagebuild import image, preflight, settings

REPO = Path(__file__).resolve().parents[2]


def test_repo_config_is_valid_and_safe():
    s = settings.load(REPO / "config")
    assert s.release == "trixie"
    assert s.first_user_pass == "", "the shipped config must not carry a password"
    # pi-gen refuses 1 without a baked key; the stage makes sshd key-only itself.
    assert s.pubkey_only_ssh == "0"
    assert s.disable_first_boot_user_rename == "0"
    assert s.secret_file == "", "never a secret in the repository"


def test_extra_fragment_and_environment_override(tmp_path, monkeypatch):
    extra = tmp_path / "extra"
    extra.write_text("IMG_NAME=lab\nPICLUSTER_CLUSTER_NAME=lab\n")
    monkeypatch.setenv("PICLUSTER_BASE_PORT", "12000")
    s = settings.load(REPO / "config", extra)
    assert (s.img_name, s.cluster_name, s.base_port) == ("lab", "lab", 12000)
    assert s.node_overrides() == {"cluster": {"name": "lab", "base_port": 12000}}


def test_node_settings_left_empty_keep_the_node_defaults():
    s = settings.load(REPO / "config")
    assert s.node_overrides() == {}, "config must not repeat a node default"
    assert settings.shell_exports(s)["PICLUSTER_BASE_PORT"] == ""


def test_pigen_is_pinned_to_the_arm64_release_tag():
    s = settings.load(REPO / "config")
    # 2026-06-18-raspios-trixie-arm64 on pi-gen's arm64 branch.
    assert (s.pigen_branch, s.pigen_commit) == ("arm64", "ca8aeed0ae300c2a89f55ce9617d5f96a27e99e5")
    assert re.fullmatch(r"[0-9a-f]{40}", s.pigen_commit), "pin a full commit, not a prefix or tag"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("PICLUSTER_BASEPORT=1\n", "unknown setting PICLUSTER_BASEPORT. Fix: did you mean "),
        ("FIRST_USER_PASS=raspberry\n", "FIRST_USER_PASS"),
        ("IMG_NAME='my image'\n", "IMG_NAME='my image'"),
        ("PICLUSTER_BASE=ubuntu\n", "PICLUSTER_BASE='ubuntu'"),
        (
            "PICLUSTER_ENGINES_PER_NODE=many\n",
            "PICLUSTER_ENGINES_PER_NODE='many': must be \"auto\"",
        ),
        ("PICLUSTER_BASE_PORT=80\n", "PICLUSTER_BASE_PORT='80': Input should be greater than"),
        ("PICLUSTER_CLUSTER_NAME=Lab\n", "PICLUSTER_CLUSTER_NAME='Lab': must be a DNS label"),
        ("IMG_NAME=\n", "IMG_NAME is not set. Fix: set IMG_NAME"),
        ("COMPRESSION_LEVEL=12\n", "COMPRESSION_LEVEL"),
        ("if then\n", "bash could not source it"),
        ('TIMEZONE_DEFAULT="Europe/London; reboot"\n', "not a time zone name"),
        ("LOCALE_DEFAULT='en_GB.UTF-8 $(id)'\n", "not a locale name"),
        ("KEYBOARD_KEYMAP='gb\nrm -rf /'\n", "not a keymap name"),
        ('TARGET_HOSTNAME="Not A Hostname!"\n', "must be a DNS label"),
        ("TARGET_HOSTNAME=node\n", "to name itself. Fix: TARGET_HOSTNAME=raspberrypi"),
        ("FIRST_USER_NAME=root\n", "FIRST_USER_NAME='root': must be a Linux user name"),
        ("DISABLE_FIRST_BOOT_USER_RENAME=1\n", "Fix: set DISABLE_FIRST_BOOT_USER_RENAME=0"),
        ("PUBKEY_ONLY_SSH=1\n", "Fix: set PUBKEY_ONLY_SSH=0"),
    ],
)
def test_bad_settings_name_file_variable_and_fix(tmp_path, text, expected):
    extra = tmp_path / "extra"
    extra.write_text(text)
    with pytest.raises(settings.SettingsError) as err:
        settings.load(REPO / "config", extra)
    message = str(err.value)
    assert expected in message
    assert str(extra) in message


def test_missing_extra_config_is_named(tmp_path):
    with pytest.raises(settings.SettingsError, match="no such config file"):
        settings.load(REPO / "config", tmp_path / "nope")


def test_shell_exports_use_pi_gen_names():
    env = settings.shell_exports(settings.load(REPO / "config"))
    assert env["FIRST_USER_NAME"] == "pi"
    assert env["PICLUSTER_CLUSTER_NAME"] == "", "unset: the node default applies"
    assert "first_user_name" not in env


def test_preflight_reports_a_path_with_spaces(tmp_path):
    spaced = tmp_path / "my work"
    spaced.mkdir()
    problems = [str(p) for p in preflight.check(REPO, spaced, need_free=0)]
    assert any("path with a space" in p and "Fix:" in p for p in problems)


def test_preflight_reports_too_little_disk(tmp_path):
    problems = [str(p) for p in preflight.check(REPO, tmp_path, need_free=1 << 60)]
    assert any("GiB free" in p for p in problems)


def test_preflight_names_the_apt_package_of_a_missing_tool():
    assert preflight.missing_tools({"no-such-tool-xyz": "pkg-xyz", "bash": "bash"}) == ["pkg-xyz"]


def test_image_plan_is_aligned_like_raspberry_pi_os():
    layout = image.plan(root_used=1_000_000_000, extra=512 << 20)
    assert layout.boot_start == 4 << 20
    assert layout.root_start == layout.boot_start + layout.boot_size
    assert layout.root_size % (4 << 20) == 0
    assert layout.root_size > 1_000_000_000 + (512 << 20)


def test_the_boot_partition_is_mounted_for_root_only():
    from picluster.imagebuild.overlay import private_bootfs

    pigen = "PARTUUID=1234-01  /boot/firmware  vfat  defaults,fmask=0022  0  2\n# /boot/firmware\n"
    once = private_bootfs(pigen)
    assert once.splitlines()[0].split()[3] == "defaults,fmask=0077,dmask=0077"
    assert once.splitlines()[1] == "# /boot/firmware"
    assert private_bootfs(once) == once


def test_the_build_can_be_told_not_to_install_host_packages():
    from picluster.cli import build_parser

    args = build_parser().parse_args(["build", "--no-install-deps", "--base", "debian"])
    assert args.no_install_deps is True
    assert build_parser().parse_args(["build"]).no_install_deps is False
