"""Where ``rc.become_dask()`` listens (``picluster.daskcluster``): the hub reads its
address and ports from the real ipcontroller command line; the scheduler's
defaults; and, in fresh processes with a real scheduler and workers on loopback, a
worker's HTTP server (its metrics) on 127.0.0.1 only unless it is told otherwise.

The workers listen on 127.0.0.2, a loopback address that is not 127.0.0.1:
unpatched, distributed serves a worker's HTTP routes on the worker's own address,
so the same check fails without ``patch_workers`` (the control below)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from picluster import config, daskcluster, dasktls
from picluster.connection import DASK_PORTS, ports_argument
from picluster.controller import controller_argv
from picluster.discovery import lan_addresses
from picluster.paths import Paths
from picluster.secret import Keys


def argv_for(toml: str, tmp_path: Path) -> list[str]:
    return controller_argv(config.parse(toml), Paths(tmp_path / "c", tmp_path / "s", tmp_path))


def test_hub_settings_from_the_real_controller_command_line(tmp_path):
    argv = argv_for('[cluster]\nbase_port = 51000\n[controller]\nlisten = "10.1.2.3"\n', tmp_path)
    assert daskcluster._hub_settings(argv[3:]) == ("10.1.2.3", 51000)
    # the defaults: every interface, the default range
    assert daskcluster._hub_settings(argv_for("", tmp_path)[3:]) == ("0.0.0.0", 47000)


def test_hub_settings_refuse_a_command_line_without_ports():
    with pytest.raises(SystemExit, match="--ports"):
        daskcluster._hub_settings(["--ip=10.1.2.3"])


def test_dask_ports_are_the_last_of_the_clusters_range():
    first, last = (int(p) for p in ports_argument(47000).split("-"))
    ports = {daskcluster.scheduler_port(47000), daskcluster.dashboard_port(47000)}
    assert ports == {last - 1, last}, (ports, first, last)
    assert len(set(DASK_PORTS.values())) == len(DASK_PORTS)
    assert daskcluster.dashboard_path(47000) == f"/proxy/{last}/status"


def test_scheduler_host_takes_an_explicit_listen_address():
    assert daskcluster.scheduler_host("10.1.2.3") == "10.1.2.3"
    assert daskcluster.scheduler_host("127.0.0.1") == "127.0.0.1"


def test_scheduler_host_for_every_interface_is_a_lan_address():
    ours = lan_addresses()
    for listen in daskcluster.ANY_ADDRESS:
        got = daskcluster.scheduler_host(listen)
        # never 127.0.1.1 (Debian's hostname entry), which no other Pi can reach
        assert got == (ours[0] if ours else daskcluster.LOOPBACK), (listen, got, ours)


def test_scheduler_defaults():
    got = daskcluster.scheduler_defaults("10.1.2.3", 47000)
    security = got.pop("security")
    assert got == {
        "host": "10.1.2.3",
        "port": 47028,
        "protocol": "tls",
        "dashboard_address": "127.0.0.1:47029",
    }
    assert security.require_encryption


# Run in a fresh interpreter: patch_workers changes classes process-wide.
WORKERS = """
import asyncio, json, sys
from picluster import daskcluster

if sys.argv[1] == "patched":
    daskcluster.patch_workers()  # before distributed is imported: the import hook

from distributed import Nanny, Scheduler, Worker


def http(worker):
    return sorted(s.getsockname()[0] for s in worker.http_server._sockets.values())


async def main():
    out = {}
    async with Scheduler(host="127.0.0.1", port=0, dashboard_address="127.0.0.1:0") as s:
        async with Worker(s.address, host="127.0.0.2", nthreads=1) as w:
            out["default"] = http(w)
        async with Worker(s.address, host="127.0.0.2", nthreads=1,
                          dashboard_address="127.0.0.2:0") as w:
            out["explicit"] = http(w)
        out["nanny"] = Nanny(s.address, host="127.0.0.2").worker_kwargs.get("dashboard_address")
        if sys.argv[1] == "control":
            daskcluster.patch_workers()  # distributed already imported: patched in place
            async with Worker(s.address, host="127.0.0.2", nthreads=1) as w:
                out["patched late"] = http(w)
        out["scheduler"] = s.address
    return out


print("RESULT " + json.dumps(asyncio.run(asyncio.wait_for(main(), 60))))
"""


def run_workers(mode: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", WORKERS, mode], capture_output=True, text=True, timeout=120
    )
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    assert out.returncode == 0 and lines, f"{out.stdout[-2000:]}\n{out.stderr[-4000:]}"
    return json.loads(lines[-1].removeprefix("RESULT "))


def test_patched_workers_serve_http_on_loopback_only():
    got = run_workers("patched")
    assert got["scheduler"].startswith("tcp://127.0.0.1:")
    assert got["default"] == ["127.0.0.1"], got
    assert got["explicit"] == ["127.0.0.2"], got  # an explicit address is respected
    # a nanny hands the same default to the worker process it starts
    assert got["nanny"] == "127.0.0.1:0", got


def test_unpatched_workers_serve_http_on_their_own_address():
    """The control: stock distributed binds the worker's address (on a Pi, the LAN)."""
    got = run_workers("control")
    assert got["default"] == ["127.0.0.2"], got
    assert got["explicit"] == ["127.0.0.2"], got
    assert got["nanny"] is None, got
    assert got["patched late"] == ["127.0.0.1"], got


# The hub's side, in a fresh interpreter (patch_hub changes ipyparallel's Hub class):
# the real Hub methods, patched, on a stand-in hub object that records its replies.
HUB = """
import asyncio, inspect, json, logging, socket, sys
from types import SimpleNamespace
from picluster import daskcluster
from ipyparallel.controller.hub import Hub

base = int(sys.argv[1])
argv = ["--profile-dir=/nonexistent", "--ip=127.0.0.1", f"--ports={base}-{base + 29}"]
daskcluster.patch_hub(argv)
daskcluster.patch_hub(argv)  # twice: the second changes nothing


class Session:
    def __init__(self):
        self.sent = []

    def send(self, stream, msg_type, content=None, parent=None, ident=None):
        self.sent.append([msg_type, content])


def listening(port):
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


async def main():
    hub = SimpleNamespace(distributed_scheduler=None, log=logging.getLogger("hub"),
                          session=Session(), query=None)
    out = {}
    for round in ("first", "again"):
        await Hub.become_dask(hub, b"client", {"content": {"scheduler_args": {}}})
        s = hub.distributed_scheduler
        out[round] = {"address": s.address, "tls": s.security.require_encryption,
                      "dashboard": s.http_server._sockets and sorted(
                          "%s:%d" % x.getsockname()[:2] for x in s.http_server._sockets.values()),
                      "listening": [listening(base + 28), listening(base + 29)]}
        stopped = Hub.stop_distributed(hub, b"client", {"content": {}})
        if inspect.isawaitable(stopped):  # as the hub's dispatch_query does
            await stopped
        out[round]["after stop"] = [listening(base + 28), listening(base + 29)]
    out["replies"] = hub.session.sent
    out["wrapped"] = hasattr(Hub.stop_distributed, "__wrapped__")
    return out


print("RESULT " + json.dumps(asyncio.run(asyncio.wait_for(main(), 60))))
"""


def free_base() -> int:
    """A base port whose Dask ports (base+28, base+29) are free on loopback."""
    import socket

    for base in range(52000, 60000, 30):
        with socket.socket() as a, socket.socket() as b:
            try:
                a.bind(("127.0.0.1", base + 28))
                b.bind(("127.0.0.1", base + 29))
            except OSError:
                continue
            return base
    raise AssertionError("no free port pair on loopback")


def test_hub_starts_the_scheduler_with_tls_and_really_stops_it(tmp_path):
    tls = dasktls.write(tmp_path / "dask-tls", dasktls.derive(Keys.derive(bytes(32))))
    base = free_base()
    out = subprocess.run(
        [sys.executable, "-c", HUB, str(base)],
        env=os.environ | dasktls.environment(tls), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    assert out.returncode == 0 and lines, f"{out.stdout[-2000:]}\n{out.stderr[-4000:]}"
    got = json.loads(lines[-1].removeprefix("RESULT "))
    for round in ("first", "again"):  # again: the fixed ports were free after the stop
        assert got[round] == {
            "address": f"tls://127.0.0.1:{base + 28}",
            "tls": True,
            "dashboard": [f"127.0.0.1:{base + 29}"],
            "listening": [True, True],
            "after stop": [False, False],
        }, got
    kinds = [reply[0] for reply in got["replies"]]
    assert kinds == ["become_dask_reply", "stop_distributed_reply"] * 2, got["replies"]
    assert got["replies"][0][1]["address"] == f"tls://127.0.0.1:{base + 28}"
    assert got["wrapped"]
