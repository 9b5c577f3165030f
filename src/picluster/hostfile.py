"""``picluster hostfile``: an MPI hostfile from the cluster's node records.

One line per host that runs engines, in Open MPI's format, ``<host>.local
slots=<n>``: the controller first (where ``mpirun`` usually starts, so rank 0 is
there), then the engine hosts in natural order (engine-2 before engine-10).
``slots`` is the host's CPU cores (announced by its agent), or with ``--slots
engines`` the engines it runs. A controller with ``[engines] on_controller = 0``
runs no engines and is left out, as is any host that runs none: those hosts were
kept free of work on purpose. Only records sealed with this cluster's key count,
so the command needs the secret (root); a stranger's record is never listed.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable
from typing import Literal

from picluster import config, secret
from picluster.discovery import Member, Scan, scan_lan
from picluster.errors import PiclusterError
from picluster.paths import Paths

Slots = Literal["cores", "engines"]


def _natural(name: str) -> list[int | str]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def lines(members: Iterable[Member], slots: Slots = "cores", address: bool = False) -> list[str]:
    """The hostfile's lines for the sealed node records ``members``."""
    chosen: dict[str, Member] = {}
    for member in members:
        rec = member.record
        if member.verified and rec.engines > 0:
            chosen.setdefault(rec.host, member)
    order = sorted(
        chosen.values(), key=lambda m: (m.record.role != "controller", _natural(m.record.host))
    )
    out = []
    for member in order:
        rec = member.record
        count = rec.engines if slots == "engines" or rec.cores <= 0 else rec.cores
        name = member.address if address else f"{rec.host}.local"
        out.append(f"{name} slots={count}")
    return out


def gather(paths: Paths, seconds: float) -> tuple[str, Scan]:
    cfg = config.load(paths.config)
    try:
        keys = secret.Keys.derive(secret.load(secret.credential_path(paths.secret)))
    except secret.SecretError as exc:
        raise PiclusterError(
            f"{exc}\nThe hostfile lists only hosts whose records are sealed with the "
            "cluster's key, which needs the secret. Fix: run it with sudo, e.g. "
            "mpirun --hostfile <(sudo picluster hostfile) ..."
        ) from None

    return cfg.cluster.name, scan_lan(seconds, cfg.cluster.name, keys.record_key)


def main(paths: Paths, seconds: float, slots: Slots, address: bool) -> int:
    cluster, scan = gather(paths, seconds)
    out = lines(scan.nodes, slots, address)
    for member in scan.nodes:
        if member.record.cores <= 0 and slots == "cores":
            print(
                f"# {member.record.host}: its agent does not announce its cores (an older "
                "picluster): slots = its engines",
                file=sys.stderr,
            )
    if scan.strangers:
        print(f"# ignored {len(scan.strangers)} unauthenticated record(s)", file=sys.stderr)
    if not out:
        raise PiclusterError(
            f"no host of cluster {cluster!r} with engines answered within {seconds:g} s. "
            "Fix: check `picluster status`; wait longer with --wait"
        )
    print("\n".join(out))
    return 0
