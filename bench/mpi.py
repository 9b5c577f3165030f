"""MPI on the QEMU cluster: mpirun wall time and mpi4py allreduce across the VMs.

    sudo .venv/bin/python -m bench.mpi --engines 2 --runs 5

Boots the last build's image as the boot tier does (``picluster.vm``: one
controller VM and ``--engines`` seeded engine VMs, 1 vCPU and 1 GiB each, TCG,
on a bridge in a network namespace of its own), waits until every VM's engine
registered, then, as the first user on the controller over ssh, writes the
hostfile (``sudo picluster hostfile``) and runs one rank per core with the
image's ``mpirun``:

- ``helloworld`` (``python -m mpi4py.bench helloworld``): the wall time of the
  whole mpirun (ssh launch of prted on every other VM, Python and mpi4py start,
  MPI_Init, a barrier and a message along the ranks, teardown), read on the
  controller with ``date`` around it, so ssh from the host is not counted. The
  first run starts with cold page caches on the VMs; it is shown apart.
- ``allreduce``: a ``python -c`` program (no file to copy: the same path on every
  VM) timing ``comm.Allreduce`` of 8 bytes and of 1 MiB (float64 sums) inside
  MPI, the slowest rank's mean, plus the wall time of its mpirun.

The VMs are emulated (TCG, three VMs on two host cores): the figures show what
the path costs here, not a Pi's speed. Everything is powered off at the end.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

from picluster.vm.cluster import BootCluster, BootError, wait_for

REPO = Path(__file__).resolve().parents[1]
PYTHON = "/opt/picluster/bin/python"
HELLO = re.compile(r"^Hello, World! I am process +(\d+) of (\d+) on (\S+)\.$", re.MULTILINE)
ALLREDUCE = """
import json
import numpy as np
from mpi4py import MPI
comm = MPI.COMM_WORLD
out = {}
for count, reps in ((1, 200), (131072, 20)):
    a = np.ones(count)
    b = np.empty_like(a)
    comm.Allreduce(a, b)
    comm.Barrier()
    t = MPI.Wtime()
    for _ in range(reps):
        comm.Allreduce(a, b)
    took = (MPI.Wtime() - t) / reps
    assert b[0] == comm.size, b[0]
    out[a.nbytes] = comm.allreduce(took, op=MPI.MAX)
if comm.rank == 0:
    print("ALLREDUCE " + json.dumps({"ranks": comm.size, "seconds": out}))
"""


def timed(cluster: BootCluster, command: str) -> tuple[float, str]:
    """``command`` on the controller as the first user: seconds by the VM's clock, output."""
    proc = cluster.ssh(
        0, f"s=$(date +%s.%N); {command}; rc=$?; e=$(date +%s.%N); echo WALL $s $e $rc", 600
    )
    match = re.search(r"^WALL (\S+) (\S+) (\d+)$", proc.stdout, re.MULTILINE)
    if proc.returncode != 0 or match is None or match.group(3) != "0":
        sys.exit(f"{command} failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return float(match.group(2)) - float(match.group(1)), proc.stdout


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.mpi",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--engines", type=int, default=2, help="engine VMs (default 2)")
    parser.add_argument("--runs", type=int, default=5, help="helloworld runs (default 5)")
    parser.add_argument("--allreduce-runs", type=int, default=3, help="(default 3)")
    args = parser.parse_args()
    built = json.loads((REPO / "deploy" / "picluster.manifest.json").read_text())
    with tempfile.TemporaryDirectory(prefix="bench-mpi-", dir="/var/tmp") as tmp:
        cluster = BootCluster(
            image=Path(built["raw_image"]), secret=REPO / "deploy" / "picluster.secret",
            work=Path(tmp), engines=args.engines, memory_mb=1024, cpus=1, log=print,
        )  # fmt: skip
        try:
            cluster.prepare()
            cluster.start()
            started = time.monotonic()
            cluster.wait_ready(1500)
            want = {vm.name: vm.cpus for vm in cluster.vms}
            wait_for(
                lambda: all(cluster.registered().get(n, 0) >= c for n, c in want.items()),
                900, "not every VM's engines registered", 5,
            )  # fmt: skip
            print(f"cluster formed {time.monotonic() - started:.0f} s after QEMU started")
            names = sorted(f"{vm.name}.local" for vm in cluster.vms)
            wait_for(
                lambda: sorted(
                    line.split()[0] for line in cluster.ssh(
                        0, "sudo /opt/picluster/bin/picluster hostfile > hosts; cat hosts", 120
                    ).stdout.splitlines()
                ) == names,
                300, "picluster hostfile did not list every VM", 5,
            )  # fmt: skip
            ranks = sum(vm.cpus for vm in cluster.vms)
            run(cluster, ranks, args)
        except BootError as exc:
            sys.exit(f"bench.mpi: {exc}")
        finally:
            cluster.close()


def run(cluster: BootCluster, ranks: int, args: argparse.Namespace) -> None:
    mpirun = f"mpirun --hostfile hosts -n {ranks} {PYTHON}"
    hello = f"{mpirun} -m mpi4py.bench helloworld"
    print(f"$ {hello}")
    walls = []
    for i in range(args.runs):
        wall, out = timed(cluster, hello)
        hosts = {host for _, _, host in HELLO.findall(out)}
        if len(HELLO.findall(out)) != ranks or hosts != {vm.name for vm in cluster.vms}:
            sys.exit(f"helloworld did not run a rank on every VM:\n{out}")
        walls.append(wall)
        print(f"  run {i + 1}: {wall:.2f} s")
    reduce = f"{mpirun} -c {shlex.quote(ALLREDUCE)}"
    print(f"$ {mpirun} -c <allreduce loop>")
    results = []
    for i in range(args.allreduce_runs):
        wall, out = timed(cluster, reduce)
        found = re.search(r"^ALLREDUCE (.*)$", out, re.MULTILINE)
        if found is None:
            sys.exit(f"the allreduce program printed no result:\n{out}")
        seconds = json.loads(found.group(1))["seconds"]
        results.append((wall, seconds["8"], seconds["1048576"]))
        print(f"  run {i + 1}: mpirun {wall:.1f} s, allreduce 8 B {seconds['8'] * 1e3:.1f} ms, "
              f"1 MiB {seconds['1048576'] * 1e3:.0f} ms")  # fmt: skip
    print(f"\n{len(cluster.vms)} VMs x 1 vCPU, {ranks} ranks")
    print("| measurement | first run | median of the rest (min-max) |\n| --- | --- | --- |")
    rest = walls[1:] or walls
    print(f"| helloworld: mpirun wall (s) | {walls[0]:.2f} | {statistics.median(rest):.2f} "
          f"({min(rest):.2f}-{max(rest):.2f}) |")  # fmt: skip
    for label, index, scale, unit in (("mpirun wall", 0, 1, "s"), ("Allreduce 8 B", 1, 1e3, "ms"),
                                      ("Allreduce 1 MiB", 2, 1e3, "ms")):  # fmt: skip
        values = [r[index] * scale for r in results]
        later = values[1:] or values
        print(f"| allreduce: {label} ({unit}) | {values[0]:.1f} | {statistics.median(later):.1f} "
              f"({min(later):.1f}-{max(later):.1f}) |")  # fmt: skip


if __name__ == "__main__":
    main()
