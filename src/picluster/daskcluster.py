"""Dask on the ipyparallel cluster: where ``rc.become_dask()`` listens, and how safely.

``rc.become_dask()`` asks the hub to start a ``distributed.Scheduler`` (with the
client's ``scheduler_args``) and each engine to start a ``distributed.Worker``.
Stock, on a cluster of Pis, that goes wrong four ways:

- the scheduler's address comes from ``distributed.utils.get_ip``, which asks
  for a route to 8.8.8.8 and, on a LAN without the Internet, falls back to
  ``gethostbyname(hostname)``: ``127.0.1.1`` on Debian, an address no other Pi
  can reach, so every worker fails to connect;
- its port is random (and the dashboard's 8787 may be taken), so nothing can be
  documented or reserved;
- scheduler and workers speak unauthenticated TCP: anyone on the LAN could
  submit work;
- the scheduler's dashboard (and each worker's HTTP server, with its metrics)
  listen on every interface, unauthenticated.

So the hub's scheduler defaults to the controller's LAN address, the fixed
ports ``DASK_PORTS`` of the cluster's range, ``tls://`` with the certificates of
``picluster.dasktls`` (mutual authentication) and its dashboard on loopback
only, which JupyterLab serves to its logged-in users through
jupyter-server-proxy (``/proxy/<port>/status``); a worker's HTTP server
defaults to loopback. Any of it can still be passed explicitly to
``become_dask(scheduler_args=...)`` or as worker arguments.
"""

from __future__ import annotations

import functools
import importlib.abc
import importlib.machinery
import sys
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

LOOPBACK = "127.0.0.1"
DASHBOARD_LINK = "/proxy/{port}/status"
"""dask's dashboard link template (``distributed.dashboard.link``) in JupyterLab:
jupyter-server-proxy at the server's root, so behind JupyterLab's login."""
ANY_ADDRESS = ("", "*", "0.0.0.0")


def _port(base_port: int, name: str) -> int:
    # Imported here: engines import this module at start, and connection's
    # config (pydantic) would cost them ~0.1 s (about 1 s on a Pi) for nothing.
    from picluster.connection import DASK_PORTS

    return base_port + DASK_PORTS[name]


def scheduler_port(base_port: int) -> int:
    return _port(base_port, "scheduler")


def dashboard_port(base_port: int) -> int:
    return _port(base_port, "dashboard")


def dashboard_path(base_port: int) -> str:
    """The dashboard's path under JupyterLab's server (jupyter-server-proxy)."""
    return DASHBOARD_LINK.format(port=dashboard_port(base_port))


def scheduler_host(listen: str) -> str:
    """Where the scheduler binds: the controller's own ``[controller] listen`` when it
    names one address, else its first LAN address (what its mDNS record carries)."""
    if listen not in ANY_ADDRESS:
        return listen
    from picluster.discovery import lan_addresses

    return next(iter(lan_addresses()), LOOPBACK)


def scheduler_defaults(listen: str, base_port: int) -> dict[str, Any]:
    from distributed.security import Security

    return {
        "host": scheduler_host(listen),
        "port": scheduler_port(base_port),
        "protocol": "tls",
        # TLS files from dask's configuration (picluster.dasktls.environment).
        "security": Security(require_encryption=True),
        "dashboard_address": f"{LOOPBACK}:{dashboard_port(base_port)}",
    }


def _hub_settings(argv: Sequence[str]) -> tuple[str, int]:
    """``--ip`` and the first of ``--ports`` of the ipcontroller command line
    (``picluster.controller.controller_argv``)."""
    listen, base_port = "", 0
    for arg in argv:
        if arg.startswith("--ip="):
            listen = arg.removeprefix("--ip=")
        elif arg.startswith("--ports="):
            base_port = int(arg.removeprefix("--ports=").split("-", 1)[0])
    if not base_port:
        raise SystemExit("picluster.ipcontroller: needs --ports=FIRST-LAST (the cluster's range)")
    return listen, base_port


def patch_hub(argv: Sequence[str]) -> None:
    """The hub's ``become_dask``, with ``scheduler_defaults`` under the client's arguments;
    its ``stop_distributed`` (``rc.stop_dask()``) closes the scheduler for real."""
    from ipyparallel.controller.hub import Hub

    listen, base_port = _hub_settings(argv)
    original = Hub.become_dask
    if getattr(original, "__wrapped__", None) is not None:
        return

    @functools.wraps(original)
    async def become_dask(hub: Any, client_id: Any, msg: dict[str, Any]) -> None:
        if hub.distributed_scheduler is None:
            content = msg.setdefault("content", {})
            given = dict(content.get("scheduler_args") or {})
            # Never a fallback to stock defaults (unauthenticated, on every interface):
            # an error here reaches the client as the hub's error reply.
            content["scheduler_args"] = scheduler_defaults(listen, base_port) | given
        await original(hub, client_id, msg)

    Hub.become_dask = become_dask
    stop = Hub.stop_distributed

    # ipyparallel (9.2) calls the scheduler's close() without awaiting it, so
    # rc.stop_dask() left the scheduler listening and the next become_dask()
    # failed on its fixed port ("address already in use").
    @functools.wraps(stop)
    async def stop_distributed(hub: Any, client_id: Any, msg: dict[str, Any]) -> None:
        scheduler = hub.distributed_scheduler
        if scheduler is not None:
            hub.log.info("Stopping dask.distributed scheduler at %s", scheduler.address)
            await scheduler.close()
            hub.distributed_scheduler = None
        stop(hub, client_id, msg)  # the reply (nothing left for it to stop)

    Hub.stop_distributed = stop_distributed


def _loopback_http(cls: type) -> None:
    """``cls(...)`` (a Worker or a Nanny) serves its HTTP routes on loopback unless told."""
    init = cls.__init__  # type: ignore[misc]
    if getattr(init, "__wrapped__", None) is not None:
        return

    @functools.wraps(init)
    def __init__(self: Any, *args: Any, dashboard_address: str | None = None, **kw: Any) -> None:
        init(self, *args, dashboard_address=dashboard_address or f"{LOOPBACK}:0", **kw)

    cls.__init__ = __init__  # type: ignore[misc]


class _AfterImport(importlib.abc.MetaPathFinder):
    """Runs a patch on a module right after it is first imported: engines import
    ``distributed`` (~1 s on a Pi) only when ``become_dask`` asks them to."""

    def __init__(self, patches: dict[str, Callable[[ModuleType], None]]) -> None:
        self.patches = patches

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        patch = self.patches.get(fullname)
        if patch is None:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
        if spec is None or spec.loader is None:
            return spec
        run = spec.loader.exec_module

        def exec_module(module: ModuleType) -> None:
            run(module)
            patch(module)

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def patch_workers() -> None:
    """Workers and nannies started in this process keep their HTTP servers on loopback."""
    patches: dict[str, Callable[[ModuleType], None]] = {
        "distributed.worker": lambda m: _loopback_http(m.Worker),
        "distributed.nanny": lambda m: _loopback_http(m.Nanny),
    }
    for name, patch in patches.items():
        if name in sys.modules:
            patch(sys.modules[name])
    if not any(isinstance(f, _AfterImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterImport(patches))
