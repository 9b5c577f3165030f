"""A runner for pi-gen custom stages, used where pi-gen itself is not (the debian base).

It implements the sub-stage contract of pi-gen's ``build.sh`` (see DESIGN.md):
a stage with ``SKIP`` is skipped; ``prerun.sh`` runs first if executable;
sub-stage directories (without ``SKIP``) run in name order, and inside each,
for i in 00..99: ``${i}-debconf``, ``${i}-packages-nr``, ``${i}-packages``,
``${i}-patches/`` (quilt), ``${i}-run.sh`` (host, if executable, cwd = the
sub-stage) and ``${i}-run-chroot.sh`` (piped to bash in the chroot). Scripts
get pi-gen's helpers (``log``, ``on_chroot``, ``copy_previous``) and
variables, so the same ``stage-cluster/`` runs under real pi-gen unchanged.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
from collections.abc import Iterator, Mapping
from pathlib import Path

from picluster.imagebuild import mounts
from picluster.imagebuild.steps import StepLog

FUNCTIONS = Path(__file__).with_name("pigen_functions.sh")
_SUB_STAGE_FILE = re.compile(
    r"^(\d\d)-(debconf|packages-nr|packages|patches|run\.sh|run-chroot\.sh)$"
)
_POLICY_RC = "#!/bin/sh\n# picluster build: no service starts inside the chroot\nexit 101\n"


def packages(path: Path) -> list[str]:
    """Package names of a ``NN-packages`` file: whitespace-separated, ``#`` comments."""
    names: list[str] = []
    for line in path.read_text().splitlines():
        names += line.split("#", 1)[0].split()
    return names


def sub_stages(stage_dir: Path) -> list[Path]:
    return sorted(p for p in stage_dir.iterdir() if p.is_dir() and not (p / "SKIP").exists())


def unknown_files(sub_stage: Path) -> list[str]:
    """Files pi-gen would silently ignore (a typo such as ``00-run-chroot``)."""
    odd = []
    for entry in sub_stage.iterdir():
        if re.match(r"^\d\d-", entry.name) and not _SUB_STAGE_FILE.match(entry.name):
            odd.append(entry.name)
    return sorted(odd)


@contextlib.contextmanager
def _no_service_starts(rootfs: Path) -> Iterator[None]:
    policy = rootfs / "usr/sbin/policy-rc.d"
    existed = policy.exists()
    if not existed:
        policy.write_text(_POLICY_RC)
        policy.chmod(0o755)
    try:
        yield
    finally:
        if not existed:
            policy.unlink(missing_ok=True)


class StageRunner:
    def __init__(self, log: StepLog, env: Mapping[str, str]) -> None:
        self.log = log
        self.env = dict(env)

    def _bash(
        self, script: str, cwd: Path, env: Mapping[str, str], stdin: str | None = None
    ) -> None:
        prelude = f"set -eo pipefail; source {shlex.quote(str(FUNCTIONS))}; "
        self.log.run(["bash", "-c", prelude + script], env=env, cwd=cwd, input_text=stdin)

    def _chroot(self, script: str, cwd: Path, env: Mapping[str, str]) -> None:
        self._bash("on_chroot", cwd, env, stdin=script)

    def run(self, stage_dir: Path, work_dir: Path, rootfs: Path) -> list[str]:
        """Run one stage on ``rootfs``; returns the names of the parts that ran."""
        stage_dir = stage_dir.resolve()
        ran: list[str] = []
        if (stage_dir / "SKIP").exists():
            self.log.note(f"{stage_dir.name}: SKIP file present, skipped")
            return ran
        stage_work = work_dir / stage_dir.name
        stage_work.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            **self.env,
            "STAGE": stage_dir.name,
            "STAGE_DIR": str(stage_dir),
            "STAGE_WORK_DIR": str(stage_work),
            "ROOTFS_DIR": str(rootfs),
            "WORK_DIR": str(work_dir),
            "LOG_FILE": str(self.log.path),
            "DEBIAN_FRONTEND": "noninteractive",
        }
        with mounts.chroot_mounts(rootfs), _no_service_starts(rootfs):
            prerun = stage_dir / "prerun.sh"
            if prerun.is_file() and os.access(prerun, os.X_OK):
                self._bash("./prerun.sh", stage_dir, env)
                ran.append("prerun.sh")
            for sub in sub_stages(stage_dir):
                odd = unknown_files(sub)
                if odd:
                    self.log.warn(f"{sub.name}: pi-gen ignores {', '.join(odd)} (name typo?)")
                sub_env = {**env, "SUB_STAGE_DIR": str(sub)}
                for i in (f"{n:02d}" for n in range(100)):
                    ran += self._run_index(sub, i, sub_env, stage_work)
        return ran

    def _run_index(self, sub: Path, i: str, env: dict[str, str], stage_work: Path) -> list[str]:
        ran = []
        debconf = sub / f"{i}-debconf"
        if debconf.is_file():
            self._chroot(
                f"debconf-set-selections <<'SELEOF'\n{debconf.read_text()}\nSELEOF\n", sub, env
            )
            ran.append(f"{sub.name}/{debconf.name}")
        for kind, flags in (("packages-nr", "--no-install-recommends "), ("packages", "")):
            path = sub / f"{i}-{kind}"
            if path.is_file():
                names = packages(path)
                if names:
                    self._chroot(f"apt-get install {flags}-y {' '.join(names)}\n", sub, env)
                ran.append(f"{sub.name}/{path.name}")
        patches = sub / f"{i}-patches"
        if patches.is_dir():
            quilt_env = {**env, "QUILT_PATCHES": str(patches), "QUILT_NO_DIFF_INDEX": "1"}
            self._bash(
                'quilt upgrade; rc=0; quilt push -a || rc=$?; [ "$rc" = 0 ] || [ "$rc" = 2 ]',
                stage_work,
                quilt_env,
            )
            ran.append(f"{sub.name}/{patches.name}")
        run_sh = sub / f"{i}-run.sh"
        if run_sh.is_file() and os.access(run_sh, os.X_OK):
            self._bash(f"./{run_sh.name}", sub, env)
            ran.append(f"{sub.name}/{run_sh.name}")
        chroot_sh = sub / f"{i}-run-chroot.sh"
        if chroot_sh.is_file():
            self._chroot(chroot_sh.read_text(), sub, env)
            ran.append(f"{sub.name}/{chroot_sh.name}")
        return ran
