"""The debian base: Debian trixie arm64 from the Debian mirror, shaped like Raspberry Pi OS.

mmdebstrap builds it (systemd, Debian's ``linux-image-arm64``, ``raspi-firmware``
for a Pi 3/4, cloud-init reading NoCloud from ``/boot/firmware``, avahi,
openssh, the first user locked like pi-gen leaves it). Debian's postinst
scripts would byte-compile every Python module under emulation, the slowest
part of such a build, so ``py3compile`` is a no-op while packages install and
the same files are compiled afterwards by the native twin (native.py).

The result is cached, keyed by everything that shapes it (package list,
mirror, release, this file's recipe, first user, locale), so a rerun or
a stage change reuses it and any change to its inputs rebuilds it.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from picluster.files import atomic_write_text
from picluster.imagebuild import cache as cache_mod
from picluster.imagebuild import mounts, venv
from picluster.imagebuild.settings import Settings
from picluster.imagebuild.steps import StepLog

RECIPE_VERSION = 1
"""Bump when the recipe below changes in a way the key does not see."""

PACKAGES = (
    "systemd", "systemd-sysv", "systemd-resolved", "systemd-timesyncd", "udev", "dbus", "kmod",
    "initramfs-tools", "zstd", "linux-image-arm64", "raspi-firmware",
    "cloud-init", "cloud-guest-utils", "e2fsprogs", "dosfstools", "fdisk",
    "avahi-daemon", "libnss-mdns", "openssh-server", "sudo",
    "python3", "ca-certificates", "iproute2", "iputils-ping", "ifupdown",
    "locales", "tzdata", "keyboard-configuration", "console-setup",
    "netbase", "less", "nano", "procps",
)  # fmt: skip
COMPONENTS = "main non-free-firmware"
DPKG_EXCLUDES = (
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/locale/*",
    "path-include=/usr/share/locale/locale.alias",
)
PYTHON_DIRS = ["/usr/lib/python3/dist-packages", "/usr/lib/python3.13", "/usr/share/python3"]

ESSENTIAL_HOOK = """set -eu
chroot "$1" dpkg-divert --quiet --local --rename --divert /usr/bin/py3compile.picluster \\
    --add /usr/bin/py3compile
printf '#!/bin/sh\\n# picluster build: compiled natively later\\nexit 0\\n' \\
    > "$1/usr/bin/py3compile"
chmod 755 "$1/usr/bin/py3compile"
# Every initramfs-tools trigger in the bootstrap compresses the initrd under
# emulation, by default at a high zstd level (minutes each time): level 1 here.
# The initrd grows by a few MB; the Pi's firmware reads it once per boot.
mkdir -p "$1/etc/initramfs-tools/conf.d"
printf 'COMPRESS=zstd\\nCOMPRESSLEVEL=1\\n' > "$1/etc/initramfs-tools/conf.d/picluster"
"""

FSTAB = """# <file system>  <mount point>    <type> <options>          <dump> <pass>
LABEL=rootfs     /                ext4   defaults,noatime   0      1
LABEL=bootfs     /boot/firmware   vfat   defaults,x-systemd.device-timeout=10min 0 2
"""

CLOUD_CFG = """# picluster: the card seed lives on the FAT partition, as on Raspberry Pi OS.
datasource_list: [NoCloud, None]
datasource:
  NoCloud:
    seedfrom: file:///boot/firmware/
system_info:
  network:
    renderers: [networkd, eni]
"""

CLOUD_INIT_AFTER_BOOTFS = """# The seed is read from /boot/firmware: mount it first.
[Unit]
RequiresMountsFor=/boot/firmware
"""

SSHD = """# picluster image: keys only (a card seed or Raspberry Pi Imager adds them).
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin no
"""

RASPI_FIRMWARE_DEFAULTS = """# picluster: boot the rootfs by label, as the image's fstab does (the
# package's default asks findmnt, which names the build host's disk).
ROOTPART=LABEL=rootfs
"""


def bootstrap_key(settings: Settings) -> str:
    return cache_mod.key(
        "debian-bootstrap",
        {
            "packages": PACKAGES,
            "components": COMPONENTS,
            "excludes": DPKG_EXCLUDES,
            "hook": ESSENTIAL_HOOK,
            "release": settings.release,
            "mirror": settings.debian_mirror,
            "mmdebstrap": _mmdebstrap_version(),
        },
    )


def base_key(settings: Settings, bootstrap: str) -> str:
    return cache_mod.key(
        "debian-base",
        {
            "recipe": RECIPE_VERSION,
            "bootstrap": bootstrap,
            "source": Path(__file__).read_text(),
            "venv_source": Path(venv.__file__).read_text(),
            "user": settings.first_user_name,
            "locale": settings.locale,
            "timezone": settings.timezone,
            "keymap": settings.keyboard_keymap,
            "hostname": settings.target_hostname,
        },
    )


def _mmdebstrap_version() -> str:
    proc = subprocess.run(["mmdebstrap", "--version"], capture_output=True, text=True, check=False)
    return proc.stdout.strip()


def ensure(settings: Settings, cache: cache_mod.Cache, native_root: Path, log: StepLog) -> Path:
    """The cached, shaped base root directory, built now if no entry matches.

    Two layers: the plain mmdebstrap result (the slow part, ~20 min under
    emulation) and the shaped base on top of it, so a change to the shaping
    recipe does not repeat the bootstrap.
    """
    boot_entry = bootstrap_key(settings)
    base_entry = base_key(settings, boot_entry)
    found = cache.get(base_entry)
    if found:
        log.note(f"debian base: cached {found}")
        return found
    if cache.get(boot_entry):
        log.note(f"debian bootstrap: cached {cache.path(boot_entry)}")
    else:
        with cache.filling(boot_entry) as scratch:
            bootstrap(settings, scratch, log)
        cache.prune("debian-bootstrap", boot_entry)
    with cache.filling(base_entry) as scratch:
        log.run(["cp", "-a", "--reflink=auto", str(cache.path(boot_entry)), str(scratch)])
        shape(settings, scratch, log)
        compile_python(scratch, native_root, log)
    cache.prune("debian-base", base_entry)
    return cache.path(base_entry)


def bootstrap(settings: Settings, root: Path, log: StepLog) -> None:
    hook = root.with_name(root.name + ".essential-hook.sh")
    hook.write_text(ESSENTIAL_HOOK)
    try:
        cmd = [
            "mmdebstrap", "--arch=arm64", "--variant=minbase", f"--components={COMPONENTS}",
            f"--include={','.join(PACKAGES)}", "--skip=cleanup/apt/lists",
            *(f"--dpkgopt={x}" for x in DPKG_EXCLUDES),
            f'--essential-hook=sh {hook} "$1"',
            settings.release, str(root), settings.debian_mirror,
        ]  # fmt: skip
        log.run(cmd)
    finally:
        hook.unlink(missing_ok=True)


def _chroot(root: Path, script: str, log: StepLog) -> None:
    log.run(
        ["chroot", str(root), "/bin/bash", "-euo", "pipefail"],
        env={
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "LC_ALL": "C",
            "DEBIAN_FRONTEND": "noninteractive",
        },
        input_text=script,
    )


def shape(settings: Settings, root: Path, log: StepLog) -> None:
    """What pi-gen's stage0-2 would have done that our stage relies on."""
    atomic_write_text(root / "etc/fstab", FSTAB)
    atomic_write_text(root / "etc/hostname", settings.target_hostname + "\n")
    atomic_write_text(
        root / "etc/hosts",
        f"127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n"
        f"127.0.1.1\t{settings.target_hostname}\n",
    )
    atomic_write_text(root / "etc/cloud/cloud.cfg.d/90-picluster-nocloud.cfg", CLOUD_CFG)
    for unit in ("cloud-init-local.service", "cloud-init-main.service"):
        atomic_write_text(
            root / f"etc/systemd/system/{unit}.d/picluster-bootfs.conf", CLOUD_INIT_AFTER_BOOTFS
        )
    atomic_write_text(root / "etc/ssh/sshd_config.d/50-picluster.conf", SSHD)
    atomic_write_text(root / "etc/default/raspi-firmware", RASPI_FIRMWARE_DEFAULTS)
    (root / "boot/firmware").mkdir(parents=True, exist_ok=True)
    user = settings.first_user_name
    with mounts.chroot_mounts(root):
        _chroot(
            root,
            f"""
# The first user, as pi-gen's stage1 makes it, but locked: no password at all.
adduser --disabled-password --gecos "" {user}
for g in adm dialout cdrom sudo audio video plugdev games users input render netdev; do
    getent group "$g" > /dev/null && adduser {user} "$g" > /dev/null
done
passwd --lock {user}
passwd --lock root
echo '{user} ALL=(ALL) NOPASSWD: ALL' > /etc/sudoers.d/010_{user}-nopasswd
chmod 0440 /etc/sudoers.d/010_{user}-nopasswd
# Locale, time zone, keyboard (pi-gen's stage0/1 debconf equivalents).
sed -i 's/^# *\\({settings.locale}\\)/\\1/' /etc/locale.gen
grep -q '^{settings.locale}' /etc/locale.gen || echo '{settings.locale} UTF-8' >> /etc/locale.gen
locale-gen
update-locale LANG={settings.locale}
ln -sf /usr/share/zoneinfo/{settings.timezone} /etc/localtime
echo '{settings.timezone}' > /etc/timezone
sed -i 's/^XKBLAYOUT=.*/XKBLAYOUT="{settings.keyboard_keymap}"/' /etc/default/keyboard || true
# console-setup.service rebuilds its keymap cache at every boot when
# /etc/default/keyboard is newer than the cache (2 min of perl per boot under
# emulation, seconds on a Pi): rebuild it here, once.
setupcon --force --save-only
# Networking by systemd-networkd (cloud-init renders the seed's network-config).
systemctl enable systemd-networkd.service systemd-resolved.service
systemctl enable avahi-daemon.service ssh.service
# Every card gets its own identity on first boot.
rm -f /etc/ssh/ssh_host_*
truncate -s 0 /etc/machine-id
rm -f /var/lib/dbus/machine-id
# Kernel, initrd, DTBs, config.txt and cmdline.txt (root=LABEL=rootfs) on the
# FAT partition for the Pi's firmware; the hook found the host's root before.
DEB_MAINT_PARAMS=configure /etc/kernel/postinst.d/z50-raspi-firmware
""",
            log,
        )
    # py3compile back; the files it skipped are compiled natively next.
    (root / "usr/bin/py3compile").unlink()
    subprocess.run(
        ["chroot", str(root), "dpkg-divert", "--quiet", "--local", "--rename", "--remove",
         "/usr/bin/py3compile"],
        check=True,
    )  # fmt: skip
    shutil.rmtree(root / "var/cache/apt/archives", ignore_errors=True)
    (root / "var/cache/apt/archives/partial").mkdir(parents=True, exist_ok=True)


def compile_python(root: Path, native_root: Path, log: StepLog) -> None:
    venv.compile_tree(root, PYTHON_DIRS, native_root, log)


def copy_to(base: Path, rootfs: Path, log: StepLog) -> None:
    """A fresh, writable copy of the cached base for this build's stage."""
    if rootfs.exists():
        mounts.unmount_all(rootfs)
        shutil.rmtree(rootfs)
    rootfs.parent.mkdir(parents=True, exist_ok=True)
    log.run(["cp", "-a", "--reflink=auto", str(base), str(rootfs)])
