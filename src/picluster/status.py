"""``picluster status``: the cluster as seen from this node.

Hosts come from the mDNS node records every agent publishes; "registered" is
the controller's own view when this node can read the secret (it asks the
controller with an ipyparallel Client), otherwise what each node reports about
its engines.

With the secret, only records sealed with this cluster's key count: a record
that claims the cluster without the seal is listed as a problem
("unauthenticated record from <address>"), never as a host. Without it
(a user who cannot read the secret) nothing can be checked and the table
says so. Everything that came off the LAN is printed as text, never as markup.
"""

from __future__ import annotations

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
from picluster.discovery import Found, Scan, Stranger, scan_lan
from picluster.engines import host_of
from picluster.paths import Paths
from picluster.records import ControllerRecord


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
    verified: bool = True
    """Records were checked against the cluster's key (False: no secret to check with)."""

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


def _wrong_secret(scan: Scan, keys: secret.Keys | None) -> Stranger | None:
    """The controller's record, if everything says this card's secret is wrong: no
    controller record verifies, and one that claims the cluster has another key
    fingerprint (``engine_role.EngineRole.untrusted`` explains the reasoning)."""
    if keys is None or scan.controllers:
        return None
    for stranger in scan.strangers:
        if stranger.kind == "controller" and stranger.fp not in (None, keys.fingerprint):
            return stranger
    return None


def ghost_row(host: str, registered: int) -> HostRow:
    """A host the controller lists engines for but that is not on the LAN."""
    return HostRow(
        host=host,
        address="",
        role="?",
        state="gone",
        engines=0,
        reported=0,
        registered=registered,
        problems=[
            f"ghost: {registered} engine(s) registered for {host}, which does not announce "
            "itself on the LAN (powered off or lost?); they get no new work once the "
            "controller drops them (missed heartbeats) or the host's agent starts again"
        ],
    )


def build_view(cluster: str, scan: Scan, keys: secret.Keys | None) -> View:
    problems: list[str] = []
    ctl: Found | None = None
    if not scan.controllers:
        sealed = "sealed with this cluster's key " if keys else ""
        problems.append(
            f"controller not seen: nothing {sealed}announces cluster {cluster!r} (is the "
            "controller on, and does this network pass multicast?)"
        )
    else:
        ctl = max(scan.controllers, key=lambda f: (f.fresh is not None, f.fresh or 0))
    wrong = _wrong_secret(scan, keys)
    if wrong is not None and keys is not None:
        problems.append(
            f"key fingerprint does not match: the controller at {wrong.address} announces "
            f"fp={wrong.fp!r}, this card's secret gives fp={keys.fingerprint}, and none of "
            "the cluster's records verify with it (wrong secret on this card). Fix: copy the "
            "cluster's secret (the build's deploy/<name>.secret) to this card"
        )
    for stranger in scan.strangers:
        if wrong is not None and stranger.fp == wrong.fp:
            continue  # the same wrong secret, already said once
        problems.append(str(stranger))
    ctl_rec = ctl.record if ctl else None
    ctl_addr = ctl.address if ctl else None
    rows = []
    for member in scan.nodes:
        rec = member.record
        row = HostRow(
            host=rec.host,
            address=member.address,
            role=rec.role,
            state=rec.state,
            engines=rec.engines,
            reported=rec.registered,
        )
        if rec.state == "fingerprint-mismatch" or (ctl_rec and rec.fp != ctl_rec.fp):
            row.problems.append(
                f"key fingerprint does not match: {rec.fp} here"
                + (f", {ctl_rec.fp} on the controller" if ctl_rec and rec.fp != ctl_rec.fp else "")
                + " (wrong secret on this card)"
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
            # Engines of a host that no longer announces itself: a row each, so
            # that the rows add up to the total, and flagged (issue 14).
            for host in sorted(set(counts) - {row.host for row in rows}):
                rows.append(ghost_row(host, counts[host]))
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
        verified=keys is not None,
    )


def gather(paths: Paths, seconds: float) -> View:
    cfg = config.load(paths.config)
    keys = None
    # Not readable by this user: show what mDNS says.
    with contextlib.suppress(secret.SecretError):
        keys = secret.Keys.derive(secret.load(secret.credential_path(paths.secret)))

    scan = scan_lan(seconds, cfg.cluster.name, keys.record_key if keys else None)
    return build_view(cfg.cluster.name, scan, keys)


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
    if not view.verified:
        console.print("records not verified: this user cannot read the secret (run as root)")
    if view.registered_total is None:
        why = (
            "the controller could not be asked: see the problems below"
            if view.verified
            else "the controller's view needs the secret: run as root"
        )
        console.print(f"* as reported by the node ({why})")
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
