"""The pigen tier: REAL pi-gen's build.sh runs stage-cluster, twice.

Needs root and a pi-gen checkout at the pinned commit in PIGEN_DIR (never
committed here); skipped otherwise. Each run uses a fresh clone of PIGEN_DIR
at its HEAD (an unmodified pi-gen: only a config and stages are added, as a
pi-gen user does) and replaces stage0-2 by a stand-in ``stage2`` whose
``prerun.sh`` copies our finished debian base (Debian trixie arm64, the
cached result of ``./build.sh --base debian``'s base step) to where
``copy_previous`` expects the previous stage's root, and leaves the host's
resolv.conf in it as pi-gen's stage0 (debootstrap) does. Then:

- **wrapper**: the config ``./build.sh --base raspios`` writes
  (``raspios.pigen_values``), our fast path (native twin, host wheelhouse),
  the stage run from outside the pi-gen tree by absolute path;
- **plain**: ``cp -r stage-cluster pi-gen/`` + the documented wheel one-liner,
  a user's ``config`` with ``STAGE_LIST`` and one exported PICLUSTER_ setting,
  ``build.sh`` run with an empty environment (no picluster, no host venv).

pi-gen's export-image cannot run on this stand-in at all (its
01-user-rename installs ``userconf-pi`` from archive.raspberrypi.com) and
needs a kernel that mounts vfat plus loop partition nodes; so the stage gets
``SKIP_IMAGES`` (a pi-gen feature, not a patch), the test says why, and our own
assembler (``picluster.imagebuild.image``) turns pi-gen's finished stage root
into an image, which gets the image tier's checks (tests/image/checks.py).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from picluster import secret as secret_mod
from picluster.imagebuild import cache as cache_mod
from picluster.imagebuild import debian_base, image, native, raspios, settings, wheelhouse
from picluster.imagebuild.cli import INSTALLER, REQUIREMENTS
from picluster.imagebuild.steps import StepLog
from tests.image import checks
from tests.image.conftest import mounted_partitions

REPO = Path(__file__).resolve().parents[2]
PIGEN_DIR = os.environ.get("PIGEN_DIR", "")
SCRATCH = Path(os.environ.get("PICLUSTER_PIGEN_SCRATCH", "/var/tmp/picluster-pigen-test"))
ARTIFACTS = REPO / "artifacts" / "pigen"
HOWTO = (
    "the pigen tier needs a pi-gen checkout: git clone --branch arm64 "
    "https://github.com/RPi-Distro/pi-gen /var/cache/picluster-pigen/pi-gen && git -C "
    "/var/cache/picluster-pigen/pi-gen checkout <PICLUSTER_PIGEN_COMMIT from ./config>, "
    "then: sudo PIGEN_DIR=/var/cache/picluster-pigen/pi-gen .venv/bin/pytest tests/pigen"
)

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(not PIGEN_DIR, reason=HOWTO),
    pytest.mark.skipif(os.geteuid() != 0, reason="the pigen tier needs root (chroot, mounts)"),
]

STAND_IN_PRERUN = """#!/bin/bash -e
# Stand-in for pi-gen's stage0-2: our finished Debian trixie arm64 base.
if [ ! -d "${ROOTFS_DIR}" ]; then
    mkdir -p "${ROOTFS_DIR}"
    rsync -aHAXx --exclude /var/cache/apt/archives "${PICLUSTER_TEST_BASE}/" "${ROOTFS_DIR}/"
fi
# As pi-gen's stage0 leaves it: the build host's resolver inside the root.
rm -f "${ROOTFS_DIR}/etc/resolv.conf"
cp /etc/resolv.conf "${ROOTFS_DIR}/etc/resolv.conf"
# This build host reaches PyPI through a TLS-inspecting egress proxy whose CA only
# the host trusts: its bundle, for SSL_CERT_FILE (removed again before imaging).
cp /etc/ssl/certs/ca-certificates.crt "${ROOTFS_DIR}/etc/ssl/certs/picluster-test-host-bundle.crt"
"""
HOST_BUNDLE = "etc/ssl/certs/picluster-test-host-bundle.crt"


@dataclass
class Run:
    name: str
    rootfs: Path
    raw: Path
    secret: Path
    seconds: float
    stage_seconds: float
    listing: list[str]
    log: Path


def export_blockers() -> list[str]:
    """Why pi-gen's own export-image cannot make the image here (said in the output)."""
    why = ["export-image installs userconf-pi, which only archive.raspberrypi.com has"]
    if "vfat" not in Path("/proc/filesystems").read_text().split():
        why.append("this kernel cannot mount vfat (not in /proc/filesystems)")
    probe = subprocess.run(["losetup", "--help"], capture_output=True, text=True)
    if "--partscan" not in probe.stdout:
        why.append("losetup has no --partscan")
    return why


def umount_under(path: Path) -> None:
    points = [
        line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()
        if line.split()[1].startswith(str(path))
    ]  # fmt: skip
    for point in sorted(points, reverse=True):
        subprocess.run(["umount", "--lazy", point], check=False)


def remove_tree(path: Path) -> None:
    umount_under(path)
    if any(str(path) in line for line in Path("/proc/mounts").read_text().splitlines()):
        pytest.fail(f"{path}: still mounted, not removed")
    shutil.rmtree(path, ignore_errors=True)


def clone_pigen(dest: Path) -> Path:
    head = subprocess.run(
        ["git", "-C", PIGEN_DIR, "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    subprocess.run(["git", "clone", "--quiet", "--no-checkout", PIGEN_DIR, str(dest)], check=True)
    subprocess.run(["git", "-C", str(dest), "checkout", "--quiet", head], check=True)
    return dest


def stand_in_stage2(where: Path) -> Path:
    stage2 = where / "stage2"
    stage2.mkdir(parents=True)
    (stage2 / "prerun.sh").write_text(STAND_IN_PRERUN)
    (stage2 / "prerun.sh").chmod(0o755)
    (stage2 / "SKIP_IMAGES").touch()
    return stage2


def stage_seconds(build_log: Path, stage: str) -> float:
    """Begin..End of the stage in pi-gen's own build.log ([HH:MM:SS] lines)."""
    stamps = {}
    for line in build_log.read_text().splitlines():
        m = re.match(r"\[(\d\d):(\d\d):(\d\d)\] (Begin|End) (\S+)$", line)
        if m and Path(m[5]).name == stage:
            stamps[m[4]] = int(m[1]) * 3600 + int(m[2]) * 60 + int(m[3])
    return float((stamps["End"] - stamps["Begin"]) % 86400)


def run_pigen(name: str, pigen: Path, args: list[str], env: dict[str, str], work: Path) -> float:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    out = ARTIFACTS / f"{name}.log"
    started = time.monotonic()
    with out.open("wb") as fh:
        proc = subprocess.run(
            ["./build.sh", *args], cwd=pigen, env=env, stdout=fh, stderr=subprocess.STDOUT,
            timeout=3600, check=False,
        )  # fmt: skip
    seconds = time.monotonic() - started
    umount_under(work)
    if proc.returncode != 0:
        tail = out.read_text(errors="replace")[-4000:]
        pytest.fail(f"pi-gen's build.sh ({name}) failed ({proc.returncode}); {out}:\n{tail}")
    return seconds


def assemble(name: str, rootfs: Path, base: Path, work: Path) -> Path:
    """Our assembler on pi-gen's finished stage root (export-image's job, see above)."""
    (rootfs / HOST_BUNDLE).unlink(missing_ok=True)
    resolv = rootfs / "etc/resolv.conf"
    resolv.unlink()
    resolv.symlink_to((base / "etc/resolv.conf").readlink())
    image.finalise(rootfs)
    log = StepLog(work / f"{name}-assemble.log")
    try:
        raw = work / "picluster.img"
        image.assemble(rootfs, work, raw, 512, log)
    finally:
        log.close()
    return raw


@pytest.fixture(scope="module")
def prepared():
    blockers = export_blockers()
    print("pi-gen export-image not used: " + "; ".join(blockers))
    print("the stage's finished root is exported by picluster.imagebuild.image instead")
    s = settings.load(REPO / "config")
    cache = cache_mod.Cache(Path(s.cache_dir))
    SCRATCH.mkdir(parents=True, exist_ok=True)
    log = StepLog(SCRATCH / "prepare.log")
    try:
        native_root = native.ensure(cache, log, s.release, s.debian_mirror)
        base = debian_base.ensure(s, cache, native_root, log)
    finally:
        log.close()
    return s, cache, native_root, base


def fresh(name: str) -> tuple[Path, Path, Path]:
    """An empty scratch dir for one run, a pi-gen clone and the stand-in stage2 in it."""
    top = SCRATCH / name
    remove_tree(top)
    top.mkdir(parents=True)
    return top, clone_pigen(top / "pi-gen"), stand_in_stage2(top / "stand-in")


def _stage_copy(dest: Path) -> Path:
    stage = dest / "stage-cluster"
    shutil.copytree(REPO / "stage-cluster", stage, ignore=shutil.ignore_patterns("*.whl"))
    (stage / "SKIP_IMAGES").touch()  # see export_blockers
    return stage


@pytest.fixture(scope="module")
def wrapper_run(prepared):
    s, cache, native_root, base = prepared
    top, pigen, stage2 = fresh("wrapper")
    stage = _stage_copy(top)
    log = StepLog(top / "wheels.log")
    try:
        own = wheelhouse.own_wheel(REPO, stage / "00-venv/files", log.run)
        wheels = wheelhouse.ensure(REQUIREMENTS, INSTALLER, own, cache.root, top, log.run)
    finally:
        log.close()
    secret = top / "picluster.secret"
    secret_mod.write(secret, secret_mod.generate())
    work, deploy = top / "pi-gen-work", top / "pi-gen-deploy"
    extra = {
        **settings.shell_exports(s),
        "PICLUSTER_PYTHON": sys.executable,
        "PICLUSTER_WHEELS": str(wheels),
        "PICLUSTER_NATIVE": str(native_root),
        "PICLUSTER_SECRET_FILE": str(secret),
        "PICLUSTER_TEST_BASE": str(base),
    }
    values = raspios.pigen_values(s, f"{stage2} {stage}", work, deploy, extra)
    assert raspios.refusals(values) == []
    config = top / "pi-gen.config"
    config.write_text(raspios.render(values))
    seconds = run_pigen("wrapper", pigen, ["-c", str(config)], dict(os.environ), work)
    rootfs = work / "stage-cluster/rootfs"
    run = Run(
        "wrapper", rootfs, Path(), secret, seconds,
        stage_seconds(work / "build.log", "stage-cluster"), checks.venv_listing(rootfs),
        work / "build.log",
    )  # fmt: skip
    run.raw = assemble("wrapper", rootfs, base, top)
    yield run
    remove_tree(work)


@pytest.fixture(scope="module")
def plain_run(prepared):
    _, _, _, base = prepared
    top, pigen, stage2 = fresh("plain")
    # What the README tells a pi-gen user, in a picluster checkout:
    shutil.copytree(
        REPO / "stage-cluster", pigen / "stage-cluster", ignore=shutil.ignore_patterns("*.whl")
    )  # fmt: skip  (cp -r stage-cluster)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w",
         str(pigen / "stage-cluster/00-venv/files"), str(REPO)],
        check=True,
    )  # fmt: skip
    (pigen / "stage-cluster/SKIP_IMAGES").touch()  # see export_blockers
    (pigen / "config").write_text(
        "IMG_NAME=picluster\n"
        "FIRST_USER_NAME=pi\n"
        "ENABLE_SSH=1\n"
        f'STAGE_LIST="{stage2} stage-cluster"\n'
        "export PICLUSTER_CLUSTER_NAME=lab\n"
        f"export PICLUSTER_TEST_BASE={base}\n"
        f"export SSL_CERT_FILE=/{HOST_BUNDLE}\n"
    )
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "LANG": "C.UTF-8"}
    seconds = run_pigen("plain", pigen, [], env, pigen / "work")
    work = pigen / "work/picluster"
    rootfs = work / "stage-cluster/rootfs"
    run = Run(
        "plain", rootfs, Path(), pigen / "deploy/picluster.secret", seconds,
        stage_seconds(work / "build.log", "stage-cluster"), checks.venv_listing(rootfs),
        work / "build.log",
    )  # fmt: skip
    run.raw = assemble("plain", rootfs, base, top)
    yield run
    remove_tree(pigen / "work")


@pytest.fixture(scope="module", params=["wrapper", "plain"])
def built(request, tmp_path_factory):
    run: Run = request.getfixturevalue(f"{request.param}_run")
    mnt = tmp_path_factory.mktemp(f"pigen-{run.name}") / "root"
    with mounted_partitions(run.raw, mnt):
        yield run, mnt


def test_pigen_ran_our_stage(built):
    run, _ = built
    text = run.log.read_text()
    for part in ("00-venv", "01-service"):
        assert re.search(rf"End \S*/stage-cluster/{part}$", text, re.M), f"{part} did not run"
    print(f"{run.name}: build.sh {run.seconds:.0f} s, stage-cluster {run.stage_seconds:.0f} s")


def test_units_and_config(built):
    _, root = built
    checks.units_enabled(root)
    checks.cluster_config(root)


def test_secret_private_and_deployed(built):
    run, root = built
    checks.secret_private(root, run.secret)


def test_nobody_has_a_password(built):
    checks.no_password(built[1])


def test_venv_imports_and_is_compiled(built):
    checks.venv_imports(built[1])
    checks.venv_compiled(built[1])
    checks.mpi_on_path(built[1])


def test_plain_user_settings_reach_cluster_toml(plain_run):
    text = (plain_run.rootfs / "etc/picluster/cluster.toml").read_text()
    assert 'name = "lab"' in text


def test_fast_and_plain_paths_make_the_same_venv(wrapper_run, plain_run):
    ours, theirs = set(wrapper_run.listing), set(plain_run.listing)
    assert ours == theirs, {"only wrapper": sorted(ours - theirs)[:20],
                            "only plain": sorted(theirs - ours)[:20]}  # fmt: skip
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "times.json").write_text(
        json.dumps(
            {
                r.name: {"pigen_build_sh_s": round(r.seconds), "stage_cluster_s": r.stage_seconds,
                         "venv_paths": len(r.listing)}
                for r in (wrapper_run, plain_run)
            },
            indent=2,
        )
    )  # fmt: skip
