"""``./build.sh boot``: the image as a QEMU cluster on this machine, no Pi needed."""

from __future__ import annotations

import argparse
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from picluster.vm.cluster import PY, BootCluster, BootError

REPO = Path(__file__).resolve().parents[3]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "boot",
        help="boot the image as a virtual cluster in QEMU (controller + engine VMs)",
        description="Boot deploy/<name>.img(.xz) as one controller VM and N engine VMs on a "
        "private bridge in a new network namespace, with a DHCP server on the bridge. Each "
        "VM gets its own card seed, except --unseeded ones, which boot the image as built. "
        "Ctrl-C powers everything off and removes the namespace.",
    )
    p.add_argument("--image", type=Path, help="image (default: the last build's raw image)")
    p.add_argument("--secret", type=Path, help="the build's secret (default deploy/<name>.secret)")
    p.add_argument("--engines", type=int, default=2, help="seeded engine VMs (default 2)")
    p.add_argument(
        "--unseeded",
        type=int,
        default=0,
        help="extra engine VMs that boot the image as built, with no card seed: they take "
        "an address from the LAN's DHCP server and name themselves engine-<MAC> (default 0)",
    )
    p.add_argument("--memory", type=int, default=1024, help="MiB per VM (default 1024)")
    p.add_argument("--cpus", type=int, default=2, help="vCPUs per VM (default 2)")
    p.add_argument("--port", type=int, default=8888, help="JupyterLab on 127.0.0.1:PORT")
    p.add_argument("--work-dir", type=Path, default=REPO / "work" / "boot")
    p.add_argument(
        "--timeout", type=float, default=1800, help="seconds until the cluster must be up"
    )
    p.set_defaults(func=cmd_boot)


def _defaults(args: argparse.Namespace) -> tuple[Path, Path, dict[str, Any]]:
    manifests = sorted((REPO / "deploy").glob("*.manifest.json"), key=lambda p: p.stat().st_mtime)
    manifest = json.loads(manifests[-1].read_text()) if manifests else {}
    image = args.image or (Path(manifest["raw_image"]) if manifest else None)
    if image is None or not image.exists():
        raise BootError(
            "no image. Fix: sudo ./build.sh first, or pass --image deploy/<name>.img.xz"
        )
    name = manifest.get("name", "picluster")
    secret = args.secret or REPO / "deploy" / f"{name}.secret"
    if not secret.exists():
        raise BootError(f"{secret}: no secret. Fix: pass --secret with the build's secret file")
    return image, secret, manifest


def _table(cluster: BootCluster, registered: dict[str, int], elapsed: float) -> Table:
    t = Table(title=f"picluster in QEMU — {elapsed:.0f} s", title_justify="left")
    for col in ("VM", "address", "kernel", "booted", "ready", "engines registered", "state"):
        t.add_column(col)
    for vm in cluster.vms:
        phases = ("kernel", "booted", "ready")
        cells = [f"{vm.seen[p]:.0f} s" if p in vm.seen else "…" for p in phases]
        reg = registered.get(vm.name)
        address = cluster.address(vm) or "DHCP …"
        t.add_row(vm.name, address, *cells, str(reg) if reg else "…", vm.summary())
    return t


def cmd_boot(args: argparse.Namespace) -> int:
    console = Console(stderr=True)
    if os.geteuid() != 0:
        console.print("boot: needs root (network namespace, taps). Fix: sudo ./build.sh boot")
        return 2
    cluster: BootCluster | None = None

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        image, secret, _ = _defaults(args)
        cluster = BootCluster(
            image=image, secret=secret, work=args.work_dir, engines=args.engines,
            unseeded=args.unseeded, memory_mb=args.memory, cpus=args.cpus,
            log=lambda m: console.print(f"  {m}"),
        )  # fmt: skip
        cluster.prepare()
        cluster.start()
        cluster.forward(8888, args.port)
        start = time.monotonic()
        want = args.cpus * len(cluster.vms)
        registered: dict[str, int] = {}
        with Live(_table(cluster, registered, 0), console=console, refresh_per_second=1) as live:
            while True:
                elapsed = time.monotonic() - start
                # Each VM's state comes from the VM itself (ssh) or, for one without a
                # seed, from the LAN (picluster status), never from its console.
                if not cluster.observe():
                    registered = cluster.registered()
                live.update(_table(cluster, registered, elapsed))
                if sum(registered.values()) >= want:
                    break
                if elapsed > args.timeout:
                    raise BootError(
                        f"cluster not up after {args.timeout:.0f} s; "
                        f"serial logs in {args.work_dir}/serial"
                    )
                time.sleep(2)
        url = _url(secret, args.port)
        console.print(
            f"\n[bold green]cluster up[/]: {sum(registered.values())} engines. JupyterLab: {url}"
        )
        console.print(f"ssh: sudo ip netns exec {cluster.lan.name if cluster.lan else '?'} "
                      f"ssh -i {cluster.key} pi@10.213.0.10   — Ctrl-C powers off")  # fmt: skip
        while all(vm.alive() for vm in cluster.vms):
            time.sleep(1)
        return 1
    except BootError as exc:
        console.print(f"[bold red]boot failed[/]: {exc}")
        return 1
    except KeyboardInterrupt:
        console.print("powering off")
        return 0
    finally:
        if cluster:
            cluster.close()


def _url(secret: Path, port: int) -> str:
    import subprocess

    proc = subprocess.run(
        [*PY, "url", "--secret", str(secret), "--host", "127.0.0.1", "--port", str(port)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    return (
        proc.stdout.strip()
        or f"http://127.0.0.1:{port}/lab (token: picluster url on the controller)"
    )
