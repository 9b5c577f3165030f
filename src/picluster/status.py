"""``picluster status``: the cluster as seen from this node.

Hosts come from the mDNS node records every agent publishes; "registered" is
the controller's own view when this node can read the secret (it asks the
controller with an ipyparallel Client), otherwise what each node reports about
its engines.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from picluster import config, secret
from picluster.connection import client_info
from picluster.discovery import browse, choose_address, open_zeroconf
from picluster.engines import host_of
from picluster.paths import Paths
from picluster.records import ControllerRecord, NodeRecord


@dataclass
class HostRow:
    host: str
    address: str
    role: str
    state: str
    engines: int
    reported: int
    registered: int | None = None
    problems: list[str] = field(default_factory=list)


@dataclass
class View:
    cluster: str
    controller: str | None
    controller_iid: str | None
    registered_total: int | None
    hosts: list[HostRow]
    problems: list[str]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def registered_per_host(address: str, rec: ControllerRecord, keys: secret.Keys) -> Counter[str]:
    """Ask the controller which engines it has; count them by the host in their uuid."""
    import ipyparallel as ipp  # slow import (seconds on a Pi): only when needed

    info = client_info(address, rec.base_port, keys, location=address, curve=rec.curve)
    client = ipp.Client(info, timeout=10)
    try:
        client.wait_for_engines(0, timeout=1)
        counts: Counter[str] = Counter()
        for uuid in client._engines.values():
            counts[host_of(uuid) or "?"] += 1
        return counts
    finally:
        client.close()


def build_view(
    cluster: str,
    controllers: list[tuple[ControllerRecord, list[str], str]],
    nodes: list[tuple[NodeRecord, list[str]]],
    keys: secret.Keys | None,
) -> View:
    problems: list[str] = []
    mine = [c for c in controllers if c[0].cluster == cluster]
    ctl_rec, ctl_addr = None, None
    if not mine:
        problems.append(
            f"controller not seen: nothing announces {cluster}._ipyparallel._tcp.local. "
            "(is the controller on, and does this network pass multicast?)"
        )
    else:
        ctl_rec, addrs, _ = mine[0]
        ctl_addr = choose_address(addrs)
    rows = []
    for rec, addrs in nodes:
        if rec.cluster != cluster:
            continue
        row = HostRow(
            host=rec.host,
            address=choose_address(addrs) or "",
            role=rec.role,
            state=rec.state,
            engines=rec.engines,
            reported=rec.registered,
        )
        if ctl_rec and rec.fp != ctl_rec.fp:
            row.problems.append(
                f"key fingerprint does not match: {rec.fp} here, {ctl_rec.fp} on the "
                "controller (wrong secret on this card)"
            )
        if rec.state == "duplicate-controller":
            row.problems.append(f"two controllers with the cluster name {cluster!r}")
        elif rec.state not in ("running", "waiting", "starting", "fingerprint-mismatch"):
            row.problems.append(rec.state)
        rows.append(row)
    total = None
    if ctl_rec and ctl_addr and keys is not None and keys.fingerprint == ctl_rec.fp:
        try:
            counts = registered_per_host(ctl_addr, ctl_rec, keys)
        except Exception as exc:
            problems.append(f"could not ask the controller at {ctl_addr}: {exc}")
        else:
            total = sum(counts.values())
            for row in rows:
                row.registered = counts.get(row.host, 0)
    for row in rows:
        got = row.registered if row.registered is not None else row.reported
        if row.engines and got < row.engines and not row.problems:
            row.problems.append(f"{got} of {row.engines} engines registered")
    rows.sort(key=lambda r: (r.role != "controller", r.host))
    return View(
        cluster=cluster,
        controller=ctl_addr,
        controller_iid=ctl_rec.iid if ctl_rec else None,
        registered_total=total,
        hosts=rows,
        problems=problems,
    )


def gather(paths: Paths, seconds: float) -> View:
    cfg = config.load(paths.config)
    keys = None
    # Not readable by this user: show what mDNS says.
    with contextlib.suppress(secret.SecretError):
        keys = secret.Keys.derive(secret.load(secret.credential_path(paths.secret)))

    async def scan() -> tuple[Any, Any]:
        aiozc = open_zeroconf()
        try:
            return await browse(aiozc, seconds)
        finally:
            await aiozc.async_close()

    controllers, nodes = asyncio.run(scan())
    return build_view(cfg.cluster.name, controllers, nodes, keys)


def render(view: View, console: Console | None = None) -> None:
    console = console or Console()
    table = Table(title=escape(f"cluster {view.cluster!r}  controller {view.controller or '-'}"))
    for name in ("host", "address", "role", "engines", "registered", "problems"):
        table.add_column(name, justify="right" if name in ("engines", "registered") else "left")
    for row in view.hosts:
        registered = row.registered if row.registered is not None else f"{row.reported}*"
        # Host, address and role come from mDNS records anyone can send: plain
        # Text, never parsed as rich markup.
        table.add_row(
            Text(row.host),
            Text(row.address),
            Text(row.role),
            str(row.engines),
            str(registered),
            escape("; ".join(row.problems)) or "[green]ok[/green]",
        )
    console.print(table)
    if view.registered_total is None:
        console.print(
            "* as reported by the node (the controller's view needs the secret: run as root)"
        )
    else:
        console.print(f"{view.registered_total} engines registered with the controller")
    for problem in view.problems:
        console.print(f"[red]problem:[/red] {escape(problem)}")


def main(paths: Paths, seconds: float, as_json: bool) -> int:
    view = gather(paths, seconds)
    if as_json:
        json.dump(view.to_json(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        render(view, Console(width=int(os.environ.get("COLUMNS", "120"))))
    bad = view.problems or any(r.problems for r in view.hosts)
    return 1 if bad else 0
