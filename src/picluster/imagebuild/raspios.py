"""The Raspberry Pi OS base: real pi-gen at a pinned commit runs our stage.

``STAGE_LIST="stage0 stage1 stage2 <abs>/stage-cluster"`` with ``SKIP_IMAGES``
in stage2, so pi-gen exports only the cluster image. Needs the pi-gen
repository and the Raspberry Pi archive (archive.raspberrypi.com).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import urllib.request
from pathlib import Path

from picluster.imagebuild.settings import Settings, shell_exports
from picluster.imagebuild.steps import BuildError, StepLog

RPI_ARCHIVE = "http://archive.raspberrypi.com/debian/dists/{release}/InRelease"


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


def pigen_config(settings: Settings, stage: Path, deploy: Path, extra: dict[str, str]) -> str:
    values = {
        **shell_exports(settings),
        "STAGE_LIST": f"stage0 stage1 stage2 {stage.resolve()}",
        "DEPLOY_DIR": str(deploy.resolve()),
        **extra,
    }
    values.pop("FIRST_USER_PASS", None)
    lines = ["# written by picluster's build.sh for pi-gen"]
    lines += [f"export {k}={shlex.quote(v)}" for k, v in sorted(values.items())]
    return "\n".join(lines) + "\n"


def build(
    settings: Settings, stage: Path, work: Path, deploy: Path, extra: dict[str, str], log: StepLog
) -> tuple[Path, str]:
    pigen = checkout(settings, work, log)
    (pigen / "stage2" / "SKIP_IMAGES").touch()
    config = work / "pi-gen.config"
    config.write_text(pigen_config(settings, stage, deploy, extra))
    log.run(["./build.sh", "-c", str(config)], cwd=pigen)
    commit = subprocess.run(
        ["git", "-C", str(pigen), "rev-parse", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    images = sorted(deploy.glob(f"*{settings.img_name}*.img*"), key=lambda p: p.stat().st_mtime)
    if not images:
        raise BuildError(f"pi-gen finished but wrote no image into {deploy}")
    return images[-1], commit or settings.pigen_commit
