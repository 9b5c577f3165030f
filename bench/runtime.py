"""Runtime benchmarks (issue 2): formation, discovery latency, throughput,
controller restart. Needs root (network namespaces). Prints markdown.

    sudo .venv/bin/python -m bench.runtime all
    sudo .venv/bin/python -m bench.runtime formation --hosts 1 4 16 --engines 2 4
    sudo .venv/bin/python -m bench.runtime curve --runs 3   # CurveZMQ on vs off

Every ratio compares two measurements taken in the same run, one after the
other, on the same machine.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from picluster import secret
from tests.harness.cluster import Cluster

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
    tmp = Path(tempfile.mkdtemp(prefix="bench-"))
    c = Cluster(tmp)
    s = secret.generate()
    engine_side, client_side = [], []
    try:
        ctl = c.add("controller", "[engines]\non_controller = 0\n", s)
        node = c.add("engine-1", "[engines]\nper_node = 1\n", s, start=False)
        c.client("", s, ctl.host.address)  # controller up
        for i in range(args.runs):
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
    for name, samples in (("engine side", engine_side), ("client side", client_side)):
        samples.sort()
        p90 = samples[max(0, round(0.9 * len(samples)) - 1)]
        print(f"discovery latency ({name}) over {len(samples)} runs: median "
              f"{statistics.median(samples):.2f} s, p90 {p90:.2f} s "
              f"(samples: {', '.join(f'{x:.2f}' for x in samples)})")  # fmt: skip


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
