"""Our connection dicts must equal what a real ipcontroller writes (no root,
loopback only), and an engine given ours through IPP_CONNECTION_INFO registers."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from picluster import config, secret
from picluster.connection import client_info, engine_info, ports_argument
from picluster.controller import controller_env
from picluster.engines import engine_argv, engine_env
from picluster.paths import Paths


def free_base_port() -> int:
    for base in range(52000, 60000, 40):
        ok = True
        for port in range(base, base + 30):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    pytest.fail("no free range of 30 ports on loopback")


def wait_file(path: Path, proc: subprocess.Popen, deadline: float = 60) -> dict:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if path.exists() and path.stat().st_size:
            return json.loads(path.read_text())
        if proc.poll() is not None:
            pytest.fail(f"ipcontroller exited with {proc.returncode} before writing {path.name}")
        time.sleep(0.1)
    pytest.fail(f"ipcontroller did not write {path} within {deadline} s")


@pytest.fixture(params=[False, True], ids=["hmac", "curve"])
def controller(request, tmp_path):
    curve = request.param
    cfg = config.parse(
        f"[cluster]\nbase_port = {free_base_port()}\ncurve = {str(curve).lower()}\n"
        '[controller]\nlisten = "127.0.0.1"\n'
    )
    keys = secret.Keys.derive(secret.generate())
    paths = Paths(tmp_path / "cfg", tmp_path / "secret", tmp_path / "state")
    paths.ipython_dir.mkdir(parents=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "ipyparallel.controller", f"--profile-dir={paths.profile_dir}",
         "--ip=127.0.0.1", f"--ports={ports_argument(cfg.cluster.base_port)}"],
        env=controller_env(keys, cfg, paths), stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        yield cfg, keys, paths, proc
    finally:
        os.killpg(proc.pid, 9)
        proc.wait()


def test_dicts_match_ipcontroller(controller):
    cfg, keys, paths, proc = controller
    security = paths.profile_dir / "security"
    written_engine = wait_file(security / "ipcontroller-engine.json", proc)
    written_client = wait_file(security / "ipcontroller-client.json", proc)
    base, curve = cfg.cluster.base_port, cfg.cluster.curve
    ours_engine = engine_info("127.0.0.1", base, keys, curve=curve)
    ours_client = client_info("127.0.0.1", base, keys, curve=curve)
    for ours, written in ((ours_engine, written_engine), (ours_client, written_client)):
        written.pop("location")
        ours.pop("location")
        assert ours == written


def test_engine_joins_with_built_dict(controller, monkeypatch):
    import ipyparallel as ipp

    cfg, keys, paths, _ = controller
    info = engine_info("127.0.0.1", cfg.cluster.base_port, keys, curve=cfg.cluster.curve)
    env = engine_env(info, keys, cfg, paths)
    engine = subprocess.Popen(engine_argv("picluster:unit:0:abcd", cfg), env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)  # fmt: skip
    try:
        if cfg.cluster.curve:
            monkeypatch.setenv("IPP_CURVE_SERVERKEY", keys.curve().server_public.decode())
        rc = ipp.Client(
            client_info("127.0.0.1", cfg.cluster.base_port, keys, curve=cfg.cluster.curve),
            timeout=30,
        )
        try:
            rc.wait_for_engines(1, timeout=60)
            assert list(rc._engines.values()) == ["picluster:unit:0:abcd"]
            assert rc[:].apply_sync(lambda: 6 * 7) == [42]
        finally:
            rc.close()
    finally:
        os.killpg(engine.pid, 9)
        engine.wait()


def test_key_is_not_on_the_command_line():
    cfg = config.Config()
    keys = secret.Keys.derive(bytes(32))
    argv = " ".join(engine_argv("picluster:h:0:x", cfg))
    assert keys.ipp_key not in argv


def test_engines_do_not_inherit_the_way_to_the_secret(tmp_path, monkeypatch):
    """Code run on an engine sees derived keys, not systemd's credential directory."""
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", "/run/credentials/picluster-agent.service")
    monkeypatch.setenv("IPP_CONNECTION_FILE", "/elsewhere.json")
    cfg = config.Config()
    keys = secret.Keys.derive(bytes(32))
    paths = Paths(tmp_path / "c.toml", tmp_path / "s", tmp_path / "state")
    env = engine_env(engine_info("127.0.0.1", 47000, keys, curve=True), keys, cfg, paths)
    assert "CREDENTIALS_DIRECTORY" not in env and "IPP_CONNECTION_FILE" not in env
    assert bytes(32).hex() not in "".join(env.values())
