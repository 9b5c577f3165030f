"""``picluster agent``: the long-running service on every node.

It checks everything it needs before it starts anything (config, hostname,
role, secret), so a broken card exits with one clear message instead of
joining half-way. Then, on a controller: ipcontroller, the mDNS controller
record and the controller's own engines; on an engine host: follow the
controller's mDNS record (or the static address) and keep one engine per core
attached to it.

``core`` holds what every node does (checks, status, node record, mDNS
responder, lifecycle); ``controller_role`` and ``engine_role`` hold one role
each.
"""

from __future__ import annotations

import asyncio
import logging
import threading

from picluster import dasktls, roles
from picluster.agent.controller_role import ControllerRole
from picluster.agent.core import RoleSide, Setup, StartupError, check, serve
from picluster.agent.engine_role import EngineRole
from picluster.mdns_log import quiet_zeroconf
from picluster.paths import Paths

log = logging.getLogger(__name__)

SIDES: dict[roles.Role, type[RoleSide]] = {
    roles.Role.CONTROLLER: ControllerRole,
    roles.Role.ENGINE: EngineRole,
}


def write_dask_tls(setup: Setup) -> None:
    """The TLS files the hub's Dask scheduler and the engines' workers use (dasktls)."""
    try:
        dasktls.write(setup.paths.dask_tls_dir, dasktls.derive(setup.keys))
    except OSError as exc:
        log.warning("Dask's TLS files not written (%s): rc.become_dask() will fail", exc)


def run(paths: Paths) -> int:
    """The service's main: EX_CONFIG (systemd does not restart it) if the node cannot join."""
    quiet_zeroconf()
    try:
        setup = check(paths)
    except StartupError as exc:
        log.error("%s", exc)
        log.error("not joining any cluster until this is fixed")
        return exc.exit_status
    log.info(
        "%s, cluster %r, key fingerprint %s",
        setup.decision.explain(setup.role_source),
        setup.config.cluster.name,
        setup.keys.fingerprint,
    )
    # Off the path to the first engine (cryptography's import is ~1 s on a Pi 3):
    # nothing reads these files before a user's rc.become_dask().
    threading.Thread(target=write_dask_tls, args=(setup,), name="dask-tls", daemon=True).start()
    asyncio.run(serve(setup, SIDES[setup.decision.role]))
    return 0
