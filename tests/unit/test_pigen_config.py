"""The pi-gen config fragment ./build.sh --base raspios writes, against pi-gen's build.sh.

pi-gen's build.sh at the pinned commit (ca8aeed0) sets ``BASE_DIR`` to its own
directory, exports it, then sources ``config`` and the ``-c`` fragment, then
refuses a config where FIRST_USER_NAME does not match ``^[a-z][-a-z0-9_]*$``,
``DISABLE_FIRST_BOOT_USER_RENAME=1`` comes without ``FIRST_USER_PASS``,
``PUBKEY_ONLY_SSH=1`` without ``PUBKEY_SSH_FIRST_USER``, or ``WPA_PASSWORD``
is not 8-63 characters. ``raspios.refusals`` is those checks read from its
source; with a pi-gen checkout in PIGEN_DIR the same fragment also goes
through the check block cut from the real build.sh.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from picluster.imagebuild import raspios, settings
from picluster.imagebuild.steps import StepLog

REPO = Path(__file__).resolve().parents[2]
STAGE = REPO / "stage-cluster"


@pytest.fixture
def fragment(tmp_path) -> tuple[dict[str, str], Path]:
    s = settings.load(REPO / "config")
    extra = {
        "PICLUSTER_WHEELS": "/w",
        "PICLUSTER_SECRET_FILE": "/s",
        "BASE_DIR": str(REPO),
        "DEPLOY_DIR": "/ours",
    }
    values = raspios.pigen_values(
        s, f"stage0 stage1 stage2 {STAGE}", tmp_path / "pw", tmp_path / "pd", extra
    )
    path = tmp_path / "pi-gen.config"
    path.write_text(raspios.render(values))
    return values, path


def sourced(path: Path, *names: str) -> dict[str, str]:
    """Variables after pi-gen's order: BASE_DIR first, then the fragment."""
    script = f'BASE_DIR=/pi-gen; export BASE_DIR; source "$1"; for v in {" ".join(names)}; do '
    script += 'printf "%s=%s\\n" "$v" "${!v-<unset>}"; done'
    out = subprocess.run(["bash", "-c", script, "x", str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return dict(line.split("=", 1) for line in out.stdout.splitlines())


def test_fragment_leaves_pigen_its_own_base_dir(fragment):
    values, path = fragment
    assert not set(raspios.PIGEN_OWNS) & set(values)
    got = sourced(path, "BASE_DIR", "DEPLOY_COMPRESSION", "STAGE_LIST", "FIRST_USER_PASS")
    assert got["BASE_DIR"] == "/pi-gen"
    assert got["DEPLOY_COMPRESSION"] == "none", "we unpack nothing: pi-gen leaves the raw .img"
    assert got["STAGE_LIST"].endswith(str(STAGE))
    assert got["FIRST_USER_PASS"] == "<unset>"


def test_fragment_exports_what_stage_scripts_read(fragment, tmp_path):
    _, path = fragment
    script = 'source "$1"; bash -c \'echo "$FIRST_USER_NAME $PICLUSTER_SECRET_FILE $IMG_NAME"\''
    out = subprocess.run(["bash", "-c", script, "x", str(path)], capture_output=True, text=True)
    assert out.stdout.split() == ["pi", "/s", "picluster"]


def test_repo_config_passes_pigens_checks(fragment):
    values, _ = fragment
    assert raspios.refusals(values) == []


@pytest.mark.parametrize(
    ("change", "refused"),
    [
        ({"DISABLE_FIRST_BOOT_USER_RENAME": "1"}, "needs FIRST_USER_PASS"),
        ({"PUBKEY_ONLY_SSH": "1"}, "needs PUBKEY_SSH_FIRST_USER"),
        ({"FIRST_USER_NAME": "Pi"}, "FIRST_USER_NAME"),
        ({"WPA_PASSWORD": "short"}, "WPA_PASSWORD"),
    ],
)
def test_refusals_match_pigens(fragment, change, refused):
    values, _ = fragment
    assert any(refused in r for r in raspios.refusals({**values, **change}))


def _real_checks(pigen: Path) -> str:
    """The lines of pi-gen's build.sh from its user-name check to its first log line."""
    text = (pigen / "build.sh").read_text()
    start = text.index("#check username is valid")
    return text[start : text.index('log "Begin ${BASE_DIR}"', start)]


@pytest.mark.skipif(not os.environ.get("PIGEN_DIR"), reason="PIGEN_DIR (a pi-gen checkout) unset")
@pytest.mark.parametrize(
    ("change", "accepted"),
    [
        ({}, True),
        ({"DISABLE_FIRST_BOOT_USER_RENAME": "1"}, False),
        ({"PUBKEY_ONLY_SSH": "1"}, False),
    ],
)
def test_real_pigen_checks_agree(fragment, tmp_path, change, accepted):
    values, _ = fragment
    path = tmp_path / "changed.config"
    path.write_text(raspios.render({**values, **change}))
    script = 'log() { echo "$*"; }; source "$1"; ' + _real_checks(Path(os.environ["PIGEN_DIR"]))
    proc = subprocess.run(["bash", "-c", script, "x", str(path)], capture_output=True, text=True)
    assert (proc.returncode == 0) == accepted, proc.stdout + proc.stderr
    assert (raspios.refusals({**values, **change}) == []) == accepted


@pytest.mark.parametrize("name", ["2026-12-03-picluster.img", "image_2026-12-03-picluster.img.xz"])
def test_raw_image_from_pigens_deploy_names(tmp_path, name):
    """pi-gen's names (IMG_FILENAME for none, ARCHIVE_FILENAME + .img.xz for xz) become
    work/<name>.img, raw: what bmaptool, xz and the manifest's raw_image want."""
    deploy = tmp_path / "pi-gen-deploy"
    deploy.mkdir()
    payload = b"\x00" * 510 + b"\x55\xaa"
    (deploy / "2026-12-03-picluster.info").write_text("info")
    if name.endswith(".xz"):
        subprocess.run(["xz", "-c"], input=payload, stdout=(deploy / name).open("wb"), check=True)
    else:
        (deploy / name).write_bytes(payload)
    log = StepLog(tmp_path / "log")
    try:
        raw = raspios.raw_image(deploy, "picluster", tmp_path / "picluster.img", log)
    finally:
        log.close()
    assert raw == tmp_path / "picluster.img" and raw.read_bytes() == payload
    assert not (deploy / name).exists()
