"""The debian base's stage runner follows pi-gen's order, on a tiny real chroot.

The chroot is a few host binaries copied with their libraries: enough for
``on_chroot`` to run real scripts inside it. Root is needed for chroot and the
/proc, /sys, /dev mounts the runner makes (and must undo).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from picluster.imagebuild import mounts
from picluster.imagebuild.stage import StageRunner
from picluster.imagebuild.steps import BuildError, StepLog

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (chroot, mounts)")


def tiny_root(root: Path) -> None:
    for tool in ("bash", "cat", "mountpoint", "echo", "sh"):
        binary = Path(shutil.which(tool) or f"/bin/{tool}").resolve()
        libs = subprocess.run(["ldd", str(binary)], capture_output=True, text=True).stdout
        for path in [str(binary), *(w for w in libs.split() if w.startswith("/"))]:
            dest = root / path.lstrip("/")
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, dest)
        for d in ("bin", "usr/bin"):
            (root / d).mkdir(parents=True, exist_ok=True)
            if not (root / d / tool).exists():
                (root / d / tool).symlink_to(binary)
    (root / "usr/sbin").mkdir(parents=True, exist_ok=True)


def write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def test_order_helpers_skip_and_cleanup(tmp_path):
    root = tmp_path / "rootfs"
    tiny_root(root)
    st = tmp_path / "stage-x"
    trace = tmp_path / "trace"
    write(st / "prerun.sh", f'#!/bin/bash\necho "prerun $STAGE" >> {trace}\n', 0o755)
    write(st / "00-a/00-run.sh", f'#!/bin/bash\necho "run $(basename $PWD)" >> {trace}\n', 0o755)
    write(
        st / "00-a/00-run-chroot.sh", "echo chroot-00 > /in-chroot\ntest -f /usr/sbin/policy-rc.d\n"
    )
    write(st / "00-a/01-run.sh", f"#!/bin/bash\necho not-executable >> {trace}\n", 0o644)
    write(st / "00-a/01-run-chroot.sh", "echo chroot-01 >> /in-chroot\n")
    write(st / "01-b/SKIP", "")
    write(st / "01-b/00-run.sh", f"#!/bin/bash\necho skipped >> {trace}\n", 0o755)
    write(
        st / "02-c/00-run.sh",
        f'#!/bin/bash\necho "c $ROOTFS_DIR $PICLUSTER_X" >> {trace}\n'
        "echo 'echo from-helper >> /in-chroot' | on_chroot\n",
        0o755,
    )
    log = StepLog(tmp_path / "log")
    ran = StageRunner(log, {"PICLUSTER_X": "y"}).run(st, tmp_path / "work", root)
    assert ran == [
        "prerun.sh",
        "00-a/00-run.sh",
        "00-a/00-run-chroot.sh",
        "00-a/01-run-chroot.sh",
        "02-c/00-run.sh",
    ]
    assert trace.read_text().splitlines() == ["prerun stage-x", "run 00-a", f"c {root} y"]
    assert (root / "in-chroot").read_text().splitlines() == [
        "chroot-00",
        "chroot-01",
        "from-helper",
    ]
    assert not (root / "usr/sbin/policy-rc.d").exists(), "policy-rc.d left behind"
    assert mounts.mounted_under(root) == [], "mounts left behind"


def test_failure_names_the_script_and_unmounts(tmp_path):
    root = tmp_path / "rootfs"
    tiny_root(root)
    st = tmp_path / "stage-y"
    write(st / "00-a/00-run-chroot.sh", "exit 3\n")
    log = StepLog(tmp_path / "log")
    with pytest.raises(BuildError, match="status 3"):
        StageRunner(log, {}).run(st, tmp_path / "work", root)
    assert mounts.mounted_under(root) == []


def test_stage_with_skip_file_does_nothing(tmp_path):
    st = tmp_path / "stage-z"
    write(st / "SKIP", "")
    write(st / "00-a/00-run.sh", "#!/bin/bash\nexit 1\n", 0o755)
    ran = StageRunner(StepLog(tmp_path / "log"), {}).run(st, tmp_path / "work", tmp_path / "r")
    assert ran == []
