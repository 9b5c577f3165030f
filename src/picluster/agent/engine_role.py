"""The engine side of the agent: follow the controller, keep the engines attached.

The controller comes from its mDNS record (``<cluster>._ipyparallel._tcp``)
or, where multicast is blocked, from the static address the seed names. The
engines are (re)started only when what they connect to changes: another
address, port or controller instance id. A controller that says goodbye is
waited for; its engines stay up and rejoin when it is back.

Only a record sealed with this cluster's key moves the engines, and never
back to an older one than they follow (``records``: a replay). Anything else
that claims our cluster is reported once and ignored (:meth:`EngineRole.untrusted`).
"""

from __future__ import annotations

import asyncio
import logging

from picluster import config
from picluster.agent.core import Node, RoleSide
from picluster.connection import engine_info
from picluster.discovery import ControllerWatcher, Found, Goodbye, Stranger
from picluster.records import ControllerRecord, Freshness

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
        self._found: asyncio.Queue[Found | Stranger | Goodbye] = asyncio.Queue()
        self._fresh: Freshness | None = None
        """Freshness of the newest sealed record the engines have followed."""
        self._followed = ""
        self._stale: set[tuple[str, str]] = set()

    async def run(self) -> None:
        static = self.setup.config.cluster.controller
        if static:
            await self._follow_static(static)
        else:
            await self._follow_announced()

    async def _follow_announced(self) -> None:
        cfg = self.setup.config
        assert self.node.aiozc is not None
        watcher = ControllerWatcher(
            self.node.aiozc, cfg.cluster.name, self.setup.keys.record_key, self._found.put_nowait
        )
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
                if isinstance(found, Goodbye):
                    if found.name == self._followed:
                        log.info("the controller said goodbye; engines stay up until it is back")
                    continue
                if isinstance(found, Stranger):
                    self.untrusted(found)
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

    def untrusted(self, stranger: Stranger) -> None:
        """A record that claims our cluster without our seal: never followed.

        Which of two things it is cannot be read off the record alone: a
        stranger's record, or the real controller's record seen by a card
        whose own secret is wrong (then every record of the cluster fails our
        MAC). We tell them apart by what this card has already verified. Once
        the engines follow a sealed controller record, this card's key is
        evidently right, so an unsealed record is a stranger's. Before that,
        an unsealed *controller* record with another key fingerprint than ours
        is most likely the real controller seen with a wrong secret, and the
        card says so ("key fingerprint does not match") - it has no engines to
        stop. One with our own fingerprint is a copy (the fingerprint is
        public): a stranger's.
        """
        node, keys = self.node, self.setup.keys
        if (
            self._fresh is None
            and stranger.kind == "controller"
            and stranger.fp is not None
            and stranger.fp != keys.fingerprint
        ):
            node.set_state(
                "fingerprint-mismatch",
                f"the key fingerprint does not match: the controller at {stranger.address} "
                f"announces fp={stranger.fp!r}, this card's secret gives fp={keys.fingerprint}. "
                f"Fix: copy the cluster's secret (the build's deploy/<name>.secret) to "
                f"{self.setup.paths.secret}",
                logging.ERROR,
            )
            return
        node.report_stranger(stranger)

    async def follow(self, found: Found) -> None:
        """Attach the engines to ``found``, unless they already are or it is older than
        the sealed record they follow (``found.fresh`` is None for the static address)."""
        node, keys = self.node, self.setup.keys
        rec, cur = found.record, node.status.controller
        wanted = {"address": found.address, "iid": rec.iid, "port": rec.base_port}
        same = node.engines.running and all(cur.get(k) == v for k, v in wanted.items())
        if found.fresh is not None and self._fresh is not None and found.fresh < self._fresh:
            if not same and (found.name, found.address) not in self._stale:
                self._stale.add((found.name, found.address))
                log.warning(
                    "ignoring a controller record from %s older (n=%s) than the one the "
                    "engines follow (n=%s): a replay, or a controller whose state and clock "
                    "were both reset (then restart this agent)",
                    found.address,
                    found.fresh,
                    self._fresh,
                )
            return
        if found.fresh is not None:
            self._fresh = found.fresh
        self._followed = found.name
        if same:
            return
        if node.engines.running:
            log.info("controller changed (%s -> %s): restarting engines", cur, wanted)
        node.status.controller = wanted
        info = engine_info(
            found.address, rec.base_port, keys, location=found.address, curve=rec.curve
        )
        await node.engines.start(info)
        node.set_state("running", f"controller {found.address} instance {rec.iid}")
