"""No ghosts (issue 14), on loopback with a real ipcontroller: a restored engine
that never beats is not listed, and the agent's unregistration query answers."""

import asyncio
import json
import os
import subprocess
import sys

import pytest

from picluster import config, secret
from picluster.connection import engine_info
from picluster.controller import controller_argv, controller_env
from picluster.engines import unregister
from picluster.paths import Paths
from tests.unit.test_connection import free_base_port, wait_file

GHOSTS = {"0": "picluster:gone:0:aaaa", "1": "picluster:gone:1:bbbb"}


@pytest.fixture
def restored(tmp_path):
    """``picluster.ipcontroller`` as the agent starts it, with two ghosts to restore."""
    cfg = config.parse(
        f'[cluster]\nbase_port = {free_base_port()}\n[controller]\nlisten = "127.0.0.1"\n'
    )
    keys = secret.Keys.derive(secret.generate())
    paths = Paths(tmp_path / "cfg", tmp_path / "secret", tmp_path / "state")
    paths.ipython_dir.mkdir(parents=True)
    (paths.profile_dir / "log").mkdir(parents=True)
    state = {"engines": GHOSTS, "next_id": 2}
    (paths.profile_dir / "log" / "engines.json").write_text(json.dumps(state))
    proc = subprocess.Popen(
        controller_argv(cfg, paths), env=controller_env(keys, cfg, paths),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        wait_file(paths.profile_dir / "security" / "ipcontroller-client.json", proc)
        yield cfg, keys
    finally:
        os.killpg(proc.pid, 9)
        proc.wait()


def test_restored_engines_are_listed_only_once_they_beat(restored):
    cfg, keys = restored
    info = engine_info("127.0.0.1", cfg.cluster.base_port, keys, curve=cfg.cluster.curve)
    ghosts = {int(k): v for k, v in GHOSTS.items()}
    # The hub answers, and lists none of them: nothing to unregister, no work for them.
    assert asyncio.run(unregister(info, keys, cfg.cluster.curve, ghosts, timeout=20)) == []


def test_unregister_without_a_controller_gives_up_in_time():
    keys = secret.Keys.derive(secret.generate())
    info = engine_info("127.0.0.1", free_base_port(), keys, curve=True)
    assert asyncio.run(unregister(info, keys, True, {0: "x"}, timeout=0.5)) is None


def test_the_agent_starts_our_ipcontroller():
    cfg = config.parse("")
    paths = Paths.resolve()
    assert controller_argv(cfg, paths)[:3] == [sys.executable, "-m", "picluster.ipcontroller"]
