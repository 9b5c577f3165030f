"""The controller side of the agent: ipcontroller, its mDNS record, its own engines.

The controller record is claimed while ipcontroller starts (probing takes
~1.2 s and engines may connect before the controller listens: ZeroMQ
retries). If another controller of the same cluster already owns the name,
this one starts nothing and retries. ipcontroller is restarted with backoff
whenever it exits, and the controller host's own engines attach to it on
loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import logging

from picluster import config
from picluster.agent.core import RoleSide
from picluster.connection import engine_info
from picluster.controller import ControllerProcess, instance_id
from picluster.discovery import DuplicateName, Found, browse, lan_addresses, open_name
from picluster.engines import python_minor
from picluster.records import CONTROLLER_TYPE, ControllerRecord

log = logging.getLogger(__name__)

RETRY_DUPLICATE = 30.0
"""Seconds between attempts to claim a controller name another host announces."""
SQUATTED_SCAN_S = 2.0
"""How long to listen for other controllers of this cluster when our name is taken."""
RESTART_BACKOFF_START = 1.0
RESTART_BACKOFF_MAX = 30.0
ADDRESS_POLL_S = 0.5
"""How often the controller reads its own interface addresses (getifaddrs: cheap)."""
ADDRESS_SETTLE_S = 0.5
"""An address change is acted on once the addresses have stayed the same this long."""


class ControllerRole(RoleSide):
    """Keeps ipcontroller running and announced as ``<cluster>._ipyparallel._tcp``."""

    @staticmethod
    def engine_count(cfg: config.Config) -> config.Count:
        return cfg.engines.on_controller

    def record(self, iid: str) -> ControllerRecord:
        cfg = self.setup.config
        return ControllerRecord(
            cluster=cfg.cluster.name,
            base_port=cfg.cluster.base_port,
            ipp=importlib.metadata.version("ipyparallel"),  # importing it costs ~0.3 s
            iid=iid,
            fp=self.setup.keys.fingerprint,
            curve=cfg.cluster.curve,
            py=python_minor(),
            lab=cfg.jupyter.port if cfg.jupyter.enabled else 0,
            login="password" if cfg.jupyter.password_hash else "token",
        )

    def _process(self) -> ControllerProcess:
        s = self.setup
        return ControllerProcess(s.config, s.keys, s.paths, s.host)

    async def run(self) -> None:
        node = self.node
        iid = instance_id(self.setup.paths.profile_dir)
        record = self.record(iid)
        node.status.controller = {"address": "self", "iid": iid}
        # Claim the mDNS name while ipcontroller starts.
        node.set_state("starting-controller")
        controller = self._process()
        starting = asyncio.create_task(controller.start())
        if not await self._claim(record):
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError, RuntimeError):
                await starting
            await controller.stop()
            while not await self._claim(record):
                await asyncio.sleep(RETRY_DUPLICATE)
            starting = asyncio.create_task(controller.start())
        follower = asyncio.create_task(self._follow_addresses(iid))
        try:
            await self._keep_running(controller, starting, iid)
        finally:
            follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await follower

    async def _follow_addresses(self, iid: str) -> None:
        """Announce the controller again, with the new address, when this host's changes.

        ipcontroller listens on every interface ([controller] listen = "0.0.0.0"),
        so what goes stale is the mDNS responder (bound to the old address) and,
        on the engine hosts, the address the engines connect to: they follow the
        new announcement and re-register (``engine_role.follow``).
        """
        current = sorted(lan_addresses())
        while True:
            await asyncio.sleep(ADDRESS_POLL_S)  # a polling period, not synchronisation
            now = sorted(lan_addresses())
            if now == current:
                continue
            await asyncio.sleep(ADDRESS_SETTLE_S)
            if sorted(lan_addresses()) != now:
                continue  # still changing (add then delete): look again next period
            if not now:
                log.warning("this host has no LAN address now (was %s)", ", ".join(current))
                current = now
                continue
            log.info(
                "this host's addresses changed (%s -> %s): announcing the controller again",
                ", ".join(current) or "none",
                ", ".join(now),
            )
            current = now
            await self.node.readdress()
            while not await self._claim(self.record(iid)):
                await asyncio.sleep(RETRY_DUPLICATE)
            self.node.set_state("running", f"controller instance {iid} at {', '.join(now)}")

    async def _keep_running(
        self, controller: ControllerProcess, starting: asyncio.Task[None], iid: str
    ) -> None:
        node, cfg = self.node, self.setup.config
        backoff = RESTART_BACKOFF_START
        while True:
            try:
                await starting
                backoff = RESTART_BACKOFF_START
                node.set_state("running", f"controller instance {iid}")
                if node.engines.count and not node.engines.running:
                    await node.engines.start(
                        engine_info(
                            "127.0.0.1",
                            cfg.cluster.base_port,
                            self.setup.keys,
                            curve=cfg.cluster.curve,
                        )
                    )
                code = await controller.wait()
                node.set_state(
                    "controller-exited", f"ipcontroller exited with {code}", logging.ERROR
                )
            except RuntimeError as exc:
                node.set_state("controller-failed", str(exc), logging.ERROR)
            finally:
                await controller.stop()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, RESTART_BACKOFF_MAX)
            node.set_state("starting-controller")
            controller = self._process()
            starting = asyncio.create_task(controller.start())

    async def _claim(self, record: ControllerRecord) -> bool:
        """Announce the controller record; False (and say so) if another controller of
        this cluster owns it.

        Only a record sealed with this cluster's key, from another host, is another
        controller. A name taken by anything else (a stranger's record, or a replay
        of this controller's own old one) is reported and does not stop us: we
        announce under another name (``<cluster>-2``), and engines follow the
        sealed ``cluster`` field, not the name.
        """
        node = self.node
        assert node.announcer is not None and node.aiozc is not None
        try:
            await node.announcer.announce_controller(record)
            return True
        except DuplicateName:
            pass
        key, name = self.setup.keys.record_key, ControllerRecord.service_name(record.cluster)
        # Whoever holds the name answered our probe: look at that answer first (fast
        # for the usual case, a real second controller), then listen for the others.
        owner = await open_name(node.aiozc, CONTROLLER_TYPE, name, record.cluster, key)
        others = [f for f in owner if isinstance(f, Found) and not self._own_past(f, record)]
        if not others:
            scan = await browse(node.aiozc, SQUATTED_SCAN_S, record.cluster, key)
            for stranger in scan.strangers:
                node.report_stranger(stranger)
            others = [f for f in scan.controllers if not self._own_past(f, record)]
        if others:
            node.set_state(
                "duplicate-controller",
                f"another controller (at {others[0].address}) already announces cluster "
                f"{record.cluster!r} on this LAN; rename one of them (hostname) or give this "
                f"one its own [cluster] name. Retrying every {RETRY_DUPLICATE:.0f} s",
                logging.ERROR,
            )
            return False
        got = await node.announcer.announce_controller(record, rename=True)
        log.warning(
            "the name %r is taken by a record without this cluster's seal: announcing the "
            "controller as %r (engines follow the sealed record, whatever its name)",
            name,
            got,
        )
        return True

    def _own_past(self, found: Found, record: ControllerRecord) -> bool:
        """A sealed record of this very controller played back (from one of our own
        addresses, or with our instance id and an older epoch), not another one."""
        if found.address in lan_addresses():
            return True
        fresh = found.fresh
        return found.record.iid == record.iid and (
            fresh is None or fresh.epoch < self.node.sealer.epoch
        )
