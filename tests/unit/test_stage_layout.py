"""stage-cluster/ against pi-gen's stage contract (DESIGN.md), without building anything."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from picluster.imagebuild import chroot_venv, stage

REPO = Path(__file__).resolve().parents[2]
STAGE = REPO / "stage-cluster"
NAME = re.compile(r"^\d\d-(debconf|packages-nr|packages|patches|run\.sh|run-chroot\.sh)$")


def sub_stage_dirs() -> list[Path]:
    return stage.sub_stages(STAGE)


def test_stage_has_prerun_and_export_image():
    prerun = STAGE / "prerun.sh"
    assert prerun.is_file() and os.access(prerun, os.X_OK), "prerun.sh must be executable"
    assert "copy_previous" in prerun.read_text()
    assert (STAGE / "EXPORT_IMAGE").is_file(), "pi-gen exports only stages with EXPORT_IMAGE"
    assert "IMG_SUFFIX" in (STAGE / "EXPORT_IMAGE").read_text()


def test_sub_stages_are_numbered_and_files_follow_the_contract():
    subs = sub_stage_dirs()
    assert subs, "no sub-stage directories"
    for sub in subs:
        assert re.match(r"^\d\d-[a-z0-9-]+$", sub.name), f"{sub.name}: sub-stages are NN-name"
        numbered = [p for p in sub.iterdir() if re.match(r"^\d\d-", p.name)]
        assert numbered, f"{sub.name}: no NN-* files, pi-gen would do nothing here"
        for entry in numbered:
            assert NAME.match(entry.name), f"{sub.name}/{entry.name}: pi-gen ignores this name"
        assert stage.unknown_files(sub) == []


def test_run_scripts_are_executable_and_parse():
    for script in STAGE.glob("*/*-run.sh"):
        assert os.access(script, os.X_OK), f"{script}: pi-gen skips a run.sh that is not executable"
    scripts = [STAGE / "prerun.sh", *STAGE.glob("*/*-run.sh"), *STAGE.glob("*/*-run-chroot.sh")]
    for script in scripts:
        proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert proc.returncode == 0, f"{script}: {proc.stderr}"


@pytest.mark.skipif(not shutil.which("shellcheck"), reason="shellcheck not installed")
def test_shell_is_shellcheck_clean():
    scripts = [
        REPO / "build.sh",
        STAGE / "prerun.sh",
        STAGE / "EXPORT_IMAGE",
        *STAGE.glob("*/*.sh"),
        REPO / "src/picluster/imagebuild/pigen_functions.sh",
    ]
    proc = subprocess.run(
        ["shellcheck", "--shell=bash", *map(str, scripts)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout


def test_package_files_parse_to_debian_package_names():
    files = [*STAGE.glob("*/*-packages"), *STAGE.glob("*/*-packages-nr")]
    assert files
    for path in files:
        names = stage.packages(path)
        assert names, f"{path}: empty"
        for name in names:
            assert re.match(r"^[a-z0-9][a-z0-9+.-]+$", name), f"{path}: {name!r} is not a package"


def test_package_parser_drops_comments_and_joins_lines(tmp_path):
    f = tmp_path / "00-packages"
    f.write_text("# comment\npython3 avahi-daemon  # mDNS\n\n  libnss-mdns\n")
    assert stage.packages(f) == ["python3", "avahi-daemon", "libnss-mdns"]


def test_unknown_files_are_reported(tmp_path):
    sub = tmp_path / "00-x"
    sub.mkdir()
    (sub / "00-run-chroot").write_text("true\n")
    (sub / "01-run.sh").write_text("true\n")
    assert stage.unknown_files(sub) == ["00-run-chroot"]


def test_requirements_lock_pins_every_wheel_by_hash():
    lock = STAGE / "00-venv" / "files" / "requirements.txt"
    pins = chroot_venv.pins(lock)
    names = {p[0] for p in pins}
    assert {"ipyparallel", "jupyterlab", "zeroconf", "pyzmq", "numpy", "pyyaml"} <= names
    assert lock.read_text().count("==") == len(pins), "a pin without a hash"
    tools = chroot_venv.pins(STAGE / "00-venv" / "files" / "installer.txt")
    assert [p[0] for p in tools] == ["installer"]


def test_a_lock_entry_without_hash_is_refused(tmp_path):
    lock = tmp_path / "requirements.txt"
    lock.write_text("numpy==2.0\n")
    with pytest.raises(chroot_venv.FetchError, match="Fix: regenerate it with"):
        chroot_venv.pins(lock)


STAGE_SCRIPTS = [STAGE / "prerun.sh", STAGE / "EXPORT_IMAGE", *STAGE.glob("*/*.sh")]


def test_stage_scripts_reference_nothing_outside_the_stage():
    """cp -r stage-cluster pi-gen/ (and build-docker.sh's COPY) must carry all it needs:
    no ../, no repository paths, no host picluster outside ./build.sh's fast path."""
    for script in STAGE_SCRIPTS:
        text = script.read_text()
        assert "../" not in text, f"{script.name}: reaches outside its sub-stage"
        assert "BASE_DIR" not in text, f"{script.name}: BASE_DIR is pi-gen's tree, not ours"
        for ref in re.findall(r"\bfiles/[\w./*-]+", text):
            if "*" in ref or ref.endswith("/"):
                continue
            assert (script.parent / ref).exists(), f"{script.name}: {ref} is not in the stage"
        for line in text.splitlines():
            if "PICLUSTER_PYTHON" in line and not line.lstrip().startswith("#"):
                assert "PICLUSTER_NATIVE" in text, f"{script.name}: host python without fallback"


def test_stage_files_are_real_files_inside_the_stage():
    """Symlinks out of the stage break under build-docker.sh (COPY . /pi-gen/)."""
    for path in STAGE.rglob("*"):
        assert not path.is_symlink(), f"{path.relative_to(STAGE)} is a symlink"
    assert (STAGE / "01-service/files/systemd/picluster-agent.service").is_file()
    assert (STAGE / "01-service/files/cloud-init/user-data").is_file()


def unit_values(path: Path, key: str) -> list[str]:
    values: list[str] = []
    for line in path.read_text().splitlines():
        if line.startswith(f"{key}="):
            values += line.split("=", 1)[1].split()
    return values


def test_units_do_not_wait_for_targets_that_wait_for_them():
    """Both units are WantedBy=multi-user.target, which orders after them; cloud-final
    (and so cloud-init.target) orders after multi-user: After= on either is a cycle
    that systemd breaks by not starting the unit at all (seen on the first VM boot)."""
    for unit in (STAGE / "01-service/files/systemd").glob("*.service"):
        after = unit_values(unit, "After")
        assert "multi-user.target" in unit_values(unit, "WantedBy"), unit.name
        for late in ("cloud-init.target", "cloud-final.service", "multi-user.target"):
            assert late not in after, f"{unit.name}: After={late} is an ordering cycle"


def test_units_run_unprivileged_with_the_secret_as_a_credential():
    for unit in (STAGE / "01-service/files/systemd").glob("*.service"):
        text = unit.read_text()
        user = unit_values(unit, "User")
        if unit.name == "picluster-jupyter.service":
            # Starts as root to read the secret and drop to [jupyter] user (users.become).
            assert user == [] and unit_values(unit, "ExecStart") == [
                "/opt/picluster/bin/picluster",
                "jupyter",
            ], unit.name
        else:
            assert user and user[0] != "root", f"{unit.name}: must not run as root"
        assert "LoadCredential=picluster-secret:/etc/picluster/secret" in text, unit.name
        assert "RestartPreventExitStatus=78" in text, unit.name


def test_the_chroot_venv_builder_needs_only_the_standard_library():
    """It runs from the wheel under the target's bare python3, before any dependency."""
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); "
        "import picluster.imagebuild.chroot_venv; "
        "print(sorted(m for m in ('pydantic', 'rich', 'yaml', 'zmq') if m in sys.modules))"
    )
    proc = subprocess.run(
        [sys.executable, "-I", "-S", "-c", code, str(REPO / "src")], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
