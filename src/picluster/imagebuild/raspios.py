"""The Raspberry Pi OS base: real pi-gen at a pinned commit runs our stage.

pi-gen's ``build.sh`` sets its own ``BASE_DIR`` and then sources ``config`` and
our ``-c`` fragment, so the fragment (``pigen_config``) never sets the variables
pi-gen derives itself (``BASE_DIR``, ``SCRIPT_DIR``...), only what pi-gen reads
and what our stage reads (``PICLUSTER_*``, exported so stage scripts see them).
``STAGE_LIST="stage0 stage1 stage2 <abs>/stage-cluster"`` with ``SKIP_IMAGES``
in stage2, so pi-gen exports only the cluster image.

Outputs: pi-gen's export-image writes ``<DEPLOY_DIR>/<IMG_FILENAME><IMG_SUFFIX>.img``
for ``DEPLOY_COMPRESSION=none`` (else ``image_<date>-<IMG_NAME><IMG_SUFFIX>.img.xz``
and the like). We ask for ``none`` into a scratch deploy dir and move that raw
image to ``work/<name>.img``; ``raw_image`` decompresses a compressed one should
a config fragment force it. ``deploy/`` then gets the same artefacts as the
debian base (``.img.xz``, ``.bmap``, ``.sha256``, ``.manifest.json``) from
``picluster.imagebuild.deploy``.

Needs the pi-gen repository and the Raspberry Pi archive (archive.raspberrypi.com).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from picluster.imagebuild.settings import Settings, shell_exports
from picluster.imagebuild.steps import BuildError, StepLog

RPI_ARCHIVE = "http://archive.raspberrypi.com/debian/dists/{release}/InRelease"
PIGEN_OWNS = ("BASE_DIR", "SCRIPT_DIR", "STAGE_DIR", "ROOTFS_DIR", "STAGE_WORK_DIR")
"""Variables pi-gen's build.sh derives itself: a config that sets them breaks it."""
WORK = "pi-gen-work"
DEPLOY = "pi-gen-deploy"
_COMPRESSED = {".xz": ["xz", "-dc"], ".gz": ["gzip", "-dc"], ".zip": ["unzip", "-p"]}


def reachable(settings: Settings, timeout: float = 15.0) -> tuple[bool, str]:
    """Whether pi-gen and the Raspberry Pi archive answer; the reason when not."""
    url = RPI_ARCHIVE.format(release=settings.release)
    try:
        with urllib.request.urlopen(url, timeout=timeout):  # noqa: S310 - fixed http(s) URL
            pass
    except OSError as exc:
        return False, f"Raspberry Pi archive unreachable ({url}: {exc})"
    if os.environ.get("PIGEN_DIR"):
        return True, "PIGEN_DIR set"
    try:
        subprocess.run(
            ["git", "ls-remote", "--exit-code", settings.pigen_repo, settings.pigen_branch],
            capture_output=True,
            timeout=timeout,
            check=True,
            env={**os.environ, "GIT_TERMINAL_PROMPT": "0"},
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return False, f"pi-gen repository unreachable ({settings.pigen_repo}: {exc})"
    return True, "pi-gen and the Raspberry Pi archive answer"


def checkout(settings: Settings, work: Path, log: StepLog) -> Path:
    """pi-gen at the pinned commit (or ``PIGEN_DIR`` as it is)."""
    if os.environ.get("PIGEN_DIR"):
        return Path(os.environ["PIGEN_DIR"]).resolve()
    dest = work / "pi-gen"
    if not (dest / ".git").is_dir():
        log.run(["git", "clone", "--branch", settings.pigen_branch, settings.pigen_repo, str(dest)])
    log.run(["git", "-C", str(dest), "fetch", "--quiet", "origin", settings.pigen_commit])
    log.run(["git", "-C", str(dest), "checkout", "--quiet", "--force", settings.pigen_commit])
    return dest


def pigen_values(
    settings: Settings, stage_list: str, work_dir: Path, deploy_dir: Path, extra: Mapping[str, str]
) -> dict[str, str]:
    """What the ``-c`` fragment exports: our settings and stage variables, pi-gen's
    work and deploy dirs, an uncompressed image (we compress it ourselves)."""
    values = {**shell_exports(settings), **extra}
    for name in (*PIGEN_OWNS, "FIRST_USER_PASS"):
        values.pop(name, None)
    values.update(
        STAGE_LIST=stage_list,
        WORK_DIR=str(work_dir),
        DEPLOY_DIR=str(deploy_dir),
        DEPLOY_COMPRESSION="none",
    )
    return values


def render(values: Mapping[str, str]) -> str:
    lines = ["# written by picluster's build.sh for pi-gen's build.sh -c"]
    lines += [f"export {k}={shlex.quote(v)}" for k, v in sorted(values.items())]
    return "\n".join(lines) + "\n"


def refusals(values: Mapping[str, str]) -> list[str]:
    """What pi-gen's build.sh (at the pinned commit) refuses in a config, checked here
    first so the message is ours. Read from its build.sh: FIRST_USER_NAME must match
    ``^[a-z][-a-z0-9_]*$``; ``DISABLE_FIRST_BOOT_USER_RENAME=1`` needs
    ``FIRST_USER_PASS``; ``PUBKEY_ONLY_SSH=1`` needs ``PUBKEY_SSH_FIRST_USER``; a set
    ``WPA_PASSWORD`` is 8-63 characters; ``EXPORT_CONFIG_DIR`` must exist."""
    out = []
    if not re.fullmatch(r"[a-z][-a-z0-9_]*", values.get("FIRST_USER_NAME", "pi")):
        out.append("FIRST_USER_NAME: pi-gen wants ^[a-z][-a-z0-9_]*$")
    if values.get("DISABLE_FIRST_BOOT_USER_RENAME") == "1" and not values.get("FIRST_USER_PASS"):
        out.append("DISABLE_FIRST_BOOT_USER_RENAME=1 needs FIRST_USER_PASS")
    if values.get("PUBKEY_ONLY_SSH") == "1" and not values.get("PUBKEY_SSH_FIRST_USER"):
        out.append("PUBKEY_ONLY_SSH=1 needs PUBKEY_SSH_FIRST_USER")
    wpa = values.get("WPA_PASSWORD", "")
    if wpa and not 8 <= len(wpa) <= 63:
        out.append("WPA_PASSWORD must be 8-63 characters")
    export_dir = values.get("EXPORT_CONFIG_DIR")
    if export_dir and not Path(export_dir).is_dir():
        out.append(f"EXPORT_CONFIG_DIR={export_dir} does not exist")
    return out


def raw_image(pigen_deploy: Path, img_name: str, dest: Path, log: StepLog) -> Path:
    """pi-gen's image from its deploy dir as a raw ``dest`` (moved, or decompressed)."""
    found = sorted(
        (p for p in pigen_deploy.iterdir() if img_name in p.name and ".img" in p.name
         and not p.name.endswith((".bmap", ".info", ".sbom.xz"))),
        key=lambda p: p.stat().st_mtime,
    )  # fmt: skip
    if not found:
        names = ", ".join(sorted(p.name for p in pigen_deploy.iterdir())) or "nothing"
        raise BuildError(f"pi-gen finished but {pigen_deploy} holds no {img_name} image: {names}")
    image = found[-1]
    dest.unlink(missing_ok=True)
    if image.suffix == ".img":
        image.replace(dest)
        return dest
    tool = _COMPRESSED.get(image.suffix)
    if tool is None:
        raise BuildError(f"{image}: unknown pi-gen output (DEPLOY_COMPRESSION); expected .img")
    with os.fdopen(os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as fh:
        log.write(f"$ {' '.join(tool)} {image} > {dest}")
        subprocess.run([*tool, str(image)], stdout=fh, check=True)
    image.unlink()
    return dest


def build(
    settings: Settings, stage: Path, work: Path, extra: Mapping[str, str], log: StepLog
) -> tuple[Path, str, Path]:
    """Run pi-gen; returns the raw image, pi-gen's commit and our stage's root file system."""
    pigen = checkout(settings, work, log)
    (pigen / "stage2" / "SKIP_IMAGES").touch()
    pigen_work, pigen_deploy = work / WORK, work / DEPLOY
    shutil.rmtree(pigen_deploy, ignore_errors=True)
    pigen_deploy.mkdir(parents=True)
    values = pigen_values(
        settings, f"stage0 stage1 stage2 {stage.resolve()}", pigen_work, pigen_deploy, extra
    )
    problems = refusals(values)
    if problems:
        raise BuildError("pi-gen would refuse this config: " + "; ".join(problems))
    config = work / "pi-gen.config"
    config.write_text(render(values))
    log.run(["./build.sh", "-c", str(config)], cwd=pigen)
    commit = subprocess.run(
        ["git", "-C", str(pigen), "rev-parse", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    raw = raw_image(pigen_deploy, settings.img_name, work / f"{settings.img_name}.img", log)
    return raw, commit or settings.pigen_commit, pigen_work / stage.name / "rootfs"
