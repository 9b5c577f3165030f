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
from picluster.discovery import DuplicateName
from picluster.records import ControllerRecord

log = logging.getLogger(__name__)

RETRY_DUPLICATE = 30.0
"""Seconds between attempts to claim a controller name another host announces."""
RESTART_BACKOFF_START = 1.0
RESTART_BACKOFF_MAX = 30.0


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
        )

    def _process(self) -> ControllerProcess:
        s = self.setup
        return ControllerProcess(s.config, s.keys, s.paths, s.host)

    async def run(self) -> None:
        node, cfg = self.node, self.setup.config
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
        """Announce the controller record; False (and say so) if another host owns it."""
        assert self.node.announcer is not None
        try:
            await self.node.announcer.announce_controller(record)
        except DuplicateName:
            self.node.set_state(
                "duplicate-controller",
                f"another controller already announces cluster {record.cluster!r} on this "
                "LAN; rename one of them (hostname) or give this one its own [cluster] name. "
                f"Retrying every {RETRY_DUPLICATE:.0f} s",
                logging.ERROR,
            )
            return False
        return True
