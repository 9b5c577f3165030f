"""Cards customised by Raspberry Pi Imager 2.x keep working (issue 17).

``imager/controller`` and ``imager/wifi`` hold the boot-partition files Imager
2.x writes for a trixie image in its ``cloudinit-rpi`` format, byte for byte as
its generator lays them out (``#cloud-config`` prepended, no blank lines but
the one after ``manage_resolv_conf``, ``cmdline.txt`` without a final newline):
``controller`` is the route docs/cards.md recommends (hostname, user name, SSH
key only), ``wifi`` adds a password, sudo without a password and Wi-Fi (the
only case in which Imager writes ``network-config``). The ``cmdline.txt`` line
before Imager's words is the debian-base image's own, read from a real build.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from picluster.cards import bootfs, lint
from picluster.cli import main
from tests.cards import images

IMAGER = Path(__file__).parent / "imager"
CARDS = ("controller", "wifi")


@pytest.fixture(params=CARDS)
def imager_card(request, tmp_path) -> Path:
    copy = tmp_path / request.param
    shutil.copytree(IMAGER / request.param, copy)
    return copy


def findings(folder: Path, rule: str) -> list[lint.Finding]:
    return [f for f in lint.lint_dir(folder) if f.rule == rule]


def test_lint_accepts_what_imager_writes(imager_card, capsys):
    assert main(["lint", "--strict", str(imager_card)]) == 0
    assert [f for f in lint.lint_dir(imager_card) if f.level != lint.Severity.INFO] == []
    assert "1 seed(s): 0 errors, 0 warnings" in capsys.readouterr().out


def test_lint_says_what_imager_files_do(imager_card, capsys):
    assert main(["lint", "-v", str(imager_card)]) == 0
    out = capsys.readouterr().out.replace("\n", "")
    iid = (imager_card / "meta-data").read_text().split()[1]
    expected = [
        f"{imager_card}/user-data:4: info: controller: 'controller' matches 'controller'",
        f"{imager_card}/user-data:6: info: 'packages': avahi-daemon is already in the "
        "picluster image, so nothing is installed; but cloud-init first runs 'apt-get update'",
        f"{imager_card}/user-data:8: info: 'apt': only writes Acquire::Check-Date \"false\"",
        f"{imager_card}/user-data:18: info: user: makes 'alice' the card's first user",
        "renames the image's first user (uid 1000) to 'alice'",
        "enables and starts sshd, which the picluster image already does: harmless",
        f"{imager_card}/meta-data:1: info: instance-id '{iid}' was written by Raspberry Pi "
        "Imager (2025-12-22 16:4",
        f"{imager_card}/cmdline.txt:1: info: cmdline.txt: 'ds=nocloud;i={iid}' tells "
        f"cloud-init to use NoCloud with instance-id '{iid}'",
    ]
    for text in expected:
        assert text in out


def test_imager_password_and_passwordless_sudo_are_explained():
    (hashed,) = findings(IMAGER / "wifi", "password")
    assert hashed.level == lint.Severity.INFO and hashed.line == 22
    assert hashed.message.startswith("user: 'passwd' is a password hash for 'alice'")
    (runcmd,) = findings(IMAGER / "wifi", "runcmd")
    assert runcmd.message.startswith("runcmd: 3 command(s)")
    assert "lets the user sudo without a password" in runcmd.message
    assert "lint does not check" not in runcmd.message  # all three are Imager's own


def test_imager_ssh_password_login_warns_but_does_not_fail(imager_card, capsys):
    user_data = imager_card / "user-data"
    user_data.write_text(user_data.read_text().replace("ssh_pwauth: false", "ssh_pwauth: true"))
    assert main(["lint", str(imager_card)]) == 0
    assert main(["lint", "--strict", str(imager_card)]) == 1
    assert "ssh_pwauth: true allows SSH logins with a password" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("cmdline", "line", "why"),
    [
        (
            "console=tty0 root=LABEL=rootfs rw\nrootwait ds=nocloud;i=rpi-imager-1766421912345\n",
            2,
            "continues on line 2",
        ),
        ("console=tty0 rw rootwait ds=nocloud;i=rpi-imager-1766421912345", 1, "has no root="),
        ("", 1, "has no root="),
    ],
)
def test_cmdline_that_does_not_boot_is_an_error(imager_card, capsys, cmdline, line, why):
    (imager_card / "cmdline.txt").write_text(cmdline)
    assert main(["lint", str(imager_card)]) == 1
    out = capsys.readouterr().out.replace("\n", "")
    assert f"{imager_card}/cmdline.txt:{line}: error: cmdline.txt {why}" in out
    assert "Fix: " in out


def test_a_trailing_newline_is_not_a_split_line(imager_card):
    path = imager_card / "cmdline.txt"
    path.write_text(path.read_text() + "\n")
    assert [f for f in findings(imager_card, "cmdline") if f.level != lint.Severity.INFO] == []


def test_our_seed_copied_onto_an_imager_card_is_flagged(imager_card, card):
    # What a user does by hand: picluster's seed files dropped onto a mounted card
    # that Imager customised, whose cmdline.txt still names Imager's instance-id.
    for name in ("user-data", "meta-data", "network-config"):
        shutil.copyfile(card / name, imager_card / name)
    ours = (card / "meta-data").read_text().split()[1]
    (f,) = [f for f in findings(imager_card, "cmdline") if f.level == lint.Severity.WARNING]
    assert (f.file.name, f.line) == ("cmdline.txt", 1)
    assert f"meta-data's instance-id '{ours}' is not the one cloud-init uses" in f.message
    assert f"Fix: set i={ours} in cmdline.txt" in f.message


def test_nocloud_seedfrom_elsewhere_is_said(imager_card):
    (imager_card / "cmdline.txt").write_text(
        "console=tty0 root=LABEL=rootfs rootwait ds=nocloud;s=http://10.0.0.1/seed/\n"
    )
    (info,) = findings(imager_card, "cmdline")
    assert "the seed read from http://10.0.0.1/seed/, not from this boot partition" in info.message


# --- an image (or card) whose boot partition Imager customised -----------------


def imager_image(test_image: images.TestImage, which: str, path: Path) -> Path:
    """A copy of the test image with Imager's files on its FAT partition, as Imager
    leaves a card (read back into a file)."""
    shutil.copyfile(test_image.img, path)
    spec = f"{path}@@{test_image.boot_offset}"
    for source in sorted((IMAGER / which).iterdir()):
        images.run("mcopy", "-o", "-i", spec, source, f"::{source.name}", env=images.MTOOLS_ENV)
    return path


def test_lint_reads_an_image_boot_partition(tmp_path, test_image, capsys):
    img = imager_image(test_image, "controller", tmp_path / "card.img")
    assert main(["lint", "-v", str(img)]) == 0
    out = capsys.readouterr().out.replace("\n", "")
    assert (
        f"{img}::cmdline.txt:1: info: cmdline.txt: 'ds=nocloud;i=rpi-imager-1766421912345'" in out
    )
    assert f"{img}::user-data:18: info: user: makes 'alice' the card's first user" in out
    assert "1 seed(s): 0 errors, 0 warnings" in out


def test_lint_of_an_image_without_a_seed_says_so(tmp_path, test_image, capsys):
    empty = tmp_path / "empty.img"
    shutil.copyfile(test_image.img, empty)
    images.run(
        "mdel", "-i", f"{empty}@@{test_image.boot_offset}", "::meta-data", env=images.MTOOLS_ENV
    )
    assert main(["lint", str(empty)]) == 78
    assert "holds no user-data/meta-data" in capsys.readouterr().err


def test_lint_refuses_a_compressed_image(test_image, capsys):
    assert main(["lint", str(test_image.xz)]) == 78
    assert "compressed. Fix:" in capsys.readouterr().err


def test_picluster_seed_over_an_imager_card(tmp_path, test_image, card, capsys):
    """Our seed replaces Imager's three files; cmdline.txt is left as it is.

    The writer never edits the kernel command line (a wrong edit there is a Pi that
    does not boot). The seeded copy has never booted, so cloud-init meets Imager's
    instance-id for the first time and applies our user-data; lint says what a
    card that had booted already would do.
    """
    source = imager_image(test_image, "controller", tmp_path / "imager.img")
    kernel_line = (IMAGER / "controller" / "cmdline.txt").read_bytes()
    out = tmp_path / "controller.img"
    assert main(["seed", str(source), "--card", str(card), "-o", str(out)]) == 0
    part = bootfs.boot_partition(out)
    for name in ("user-data", "meta-data", "network-config"):
        assert images.mtype(out, part.start, name) == (card / name).read_bytes()
    assert images.mtype(out, part.start, "cmdline.txt") == kernel_line
    capsys.readouterr()
    assert main(["lint", str(out)]) == 0
    text = capsys.readouterr().out.replace("\n", "")
    assert (
        f"{out}::cmdline.txt:1: warning: meta-data's instance-id 'picluster-lab-engine-1-" in text
    )
