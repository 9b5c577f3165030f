"""Checks before a long build: each problem is one line saying how to fix it."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from picluster.imagebuild.native import host_arch

GiB = 1 << 30

# tool -> Debian package
HOST_TOOLS = {
    "mmdebstrap": "mmdebstrap",
    "mkfs.vfat": "dosfstools",
    "mcopy": "mtools",
    "mkfs.ext4": "e2fsprogs",
    "sfdisk": "fdisk",
    "xz": "xz-utils",
    "bmaptool": "bmap-tools",
    "rsync": "rsync",
    "chroot": "coreutils",
    "mount": "mount",
    "git": "git",
    "quilt": "quilt",
    "update-binfmts": "binfmt-support",
    "qemu-aarch64-static": "qemu-user-static",
}
DEBIAN_KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")

PIGEN_TOOLS = {
    "parted": "parted",
    "debootstrap": "debootstrap",
    "zerofree": "zerofree",
    "zip": "zip",
    "mkdosfs": "dosfstools",
    "capsh": "libcap2-bin",
    "bsdtar": "libarchive-tools",
    "curl": "curl",
    "xxd": "xxd",
    "file": "file",
    "lsmod": "kmod",
    "bc": "bc",
    "gpg": "gpg",
    "pigz": "pigz",
    "arch-test": "arch-test",
    "realpath": "coreutils",
    # pi-gen's depends file says qemu-arm:qemu-user-binfmt, but qemu-user-binfmt
    # conflicts with the qemu-user-static we need for binfmt. qemu-user has the
    # qemu-arm pi-gen looks for and coexists with qemu-user-static (Debian 12).
    "qemu-arm": "qemu-user",
}
"""pi-gen's own host dependencies (its ``depends`` file at the pinned commit, checked
by its build.sh before anything runs), for the raspios base only."""


@dataclass(frozen=True)
class Problem:
    what: str
    fix: str

    def __str__(self) -> str:
        return f"{self.what}. Fix: {self.fix}"


def missing_tools(tools: dict[str, str] = HOST_TOOLS) -> list[str]:
    return sorted({pkg for tool, pkg in tools.items() if not shutil.which(tool)})


def binfmt_aarch64_ok(root: Path = Path("/proc/sys/fs/binfmt_misc")) -> bool:
    if host_arch() == "arm64":
        return True
    entry = root / "qemu-aarch64"
    return entry.is_file() and entry.read_text().startswith("enabled")


def pigen_problems() -> list[Problem]:
    """What pi-gen's dependencies_check would refuse, with the apt line that fixes it."""
    packages = missing_tools(PIGEN_TOOLS)
    if not packages:
        return []
    return [
        Problem(
            "missing pi-gen host tools (raspios base)",
            f"apt-get install {' '.join(packages)} (not qemu-user-binfmt: it conflicts with "
            "qemu-user-static), or build with --base debian",
        )
    ]


def check(repo: Path, work: Path, need_free: int = 12 * GiB, base: str = "debian") -> list[Problem]:
    problems: list[Problem] = []
    if base == "raspios":
        problems += pigen_problems()
    if os.geteuid() != 0:
        problems.append(
            Problem("not root (chroot, mounts and device nodes need it)", "sudo ./build.sh")
        )
    for path in (repo, work):
        if " " in str(path.resolve()):
            problems.append(
                Problem(
                    f"path with a space: {path.resolve()} (pi-gen and debootstrap break on it)",
                    "move the checkout or pass --work-dir without spaces",
                )
            )
    packages = missing_tools()
    if packages:
        problems.append(
            Problem(
                "missing host tools",
                f"apt-get install {' '.join(packages)}",
            )
        )
    if not DEBIAN_KEYRING.exists():
        problems.append(
            Problem("no Debian archive keyring", "apt-get install debian-archive-keyring")
        )
    if not binfmt_aarch64_ok():
        problems.append(
            Problem(
                "binfmt_misc cannot run aarch64 programs (chroot work needs qemu-user)",
                "apt-get install qemu-user-static binfmt-support && "
                "update-binfmts --enable qemu-aarch64",
            )
        )
    probe = work if work.exists() else work.parent
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < need_free:
        problems.append(
            Problem(
                f"only {free / GiB:.1f} GiB free at {probe} ({need_free // GiB} GiB needed)",
                "free space or pass --work-dir on a bigger disk",
            )
        )
    return problems


def loop_device_problem() -> Problem | None:
    """Only the raspios path (pi-gen's export stage) needs loop devices."""
    if not Path("/dev/loop-control").exists():
        return Problem("no loop device support (/dev/loop-control)", "modprobe loop")
    return None


def needed_packages(base: str) -> list[str]:
    """The Debian packages this build still lacks (pi-gen's too for the raspios base)."""
    packages = set(missing_tools())
    if base == "raspios":
        packages.update(missing_tools(PIGEN_TOOLS))
    if not DEBIAN_KEYRING.exists():
        packages.add("debian-archive-keyring")
    if not binfmt_aarch64_ok():
        packages.update({"qemu-user-static", "binfmt-support"})
    return sorted(packages)


def set_up_host(base: str, say: Callable[[str], None]) -> None:
    """Install what is missing with apt and enable aarch64 binfmt, saying what it does.

    Does nothing when nothing is missing, when not root, or without apt (then the
    checks in ``check`` name the fix instead).
    """
    packages = needed_packages(base)
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if packages:
        say(f"installing host packages: {' '.join(packages)} (--no-install-deps to refuse)")
        subprocess.run(["apt-get", "update", "-qq"], check=False, env=env)
        proc = subprocess.run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages],
            check=False,
            env=env,
        )
        if proc.returncode != 0:
            say(
                f"apt-get install failed (exit {proc.returncode}); "
                "the checks below say what is missing"
            )
    if not binfmt_aarch64_ok() and shutil.which("update-binfmts"):
        say("enabling aarch64 programs through binfmt_misc (update-binfmts --enable qemu-aarch64)")
        subprocess.run(["update-binfmts", "--enable", "qemu-aarch64"], check=False)
