"""Runtime benchmarks (issue 2): formation, discovery latency, throughput,
controller restart. Needs root (network namespaces). Prints markdown.

    sudo .venv/bin/python -m bench.runtime all
    sudo .venv/bin/python -m bench.runtime formation --hosts 1 4 16 --engines 2 4
    sudo .venv/bin/python -m bench.runtime curve --runs 3   # CurveZMQ on vs off
    sudo .venv/bin/python -m bench.runtime heal --runs 3    # issue 14, before/after
    sudo .venv/bin/python -m bench.runtime records          # sealed mDNS records vs before
    sudo .venv/bin/python -m bench.runtime bytecode         # issue 17: the engines' guard
    sudo .venv/bin/python -m bench.runtime name             # issue 17: a card naming itself
    sudo .venv/bin/python -m bench.runtime dask --runs 5    # become_dask vs LocalCluster

Every ratio compares two measurements taken in the same run, one after the
other, on the same machine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from picluster import secret
from tests.harness.cluster import REPO, Cluster

POLL = """
import time
t0 = {t0}
while len(rc.ids) < {n}:
    if time.time() - t0 > {deadline}:
        raise SystemExit(f"only {{len(rc.ids)}} of {n} engines after {deadline} s")
    time.sleep(0.02)
result = time.time() - t0
"""


def cluster_formation(hosts: int, per_node: int, deadline: float = 900) -> float:
    """Agents on the controller and every engine host started together -> all registered."""
    tmp = Path(tempfile.mkdtemp(prefix="bench-"))
    c = Cluster(tmp)
    s = secret.generate()
    try:
        ctl = c.add("controller", "[engines]\non_controller = 0\n", s, start=False)
        nodes = [c.add(f"engine-{i}", f"[engines]\nper_node = {per_node}\n", s, start=False)
                 for i in range(1, hosts + 1)]  # fmt: skip
        t0 = time.time()
        ctl.start()
        for node in nodes:
            node.start()
        code = POLL.format(t0=t0, n=hosts * per_node, deadline=deadline)
        return c.client(code, s, ctl.host.address, timeout=deadline + 120)
    finally:
        c.close()
        shutil.rmtree(tmp, ignore_errors=True)


def ipcluster_formation(n: int, deadline: float = 900) -> float:
    """What ``ipcluster start -n N`` does, on one host (loopback) -> all registered.

    Uses ipyparallel's own Cluster API (the code behind ``ipcluster start``) so
    that it can be stopped cleanly; killing the ipcluster process group leaves
    engines behind.
    """
    import ipyparallel as ipp

    tmp = Path(tempfile.mkdtemp(prefix="bench-ipc-"))
    os.environ["IPYTHONDIR"] = str(tmp)
    cluster = ipp.Cluster(n=n, profile_dir=str(tmp / "profile"), log_level=40,
                          controller_ip="127.0.0.1")  # fmt: skip
    t0 = time.time()
    try:
        cluster.start_cluster_sync()
        rc = cluster.connect_client_sync()
        rc.wait_for_engines(n, timeout=deadline)
        elapsed = time.time() - t0
        rc.close()
        return elapsed
    finally:
        cluster.stop_cluster_sync()
        shutil.rmtree(tmp, ignore_errors=True)


def formation(args: argparse.Namespace) -> None:
    print("| hosts x engines | total | picluster (s) | ipcluster start (s) | ratio |")
    print("|---|---|---|---|---|")
    for hosts in args.hosts:
        for per_node in args.engines:
            ours = cluster_formation(hosts, per_node)
            theirs = ipcluster_formation(hosts * per_node)
            print(f"| {hosts} x {per_node} | {hosts * per_node} | {ours:.1f} | {theirs:.1f} "
                  f"| {ours / theirs:.2f} |", flush=True)  # fmt: skip


def discovery(args: argparse.Namespace) -> None:
    """Engine agent start -> its engine registered: as the engine sees it (the
    agent's state file says "registered") and as clients see it (the hub lists
    an engine at its next heartbeat tick)."""
    engine_side, client_side = discovery_samples(args.runs)
    for name, samples in (("engine side", engine_side), ("client side", client_side)):
        print(f"discovery latency ({name}) over {len(samples)} runs: {summary(samples)}")


def summary(samples: list[float]) -> str:
    samples = sorted(samples)
    p90 = samples[max(0, round(0.9 * len(samples)) - 1)]
    return (f"median {statistics.median(samples):.2f} s, p90 {p90:.2f} s "
            f"(samples: {', '.join(f'{x:.2f}' for x in samples)})")  # fmt: skip


def discovery_samples(runs: int) -> tuple[list[float], list[float]]:
    """``runs`` times: (engine side, client side) seconds from engine agent start."""
    tmp = Path(tempfile.mkdtemp(prefix="bench-"))
    c = Cluster(tmp)
    s = secret.generate()
    engine_side, client_side = [], []
    try:
        ctl = c.add("controller", "[engines]\non_controller = 0\n", s)
        node = c.add("engine-1", "[engines]\nper_node = 1\n", s, start=False)
        c.client("", s, ctl.host.address)  # controller up
        for i in range(runs):
            # The client connects first and polls from the moment we start the agent,
            # so its own start-up is not counted.
            go = tmp / f"go-{i}"
            ready = tmp / f"ready-{i}"
            run = c.start_client(GO_POLL.format(go=str(go), ready=str(ready)), s, ctl.host.address)
            while not ready.exists():
                time.sleep(0.01)
            t0 = time.time()
            go.write_text(repr(t0))
            node.start()
            while node.status().get("registered", 0) < 1:
                if time.time() - t0 > 120:
                    raise SystemExit("engine-1 never reported its engine registered")
                time.sleep(0.01)
            engine_side.append(time.time() - t0)
            client_side.append(run.result())
            node.stop()
            c.client("import time\nwhile rc.ids: time.sleep(0.05)", s, ctl.host.address)
    finally:
        c.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return engine_side, client_side


# What an engine host's agent does to find the controller, alone: a fresh responder,
# the watcher, the first controller record it accepts (sealed: opened and checked).
WATCH = r"""
import asyncio, inspect, sys, time
from pathlib import Path
from picluster import secret
from picluster.discovery import ControllerWatcher, Found, open_zeroconf
keys = secret.Keys.derive(secret.load(Path(sys.argv[1])))
async def main():
    aiozc = open_zeroconf()
    got = asyncio.get_running_loop().create_future()
    def on_change(x):
        if isinstance(x, Found) and not got.done():
            got.set_result(x)
    sealed = len(inspect.signature(ControllerWatcher).parameters) == 4
    args = [aiozc, "picluster", *([keys.record_key] if sealed else []), on_change]
    watcher = ControllerWatcher(*args)
    t0 = time.perf_counter()
    await watcher.start()
    await asyncio.wait_for(got, 30)
    print(time.perf_counter() - t0)
    await watcher.close()
    await aiozc.async_close()
asyncio.run(main())
"""


def lookup_samples(runs: int, srcs: dict[str, Path | None]) -> dict[str, list[float]]:
    """The controller record found by a fresh watcher, each arm's code in turn, against
    one controller (the working tree's: the old code reads its TXT, extra fields and all)."""
    tmp = Path(tempfile.mkdtemp(prefix="bench-"))
    c = Cluster(tmp)
    s = secret.generate()
    out: dict[str, list[float]] = {arm: [] for arm in srcs}
    try:
        ctl = c.add("controller", "[engines]\non_controller = 0\n", s)
        c.client("", s, ctl.host.address)  # controller up and announced
        secret.write(tmp / "watch-secret", s)
        for _ in range(runs):
            for arm, src in srcs.items():
                with agents_from(src):
                    got = c.client_host.run(sys.executable, "-c", WATCH, str(tmp / "watch-secret"))
                out[arm].append(float(got.stdout.split()[-1]))
    finally:
        c.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def records(args: argparse.Namespace) -> None:
    """Discovery latency with sealed (authenticated) mDNS records vs before (issue 14).

    "Before" is the last commit's runtime (``head_src``: the code without the
    seal) on the agents' PYTHONPATH; "sealed" is the working tree. The two
    alternate in one run. The lookup column is the part the seal touches (a
    fresh watcher until it accepts the controller record, ``WATCH``); the
    end-to-end columns (blocks of ``--runs`` on a fresh LAN each) also carry
    every other uncommitted change. Also timed: sealing and opening one record
    on this CPU, the MAC's own share.
    """
    import timeit

    from picluster.discovery import Resolved, open_info
    from picluster.records import CONTROLLER_TYPE, ControllerRecord, Freshness, seal

    tmp = Path(tempfile.mkdtemp(prefix="bench-before-"))
    srcs = {"before": head_src(tmp), "sealed": None}
    arms: dict[str, list[float]] = {"before": [], "sealed": []}
    clients: dict[str, list[float]] = {"before": [], "sealed": []}
    try:
        lookups = lookup_samples(args.runs * args.rounds, srcs)
        for _ in range(args.rounds):
            for arm, src in srcs.items():
                with agents_from(src):
                    engine_side, client_side = discovery_samples(args.runs)
                arms[arm] += engine_side
                clients[arm] += client_side
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    keys = secret.Keys.derive(secret.generate())
    rec = ControllerRecord("picluster", 47000, "9.2.0", "a1b2c3d4e5f6", keys.fingerprint, True)

    def seal_and_open() -> object:
        props = seal(rec, keys.record_key, service_type=CONTROLLER_TYPE, port=47000,
                     addresses=["10.0.0.1"], fresh=Freshness(1, 0))  # fmt: skip
        info = Resolved(CONTROLLER_TYPE, "picluster." + CONTROLLER_TYPE, props, ["10.0.0.1"], 47000)
        return open_info(info, "picluster", keys.record_key)

    n = 20000
    per_record = timeit.timeit(seal_and_open, number=n) / n
    print(f"{args.rounds} alternating blocks of {args.runs} runs per arm, 1 engine host x 1\n")
    print("| records | mDNS lookup (watcher) | engine side | client side |")
    print("| --- | --- | --- | --- |")
    for arm in arms:
        print(f"| {arm} | {summary(lookups[arm])} | {summary(arms[arm])} | "
              f"{summary(clients[arm])} |")  # fmt: skip
    for name, got in (("mDNS lookup", lookups), ("engine side", arms)):
        ratio = statistics.median(got["sealed"]) / statistics.median(got["before"])
        print(f"median {name} sealed/before: {ratio:.3f}")
    print(f"sealing + opening one record on this CPU: {per_record * 1e6:.0f} µs")


GO_POLL = """
import time
from pathlib import Path
rc.ids
Path({ready!r}).write_text("")
while not Path({go!r}).exists():
    time.sleep(0.005)
t0 = float(Path({go!r}).read_text())
while not rc.ids:
    time.sleep(0.01)
result = time.time() - t0
"""

TASKS = """
import time
rc.wait_for_engines({n}, timeout=300)
view = rc.load_balanced_view()
t = time.perf_counter()
out = view.map_sync(lambda x: x, range({tasks}))
assert out == list(range({tasks}))
result = time.perf_counter() - t
"""


def throughput(args: argparse.Namespace) -> None:
    import ipyparallel as ipp

    hosts, per_node, tasks = args.hosts_n, args.per_node, args.tasks
    n = hosts * per_node
    tmp = Path(tempfile.mkdtemp(prefix="bench-"))
    c = Cluster(tmp)
    s = secret.generate()
    try:
        ctl = c.add("controller", "[engines]\non_controller = 0\n", s)
        for i in range(1, hosts + 1):
            c.add(f"engine-{i}", f"[engines]\nper_node = {per_node}\n", s)
        ours = c.client(TASKS.format(n=n, tasks=tasks), s, ctl.host.address, timeout=900)
    finally:
        c.close()
    with ipp.Cluster(n=n, log_level=40) as rc:
        rc.wait_for_engines(n, timeout=300)
        view = rc.load_balanced_view()
        t = time.perf_counter()
        out = view.map_sync(lambda x: x, range(tasks))
        assert out == list(range(tasks))
        theirs = time.perf_counter() - t
    print(f"{tasks} tiny tasks, {n} engines: picluster {tasks / ours:.0f} tasks/s "
          f"({ours:.1f} s), local ipcluster {tasks / theirs:.0f} tasks/s ({theirs:.1f} s), "
          f"ratio {theirs / ours:.2f}")  # fmt: skip


FORMED_THEN_TASKS = (
    POLL
    + """
view = rc.load_balanced_view()
t = time.perf_counter()
assert view.map_sync(lambda x: x, range({tasks})) == list(range({tasks}))
result = (result, time.perf_counter() - t)
"""
)


def curve_cost(hosts: int, per_node: int, tasks: int, curve: bool) -> tuple[float, float]:
    """(formation seconds, tasks per second) of one cluster with ``curve`` on or off."""
    tmp = Path(tempfile.mkdtemp(prefix="bench-"))
    c = Cluster(tmp)
    s = secret.generate()
    setting = f"[cluster]\ncurve = {str(curve).lower()}\n"
    try:
        ctl = c.add("controller", setting + "[engines]\non_controller = 0\n", s, start=False)
        nodes = [c.add(f"engine-{i}", setting + f"[engines]\nper_node = {per_node}\n", s,
                       start=False) for i in range(1, hosts + 1)]  # fmt: skip
        t0 = time.time()
        for node in (ctl, *nodes):
            node.start()
        code = FORMED_THEN_TASKS.format(t0=t0, n=hosts * per_node, deadline=600, tasks=tasks)
        formed, took = c.start_client(code, s, ctl.host.address, curve=curve).result(1200)
        return formed, tasks / took
    finally:
        c.close()
        shutil.rmtree(tmp, ignore_errors=True)


def curve(args: argparse.Namespace) -> None:
    """CurveZMQ on vs off, alternating in one run: formation and load-balanced throughput."""
    runs: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
    for _ in range(args.runs):
        for mode in (True, False):
            runs[mode].append(curve_cost(args.hosts_n, args.per_node, args.tasks, mode))
    n = args.hosts_n * args.per_node
    print(f"{args.hosts_n} engine hosts x {args.per_node}, {args.tasks} tiny tasks, "
          f"median of {args.runs} alternating runs\n")  # fmt: skip
    print("| curve | formation (s) | tasks/s |\n| --- | --- | --- |")
    med = {m: (statistics.median(f for f, _ in r), statistics.median(t for _, t in r))
           for m, r in runs.items()}  # fmt: skip
    for mode in (True, False):
        print(f"| {'on' if mode else 'off'} | {med[mode][0]:.1f} | {med[mode][1]:.0f} |")
    print(f"\n{n} engines: formation on/off {med[True][0] / med[False][0]:.2f}, "
          f"throughput on/off {med[True][1] / med[False][1]:.2f}")  # fmt: skip


def restart(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench-"))
    c = Cluster(tmp)
    s = secret.generate()
    hosts, per_node = args.hosts_n, args.per_node
    n = hosts * per_node
    try:
        ctl = c.add("controller", "[engines]\non_controller = 0\n", s)
        for i in range(1, hosts + 1):
            c.add(f"engine-{i}", f"[engines]\nper_node = {per_node}\n", s)
        c.client(f"rc.wait_for_engines({n}, timeout=300)", s, ctl.host.address)
        results = []
        for _ in range(args.runs):
            ctl.kill()
            t0 = time.time()
            ctl.start()
            results.append(c.client(POLL.format(t0=t0, n=n, deadline=300), s, ctl.host.address))
    finally:
        c.close()
    print(f"controller restart -> all {n} engines back: "
          + ", ".join(f"{r:.1f} s" for r in results))  # fmt: skip


# -- healing (issue 14): re-address and restart, before/after side by side -------------


@contextlib.contextmanager
def agents_from(src: Path | None):
    """Agents started inside this block run the picluster in ``src`` (None: this tree)."""
    saved = os.environ.get("PYTHONPATH")
    if src is not None:
        os.environ["PYTHONPATH"] = str(src)
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved


def head_src(tmp: Path) -> Path:
    """The last commit's ``src/`` (the code before this change), exported read-only."""
    subprocess.run(f"git -C {REPO} archive HEAD src | tar -x -C {tmp}", shell=True, check=True)
    return tmp / "src"


def readdress(node, last_octet: int) -> None:
    """What ``steps.readdress`` does: the new address added, the old one removed."""
    host = node.host
    new = host.address.rsplit(".", 1)[0] + f".{last_octet}"
    host.run("sysctl", "-qw", "net.ipv4.conf.eth0.promote_secondaries=1")
    host.run("ip", "addr", "add", f"{new}/24", "dev", "eth0")
    host.run("ip", "addr", "del", f"{host.address}/24", "dev", "eth0")
    host.address = new


def heal_runs(what: str, src: Path | None, args: argparse.Namespace) -> list[float | None]:
    """Seconds from the fault (re-address / controller power cut + start) until every
    engine answers through the controller; None when not back within ``--deadline``."""
    from tests.cluster.steps import ENGINES_BACK

    tmp = Path(tempfile.mkdtemp(prefix="bench-"))
    c = Cluster(tmp)
    s = secret.generate()
    hosts, per_node = args.hosts_n, args.per_node
    want = sorted(f"engine-{i}" for i in range(1, hosts + 1) for _ in range(per_node))
    out: list[float | None] = []
    try:
        with agents_from(src):
            ctl = c.add("controller", "[engines]\non_controller = 0\n", s)
            for i in range(1, hosts + 1):
                c.add(f"engine-{i}", f"[engines]\nper_node = {per_node}\n", s)
            c.client(f"rc.wait_for_engines({len(want)}, timeout=300)", s, ctl.host.address)
            for run in range(args.runs):
                t0 = time.time()
                if what == "readdress":
                    readdress(ctl, 200 + run)
                else:
                    ctl.kill()
                    t0 = time.time()
                    ctl.start()
                code = ENGINES_BACK.format(t0=t0, deadline=args.deadline, want=want)
                got = c.client(code, s, ctl.host.address, timeout=args.deadline + 120)
                back = got["got"] == want and got["took"] <= args.deadline
                out.append(got["took"] if back else None)
                if not back:
                    break  # the cluster did not heal: later runs would measure nothing
    finally:
        c.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def heal(args: argparse.Namespace) -> None:
    """Re-address -> engines back and controller restart -> engines back, with the
    last commit's picluster (before) and this tree's (after), in one run."""
    tmp = Path(tempfile.mkdtemp(prefix="bench-head-"))
    try:
        before = head_src(tmp)
        rows = []
        for what in ("readdress", "restart"):
            for label, src in (("before (HEAD)", before), ("after (this tree)", None)):
                rows.append((what, label, heal_runs(what, src, args)))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    n = args.hosts_n * args.per_node
    print(f"{args.hosts_n} engine hosts x {args.per_node} ({n} engines, controller runs none), "
          f"{args.runs} runs each, deadline {args.deadline:.0f} s\n")  # fmt: skip
    print("| fault -> all engines answer | code | runs (s) | median (s) |")
    print("| --- | --- | --- | --- |")
    for what, label, runs in rows:
        shown = ", ".join("not back" if r is None else f"{r:.1f}" for r in runs)
        done = [r for r in runs if r is not None]
        med = f"{statistics.median(done):.1f}" if len(done) == len(runs) else "-"
        fault = "controller re-addressed" if what == "readdress" else "controller power cut + start"
        print(f"| {fault} | {label} | {shown} | {med} |")


# -- the foreign-bytecode guard (issue 17): guarded engine vs stock engine -----------------


BYTECODE_CLIENT = """
import json, statistics, sys, time
import ipyparallel as ipp

def work(n=50):
    total = 0
    for i in range(n):
        total += sum(j * j for j in range(i))
    return {"n": n, "total": total, "parts": [str(i) for i in range(3)]}

rc = ipp.Client(json.loads(sys.argv[1]), timeout=60)
rc.wait_for_engines(2, timeout=120)
by_kind = {v.split(":")[2]: k for k, v in rc._engines.items()}
out = {}
for name, fn in (("lambda", lambda: 1), ("function", work)):
    for kind, eid in by_kind.items():
        rc[eid].apply_sync(fn)  # warm
    samples = {kind: [] for kind in by_kind}
    for _ in range(int(sys.argv[2])):
        for kind, eid in by_kind.items():
            t = time.perf_counter()
            rc[eid].apply_sync(fn)
            samples[kind].append(time.perf_counter() - t)
    out[name] = {kind: statistics.median(s) for kind, s in samples.items()}
rc.close()
print(json.dumps(out))
"""


def free_loopback_ports(first: int = 53000) -> int:
    """A base port with the 30 ports of ipyparallel's layout free on loopback."""
    import socket

    for base in range(first, first + 8000, 40):
        with contextlib.ExitStack() as stack:
            try:
                for port in range(base, base + 30):
                    sock = stack.enter_context(socket.socket())
                    sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return base
    raise SystemExit("no 30 free ports on loopback")


def bytecode(args: argparse.Namespace) -> None:
    """One apply's round trip to a guarded engine (``picluster.ipengine``) and to a stock
    one (``ipyparallel.engine``) of the same controller, alternating; and the check alone."""
    import timeit

    from picluster import config
    from picluster.connection import client_info, engine_info
    from picluster.controller import controller_argv, controller_env
    from picluster.engines import engine_argv, engine_env
    from picluster.ipengine import foreign_reason
    from picluster.paths import Paths

    tmp = Path(tempfile.mkdtemp(prefix="bench-bytecode-"))
    cfg = config.parse(f"[cluster]\nbase_port = {free_loopback_ports()}\ncurve = false\n"
                       '[controller]\nlisten = "127.0.0.1"\n')  # fmt: skip
    keys = secret.Keys.derive(secret.generate())
    paths = Paths(tmp / "cfg", tmp / "secret", tmp / "state")
    paths.ipython_dir.mkdir(parents=True)
    base = cfg.cluster.base_port
    procs = [subprocess.Popen(controller_argv(cfg, paths), env=controller_env(keys, cfg, paths),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)]  # fmt: skip
    env = engine_env(engine_info("127.0.0.1", base, keys, curve=False), keys, cfg, paths)
    for kind, module in (("guarded", "picluster.ipengine"), ("stock", "ipyparallel.engine")):
        argv = [module if a == "picluster.ipengine" else a
                for a in engine_argv(f"picluster:bench:{kind}:0", cfg)]  # fmt: skip
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
        procs.append(subprocess.Popen(argv, env=env, start_new_session=True, **quiet))
    try:
        info = json.dumps(client_info("127.0.0.1", base, keys, curve=False))
        out = subprocess.run([sys.executable, "-c", BYTECODE_CLIENT, info, str(args.runs)],
                             capture_output=True, text=True, check=True, timeout=900)  # fmt: skip
        medians = json.loads(out.stdout)
    finally:
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, 9)
            p.wait()
        shutil.rmtree(tmp, ignore_errors=True)

    def work(n=50):
        total = 0
        for i in range(n):
            total += sum(j * j for j in range(i))
        return {"n": n, "total": total, "parts": [str(i) for i in range(3)]}

    codes = [work.__code__, *(c for c in work.__code__.co_consts if hasattr(c, "co_code"))]
    loops = 20000
    check_us = timeit.timeit(lambda: [foreign_reason(c.co_code) for c in codes], number=loops)
    check_us = check_us / loops * 1e6
    print(f"apply_sync round trip, median of {args.runs} alternating calls per engine "
          f"(loopback, one controller, curve off)\n")  # fmt: skip
    print("| function sent | stock engine (ms) | guarded engine (ms) | guarded/stock |")
    print("| --- | --- | --- | --- |")
    for name, m in medians.items():
        print(f"| {name} | {m['stock'] * 1e3:.2f} | {m['guarded'] * 1e3:.2f} | "
              f"{m['guarded'] / m['stock']:.2f} |")  # fmt: skip
    print(
        f"\nthe check alone, the 'function' ({len(codes)} code objects, "
        f"{sum(len(c.co_code) for c in codes)} bytes of bytecode): {check_us:.1f} us"
    )


def naming(args: argparse.Namespace) -> None:
    """issue 17: ``picluster name`` on an unnamed card alone on its LAN (no clash), each
    run a fresh etc dir, so every run is a first boot: its own time, and Python's import
    of the command line alone for comparison."""
    from tests.harness.netns import Lan

    tmp = Path(tempfile.mkdtemp(prefix="bench-name-"))
    lan = Lan(f"bn{os.getpid() % 100000}")
    try:
        host = lan.add_host("card")
        secret.write(tmp / "secret", secret.generate())
        (tmp / "cluster.toml").write_text("")
        paths = ["--config", str(tmp / "cluster.toml"), "--secret", str(tmp / "secret"),
                 "--state-dir", str(tmp / "state")]  # fmt: skip
        took = []
        for run in range(args.runs):
            etc = tmp / f"etc{run}"
            etc.mkdir()
            t0 = time.monotonic()
            host.run(
                "env", f"PICLUSTER_ETC_DIR={etc}", "unshare", "--uts", "--", "sh", "-c",
                'hostname raspberrypi && exec "$@"', "sh",
                sys.executable, "-m", "picluster", "name", *paths,
            )  # fmt: skip
            took.append(time.monotonic() - t0)
        t0 = time.monotonic()
        host.run(sys.executable, "-c", "import picluster.cli")
        imported = time.monotonic() - t0
    finally:
        lan.close()
        shutil.rmtree(tmp, ignore_errors=True)
    print("| first-boot `picluster name` (s) | median | min | max | import picluster.cli (s) |")
    print("| --- | --- | --- | --- | --- |")
    print(f"| {args.runs} runs | {statistics.median(took):.2f} | {min(took):.2f} | "
          f"{max(took):.2f} | {imported:.2f} |")  # fmt: skip


# -- Dask (rc.become_dask) on the discovered cluster vs a LocalCluster ---------------------


DASK_CLIENT = """
import math, socket, time
from pathlib import Path
import dask.array as da
import dask.config
from distributed import Client, LocalCluster
from distributed.security import Security
from picluster import dasktls

# What picluster jupyter writes for its user (~/.config/dask), here in this process
dask.config.set(dasktls.settings(dasktls.write(Path(P["tls"]), dasktls.derive(keys))))


def workload():
    size, chunk = P["size"], P["chunk"]
    x = da.fromfunction(lambda i, j: (i * 7 + j * 13) % 101, shape=(size, size),
                        chunks=(chunk, chunk), dtype=float)
    y = da.sin(x) + x * 0.5
    return [y.sum(), y.mean(axis=0).sum(), y.std(), (y + y.T).max()]


def timed(client):
    t = time.perf_counter()
    values = client.compute(workload(), sync=True)
    return time.perf_counter() - t, [float(v) for v in values]


def session_leader():
    import os

    return os.getsid(0) == os.getpid()


def same(a, b):
    return all(math.isclose(x, y, rel_tol=1e-12) for x, y in zip(a, b, strict=True))


n = P["n"]
rc.wait_for_engines(n, timeout=300)
t = time.perf_counter()
ours = rc.become_dask()
ours.wait_for_workers(n, timeout=300)
started = {"picluster": time.perf_counter() - t}
hosts = sorted(ours.run(socket.gethostname).values())
threads = {"picluster": sorted(ours.nthreads().values())}
assert set(ours.run(session_leader).values()) == {True}
answer = timed(ours)[1]  # warm-up, and the answer every cluster must give
times, blocks = {}, {}
# Each engine runs in a session of its own; so does each LocalCluster worker here (under
# Linux's autogroup scheduling a session shares the CPU as one group), except in the
# last one. (distributed runs a preload's text twice: import, then reload.)
own_session = {"preload": ["import os; os.getsid(0) == os.getpid() or os.setsid()"]}
tls = {"protocol": "tls", "security": Security(require_encryption=True)}
# One LocalCluster at a time (its scheduler and nannies live in this process), each
# timed alternately with the picluster one.
for arm, extra, leader in (("local", own_session, True), ("local tls", own_session | tls, True),
                           ("local one session", {}, False)):
    t = time.perf_counter()
    with LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                      dashboard_address="127.0.0.1:0", **extra) as cluster, \
            Client(cluster) as local:
        local.wait_for_workers(n, timeout=300)
        started[arm] = time.perf_counter() - t
        assert set(local.run(session_leader).values()) == {leader}, arm
        threads[arm] = sorted(local.nthreads().values())
        assert same(timed(local)[1], answer), arm  # warm-up
        times[arm], blocks[arm] = [], []
        for _ in range(P["runs"]):
            for client, into in ((ours, blocks[arm]), (local, times[arm])):
                took, got = timed(client)
                assert same(got, answer), (arm, got, answer)
                into.append(took)
ours.close()
rc.stop_dask()
assert all(t == [1] * n for t in threads.values()), threads
result = {"times": times, "blocks": blocks, "started": started, "hosts": hosts,
          "answer": answer}
"""


def dask_bench(args: argparse.Namespace) -> None:
    """The same fixed dask.array workload (no random numbers: the array is a function of
    its indices, made on the workers; an elementwise op, a transpose, four reductions)
    on ``rc.become_dask()`` of a discovered namespace cluster (workers in the engines,
    TLS, the scheduler in the controller's hub) and on ``distributed.LocalCluster``s
    with as many single-threaded worker processes (plain TCP, and TLS with the same
    certificates), started by one client on the client host; one LocalCluster at a
    time, each timed alternately with the picluster cluster.

    Each engine is a session of its own (``picluster.process``), and with the kernel's
    autogroup scheduling each session gets its own share of a busy CPU: the
    LocalCluster workers call ``setsid`` too, and one LocalCluster keeps them in the
    client's session to show the difference that makes."""
    tmp = Path(tempfile.mkdtemp(prefix="bench-dask-"))
    c = Cluster(tmp)
    s = secret.generate()
    hosts, per_node = args.hosts_n, args.per_node
    n = hosts * per_node
    params = {"n": n, "size": args.size, "chunk": args.chunk, "runs": args.runs,
              "tls": str(tmp / "client-dask-tls")}  # fmt: skip
    try:
        ctl = c.add("controller", "[engines]\non_controller = 0\n", s)
        for i in range(1, hosts + 1):
            c.add(f"engine-{i}", f"[engines]\nper_node = {per_node}\n", s)
        code = f"P = {json.dumps(params)}\n" + DASK_CLIENT
        got = c.client(code, s, ctl.host.address, timeout=1800)
    finally:
        c.close()
        shutil.rmtree(tmp, ignore_errors=True)
    chunks = ((args.size + args.chunk - 1) // args.chunk) ** 2
    print(f"{hosts} engine hosts x {per_node} engines ({n} Dask workers, 1 thread each; "
          f"the controller runs the scheduler and no engine), a {args.size} x {args.size} "
          f"float64 array in {chunks} chunks of {args.chunk} x {args.chunk}; "
          f"one LocalCluster at a time, {args.runs} runs each after a warm-up, alternating "
          f"with the picluster cluster\n")  # fmt: skip
    print(f"workers on: {', '.join(got['hosts'])}; every cluster gave the same answers "
          f"{[float(f'{v:.6g}') for v in got['answer']]}\n")  # fmt: skip

    def spread(times: list[float]) -> str:
        return f"{statistics.median(times):.2f} ({min(times):.2f}-{max(times):.2f})"

    print(f"picluster `rc.become_dask()` until {n} workers: {got['started']['picluster']:.1f} s\n")
    print("| LocalCluster | start (s) | LocalCluster: median (min-max) s "
          "| picluster, alternating: median (min-max) s | picluster / LocalCluster |")  # fmt: skip
    print("| --- | --- | --- | --- | --- |")
    names = {"local": "tcp", "local tls": "TLS (the same certificates)",
             "local one session": "tcp, workers in the client's session"}  # fmt: skip
    for arm, block in got["blocks"].items():
        local, ours = got["times"][arm], block
        ratio = statistics.median(ours) / statistics.median(local)
        print(f"| {names[arm]} | {got['started'][arm]:.1f} | {spread(local)} | {spread(ours)} "
              f"| {ratio:.2f} |")  # fmt: skip


def main() -> None:
    if os.geteuid() != 0:
        sys.exit("bench.runtime needs root (network namespaces)")
    parser = argparse.ArgumentParser(
        prog="python -m bench.runtime",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("formation")
    p.add_argument("--hosts", type=int, nargs="+", default=[1, 4, 16, 64])
    p.add_argument("--engines", type=int, nargs="+", default=[2, 4])
    p.set_defaults(func=formation)
    p = sub.add_parser("discovery")
    p.add_argument("--runs", type=int, default=10)
    p.set_defaults(func=discovery)
    p = sub.add_parser("records", help="discovery latency, sealed mDNS records vs before")
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--rounds", type=int, default=2)
    p.set_defaults(func=records)
    p = sub.add_parser("heal", help="re-address and restart -> engines back, before/after")
    p.add_argument("--hosts-n", type=int, default=4)
    p.add_argument("--per-node", type=int, default=2)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--deadline", type=float, default=60.0)
    p.set_defaults(func=heal)
    p = sub.add_parser("bytecode", help="issue 17: apply to a guarded engine vs a stock one")
    p.add_argument("--runs", type=int, default=500)
    p.set_defaults(func=bytecode)
    p = sub.add_parser("name", help="issue 17: a card's first-boot picluster name")
    p.add_argument("--runs", type=int, default=5)
    p.set_defaults(func=naming)
    p = sub.add_parser("dask", help="rc.become_dask() on the cluster vs a LocalCluster")
    p.add_argument("--hosts-n", type=int, default=2)
    p.add_argument("--per-node", type=int, default=1)
    p.add_argument("--size", type=int, default=8000, help="the array is SIZE x SIZE")
    p.add_argument("--chunk", type=int, default=1000, help="chunks of CHUNK x CHUNK")
    p.add_argument("--runs", type=int, default=5)
    p.set_defaults(func=dask_bench)
    for name, func in (("throughput", throughput), ("restart", restart), ("curve", curve)):
        p = sub.add_parser(name)
        p.add_argument("--hosts-n", type=int, default=4)
        p.add_argument("--per-node", type=int, default=2)
        p.add_argument("--tasks", type=int, default=10000)
        p.add_argument("--runs", type=int, default=3)
        p.set_defaults(func=func)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
