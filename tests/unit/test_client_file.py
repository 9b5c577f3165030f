"""`picluster client-file` run as root (the JupyterLab unit's ExecStartPre) for another user."""

from __future__ import annotations

import os
import pwd
import shutil
import tempfile
from pathlib import Path

import pytest

from picluster import secret
from picluster.cli import main

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="writes for another user: needs root")


@pytest.fixture
def home():
    """A home for ``nobody`` under a directory every user can traverse (tmp_path is 0700)."""
    top = Path(tempfile.mkdtemp(prefix="picluster-client-file-"))
    top.chmod(0o755)
    user = pwd.getpwnam("nobody")
    home = top / "home"
    home.mkdir()
    os.chown(home, user.pw_uid, user.pw_gid)
    try:
        yield home, user
    finally:
        shutil.rmtree(top)


def run(home: Path, tmp_path: Path) -> int:
    secret.write(tmp_path / "secret", secret.generate())
    return main([
        "client-file", "--user", "nobody", "--ipython-dir", str(home / ".ipython"),
        "--secret", str(tmp_path / "secret"), "--config", str(tmp_path / "absent.toml"),
    ])  # fmt: skip


def test_the_file_and_its_folders_belong_to_the_user(home, tmp_path):
    home, user = home
    assert run(home, tmp_path) == 0
    target = home / ".ipython/profile_default/security/ipcontroller-client.json"
    assert (target.stat().st_uid, target.stat().st_mode & 0o777) == (user.pw_uid, 0o600)
    for folder in (home / ".ipython", target.parent.parent, target.parent):
        assert folder.stat().st_uid == user.pw_uid, folder


def test_a_planted_symlink_leads_nowhere_root_could_write(home, tmp_path, capsys):
    home, _ = home
    victim = tmp_path.parent / f"{tmp_path.name}-root-owned"
    victim.mkdir(mode=0o755)
    try:
        profile = home / ".ipython/profile_default"
        profile.mkdir(parents=True)
        (profile / "security").symlink_to(victim)
        for folder in (home / ".ipython", profile):
            os.lchown(folder, home.stat().st_uid, home.stat().st_gid)
        assert run(home, tmp_path) == 78
        assert "cannot write" in capsys.readouterr().err
        assert victim.stat().st_uid == 0, "the target of the user's symlink was given away"
        assert list(victim.iterdir()) == []
    finally:
        shutil.rmtree(victim)
