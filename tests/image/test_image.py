"""Inspect the debian-base image without booting it (the image tier)."""

from __future__ import annotations

import json
import lzma
import stat
import subprocess

import pytest

from picluster.cards import bootfs
from picluster.cards.seeds import SEED_FILES
from picluster.cli import main
from tests.cards import images
from tests.cards.conftest import card  # noqa: F401  (fixture)
from tests.image import checks
from tests.image.conftest import mounted_partitions

pytestmark = [pytest.mark.root, pytest.mark.image]


@pytest.fixture(scope="module")
def image_root(built_image, tmp_path_factory):
    mnt = tmp_path_factory.mktemp("image") / "root"
    with mounted_partitions(built_image.raw, mnt) as (table, loops):
        yield mnt, table, loops


def test_partition_table_and_labels(image_root):
    _, table, loops = image_root
    assert [p["type"] for p in table] == ["c", "83"]
    assert table[0]["start"] * 512 == 4 << 20, "bootfs starts at 4 MiB like Raspberry Pi OS"
    labels = [
        subprocess.run(
            ["blkid", "-o", "value", "-s", "LABEL", loop], capture_output=True, text=True
        ).stdout.strip()
        for loop in loops
    ]
    types = [
        subprocess.run(
            ["blkid", "-o", "value", "-s", "TYPE", loop], capture_output=True, text=True
        ).stdout.strip()
        for loop in loops
    ]
    assert labels == ["bootfs", "rootfs"]
    assert types == ["vfat", "ext4"]


def test_fstab_mounts_both_by_label(image_root):
    root, _, _ = image_root
    fstab = (root / "etc/fstab").read_text()
    assert "LABEL=rootfs" in fstab and "LABEL=bootfs" in fstab and "/boot/firmware" in fstab
    boot = next(line.split() for line in fstab.splitlines() if "/boot/firmware" in line)
    assert "fmask=0077" in boot[3] and "dmask=0077" in boot[3], "the seed (secret) is root's"


def test_boot_partition_has_firmware_kernel_and_seed_examples(built_image, image_root):
    part = bootfs.boot_partition(built_image.raw)
    listing = subprocess.run(
        ["mdir", "-b", "-i", f"{built_image.raw}@@{part.start}", "::"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    names = {line.rsplit("/", 1)[-1] for line in listing.split()}
    for expected in ("user-data", "meta-data", "network-config", "config.txt", "cmdline.txt"):
        assert expected in names, f"{expected} missing on bootfs (has {sorted(names)})"
    assert any(n.startswith("vmlinuz") for n in names), "no kernel on bootfs"
    assert any(n.startswith("bcm2711") for n in names), "no Pi 4 device tree on bootfs"

    def read(name: str) -> str:
        return bootfs.read_file(built_image.raw, name, part).decode()

    assert "root=LABEL=rootfs" in read("cmdline.txt")
    assert "instance-id:" in read("meta-data")
    assert read("user-data").startswith("#cloud-config")
    # The image's own seed names no card: every card flashed with it names itself.
    live = [
        line.split(":", 1)[0]
        for name in ("meta-data", "user-data")
        for line in read(name).splitlines()
        if line and not line.lstrip().startswith("#")
    ]
    assert not {"hostname", "local-hostname", "fqdn", "users"} & set(live), live
    assert "kernel=vmlinuz" in read("config.txt")
    fsck = subprocess.run(["fsck.vfat", "-n", image_root[2][0]], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr


def test_cloud_init_reads_the_seed_from_bootfs(image_root):
    root = image_root[0]
    cfg = (root / "etc/cloud/cloud.cfg.d/90-picluster-nocloud.cfg").read_text()
    assert "file:///boot/firmware/" in cfg


def test_units_enabled(image_root):
    checks.units_enabled(image_root[0])


def test_secret_is_root_only_and_matches_deploy(image_root, built_image):
    checks.secret_private(image_root[0], built_image.secret)
    checks.cluster_config(image_root[0])
    # The image and the build's scratch hold the same secret.
    assert stat.S_IMODE(built_image.xz.stat().st_mode) == 0o600
    assert stat.S_IMODE(built_image.raw.parent.stat().st_mode) == 0o700


def test_nobody_has_a_password(image_root):
    checks.no_password(image_root[0])


def test_service_user_and_first_user(image_root):
    passwd = (image_root[0] / "etc/passwd").read_text()
    assert "\npicluster:" in "\n" + passwd
    assert "\npi:" in "\n" + passwd
    assert not list((image_root[0] / "etc/ssh").glob("ssh_host_*")), (
        "host keys baked into the image"
    )
    assert (image_root[0] / "etc/machine-id").read_text() == ""


def test_venv_imports_under_qemu_user(image_root):
    checks.venv_imports(image_root[0])


def test_mpirun_is_on_the_path(image_root):
    checks.mpi_on_path(image_root[0])


def test_venv_is_byte_compiled(image_root):
    checks.venv_compiled(image_root[0])


def test_console_keymap_cache_is_current(image_root):
    """console-setup rebuilds a stale cache at every boot (minutes of perl under emulation)."""
    etc = image_root[0] / "etc"
    cache = (etc / "console-setup/cached_setup_terminal.sh").stat().st_mtime
    for conf in ("default/keyboard", "default/console-setup"):
        # console-setup.sh: `[ cached -nt conf ] || setupcon --save`
        assert cache > (etc / conf).stat().st_mtime, (
            f"/etc/{conf} is newer than console-setup's cache: every boot rebuilds the keymap"
        )


def test_deploy_outputs(built_image):
    assert built_image.xz.exists() and built_image.bmap.exists() and built_image.sha256.exists()
    with lzma.open(built_image.xz) as fh:
        head = fh.read(512)
    assert head[510:512] == b"\x55\xaa", "xz does not hold an MBR disk image"
    sums = built_image.sha256.read_text()
    assert built_image.xz.name in sums
    manifest = built_image.manifest
    assert manifest["base"] == "debian"
    assert manifest["venv"]["ipyparallel"].startswith("9.")
    assert "stage-cluster (pi-gen contract)" in manifest["step_seconds"]
    print(json.dumps(manifest["sizes_bytes"]), built_image.xz.stat().st_size)
    # What Raspberry Pi Imager 2.x needs to offer its customisation for this image.
    imager = json.loads(built_image.xz.parent.joinpath("picluster.rpi-imager-manifest").read_text())
    (entry,) = imager["os_list"]
    assert entry["url"] == built_image.xz.resolve().as_uri()
    assert entry["init_format"] == "cloudinit-rpi"
    assert entry["image_download_size"] == built_image.xz.stat().st_size
    raw_line = next(line for line in sums.splitlines() if line.endswith("  picluster.img"))
    assert entry["extract_sha256"] == raw_line.split()[0]


def test_seed_the_built_image(built_image, tmp_path, card):  # noqa: F811
    """``picluster seed`` straight from the deploy's .img.xz, as a user flashes it."""
    out = tmp_path / "card.img"
    assert main(["seed", str(built_image.xz), "--card", str(card), "-o", str(out)]) == 0
    part = bootfs.boot_partition(out)
    for name in SEED_FILES:
        assert images.mtype(out, part.start, name) == (card / name).read_bytes()
    images.fsck_vfat(out, part.start, part.size, tmp_path)
