"""The engine side of the agent: follow the controller, keep the engines attached.

The controller comes from its mDNS record (``<cluster>._ipyparallel._tcp``)
or, where multicast is blocked, from the static address the seed names. The
engines are (re)started only when what they connect to changes: another
address, port or controller instance id. A controller that says goodbye is
waited for; its engines stay up and rejoin when it is back.
"""

from __future__ import annotations

import asyncio
import logging

from picluster import config
from picluster.agent.core import Node, RoleSide
from picluster.connection import engine_info
from picluster.discovery import ControllerWatcher, Found
from picluster.records import ControllerRecord

log = logging.getLogger(__name__)

STILL_WAITING_S = 60
"""How often to say that no controller has been found yet."""


class EngineRole(RoleSide):
    """Keeps this host's engines attached to the controller its cluster announces."""

    @staticmethod
    def engine_count(cfg: config.Config) -> config.Count:
        return cfg.engines.per_node

    def __init__(self, node: Node) -> None:
        super().__init__(node)
        self._found: asyncio.Queue[Found | None] = asyncio.Queue()

    async def run(self) -> None:
        static = self.setup.config.cluster.controller
        if static:
            await self._follow_static(static)
        else:
            await self._follow_announced()

    async def _follow_announced(self) -> None:
        cfg = self.setup.config
        assert self.node.aiozc is not None
        watcher = ControllerWatcher(self.node.aiozc, cfg.cluster.name, self._found.put_nowait)
        await watcher.start()
        self.node.set_state("waiting", f"looking for {cfg.cluster.name}._ipyparallel._tcp.local.")
        try:
            while True:
                try:
                    found = await asyncio.wait_for(self._found.get(), STILL_WAITING_S)
                except TimeoutError:
                    if not self.node.engines.running:
                        log.info("still no controller for cluster %r on this LAN", cfg.cluster.name)
                    continue
                if found is None:
                    log.info(
                        "the controller said goodbye; engines stay up and rejoin when it is back"
                    )
                    continue
                await self.follow(found)
        finally:
            await watcher.close()

    async def _follow_static(self, address: str) -> None:
        """Multicast blocked: the seed named the controller; nothing to discover, ever."""
        cfg = self.setup.config
        self.node.status.controller = {"address": address, "iid": "static"}
        record = ControllerRecord(
            cfg.cluster.name,
            cfg.cluster.base_port,
            "",
            "static",
            self.setup.keys.fingerprint,
            cfg.cluster.curve,
        )
        await self.follow(Found(record, address))
        await asyncio.Event().wait()

    async def follow(self, found: Found) -> None:
        """Attach the engines to ``found``, unless they already are or its key differs."""
        node, keys, paths = self.node, self.setup.keys, self.setup.paths
        rec, cur = found.record, node.status.controller
        if rec.fp != keys.fingerprint:
            await node.engines.stop()
            node.set_state(
                "fingerprint-mismatch",
                f"the key fingerprint does not match: the controller at {found.address} announces "
                f"fp={rec.fp}, this card's secret gives fp={keys.fingerprint}. Fix: copy "
                f"the cluster's secret (the build's deploy/<name>.secret) to {paths.secret}",
                logging.ERROR,
            )
            node.status.controller = {}
            return
        wanted = {"address": found.address, "iid": rec.iid, "port": rec.base_port}
        if node.engines.running and all(cur.get(k) == v for k, v in wanted.items()):
            return
        if node.engines.running:
            log.info("controller changed (%s -> %s): restarting engines", cur, wanted)
        node.status.controller = wanted
        info = engine_info(
            found.address, rec.base_port, keys, location=found.address, curve=rec.curve
        )
        await node.engines.start(info)
        node.set_state("running", f"controller {found.address} instance {rec.iid}")
