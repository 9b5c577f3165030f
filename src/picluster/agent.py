"""``picluster agent``: the long-running service on every node.

It checks everything it needs before it starts anything (config, hostname,
role, secret), so a broken card exits with one clear message instead of
joining half-way. Then, on a controller: ipcontroller, the mDNS controller
record and the controller's own engines; on an engine host: follow the
controller's mDNS record (or the static address) and keep one engine per core
attached to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import json
import logging
import signal
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from picluster import __version__, config, roles, secret
from picluster.connection import engine_info
from picluster.controller import ControllerProcess, instance_id
from picluster.discovery import Announcer, ControllerWatcher, DuplicateName, Found, open_zeroconf
from picluster.engines import EngineGroup, resolve_count
from picluster.files import atomic_write_text
from picluster.paths import Paths, hostname
from picluster.records import ControllerRecord, NodeRecord

log = logging.getLogger("picluster.agent")

EX_CONFIG = 78
RETRY_DUPLICATE = 30.0


class StartupError(Exception):
    """Something a person must fix before this node can join (exit status 78)."""


@dataclass
class Setup:
    paths: Paths
    config: config.Config
    decision: roles.Decision
    keys: secret.Keys
    host: str


def check(paths: Paths) -> Setup:
    """Everything the agent needs, validated before anything starts."""
    try:
        cfg = config.load(paths.config)
        host = hostname()
        decision = roles.decide(host, cfg)
        # The file itself, even when systemd hands the service a private copy.
        secret.check_private(paths.secret)
        keys = secret.Keys.derive(secret.load(secret.credential_path(paths.secret)))
    except (config.ConfigError, roles.RoleError, secret.SecretError) as exc:
        raise StartupError(str(exc)) from None
    return Setup(paths, cfg, decision, keys, decision.hostname)


@dataclass
class NodeStatus:
    host: str
    role: str
    cluster: str
    state: str = "starting"
    detail: str = ""
    engines: int = 0
    registered: int = 0
    controller: dict[str, Any] = field(default_factory=dict)
    updated: float = 0.0


class Agent:
    def __init__(self, setup: Setup) -> None:
        self.s = setup
        cfg = setup.config
        self.is_controller = setup.decision.role is roles.Role.CONTROLLER
        count = cfg.engines.on_controller if self.is_controller else cfg.engines.per_node
        self.engines = EngineGroup(
            setup.host, resolve_count(count), cfg, setup.keys, setup.paths, self._changed
        )
        self.status = NodeStatus(
            host=setup.host,
            role=str(setup.decision.role),
            cluster=cfg.cluster.name,
            engines=self.engines.count,
        )
        self._dirty = asyncio.Event()
        self._found: asyncio.Queue[Found | None] = asyncio.Queue()
        self.announcer: Announcer | None = None

    # -- status: journal, state file, mDNS node record ---------------------------------

    def _changed(self) -> None:
        self.status.registered = len(self.engines.registered)
        self._write_status()
        self._dirty.set()

    def set_state(self, state: str, detail: str = "", level: int = logging.INFO) -> None:
        if (state, detail) != (self.status.state, self.status.detail):
            log.log(level, "%s%s", state, f": {detail}" if detail else "")
        self.status.state, self.status.detail = state, detail
        self._changed()

    def _record(self) -> NodeRecord:
        return NodeRecord(
            host=self.s.host,
            role=self.status.role,
            cluster=self.status.cluster,
            engines=self.status.engines,
            registered=self.status.registered,
            state=self.status.state,
            fp=self.s.keys.fingerprint,
            version=__version__,
        )

    def _write_status(self) -> None:
        self.status.updated = time.time()
        with contextlib.suppress(OSError):
            atomic_write_text(
                self.s.paths.status_file, json.dumps(asdict(self.status), indent=2) + "\n"
            )

    async def _publisher(self) -> None:
        """Keep the mDNS node record current, at a gentler pace than the state file."""
        node_announced = False
        last_announced: NodeRecord | None = None
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            if self.announcer is None:
                continue
            # Every announcement wakes every node on the LAN: let a burst of
            # changes (engines registering one after the other) settle first.
            await asyncio.sleep(0.3)
            if self._dirty.is_set():
                continue
            record = self._record()
            if record == last_announced:
                continue
            try:
                await self.announcer.announce_node(record, self.s.config.cluster.base_port)
                last_announced = record
                node_announced = True
            except DuplicateName:
                if not node_announced:
                    log.error(
                        "another node already announces the hostname %r on this LAN; "
                        "give every card its own hostname",
                        self.s.host,
                    )
                    node_announced = True

    # -- roles --------------------------------------------------------------------------

    async def run_controller(self) -> None:
        assert self.announcer is not None
        cfg = self.s.config
        iid = instance_id(self.s.paths.profile_dir)
        record = ControllerRecord(
            cluster=cfg.cluster.name,
            base_port=cfg.cluster.base_port,
            ipp=importlib.metadata.version("ipyparallel"),  # importing it costs ~0.3 s
            iid=iid,
            fp=self.s.keys.fingerprint,
            curve=cfg.cluster.curve,
        )
        self.status.controller = {"address": "self", "iid": iid}
        # Claim the mDNS name while ipcontroller starts: probing takes ~1.2 s and
        # engines may connect before the controller listens (ZeroMQ retries).
        self.set_state("starting-controller")
        controller = ControllerProcess(cfg, self.s.keys, self.s.paths, self.s.host)
        starting = asyncio.create_task(controller.start())
        if not await self._claim(record):
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError, RuntimeError):
                await starting
            await controller.stop()
            while not await self._claim(record):
                await asyncio.sleep(RETRY_DUPLICATE)
            starting = asyncio.create_task(controller.start())
        backoff = 1.0
        while True:
            try:
                await starting
                backoff = 1.0
                self.set_state("running", f"controller instance {iid}")
                if self.engines.count and not self.engines.running:
                    await self.engines.start(
                        engine_info(
                            "127.0.0.1", cfg.cluster.base_port, self.s.keys, curve=cfg.cluster.curve
                        )
                    )
                code = await controller.wait()
                self.set_state(
                    "controller-exited", f"ipcontroller exited with {code}", logging.ERROR
                )
            except RuntimeError as exc:
                self.set_state("controller-failed", str(exc), logging.ERROR)
            finally:
                await controller.stop()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 30.0)
            self.set_state("starting-controller")
            controller = ControllerProcess(cfg, self.s.keys, self.s.paths, self.s.host)
            starting = asyncio.create_task(controller.start())

    async def _claim(self, record: ControllerRecord) -> bool:
        assert self.announcer is not None
        try:
            await self.announcer.announce_controller(record)
        except DuplicateName:
            self.set_state(
                "duplicate-controller",
                f"another controller already announces cluster {record.cluster!r} on this "
                "LAN; rename one of them (hostname) or give this one its own [cluster] name. "
                f"Retrying every {RETRY_DUPLICATE:.0f} s",
                logging.ERROR,
            )
            return False
        return True

    async def run_engine_host(self) -> None:
        cfg = self.s.config
        if cfg.cluster.controller:
            # Multicast blocked: the seed named the controller; nothing to discover.
            self.status.controller = {"address": cfg.cluster.controller, "iid": "static"}
            await self._follow(
                Found(
                    ControllerRecord(
                        cfg.cluster.name,
                        cfg.cluster.base_port,
                        "",
                        "static",
                        self.s.keys.fingerprint,
                        cfg.cluster.curve,
                    ),
                    cfg.cluster.controller,
                )
            )
            await asyncio.Event().wait()
        assert self.announcer is not None
        watcher = ControllerWatcher(self.announcer.aiozc, cfg.cluster.name, self._found.put_nowait)
        await watcher.start()
        self.set_state("waiting", f"looking for {cfg.cluster.name}._ipyparallel._tcp.local.")
        try:
            while True:
                try:
                    found = await asyncio.wait_for(self._found.get(), 60)
                except TimeoutError:
                    if not self.engines.running:
                        log.info("still no controller for cluster %r on this LAN", cfg.cluster.name)
                    continue
                if found is None:
                    log.info(
                        "the controller said goodbye; engines stay up and rejoin when it is back"
                    )
                    continue
                await self._follow(found)
        finally:
            await watcher.close()

    async def _follow(self, found: Found) -> None:
        rec, cur = found.record, self.status.controller
        if rec.fp != self.s.keys.fingerprint:
            await self.engines.stop()
            self.set_state(
                "fingerprint-mismatch",
                f"the key fingerprint does not match: the controller at {found.address} announces "
                f"fp={rec.fp}, this card's secret gives fp={self.s.keys.fingerprint}. Fix: copy "
                f"the cluster's secret (the build's deploy/<name>.secret) to {self.s.paths.secret}",
                logging.ERROR,
            )
            self.status.controller = {}
            return
        wanted = {"address": found.address, "iid": rec.iid, "port": rec.base_port}
        if self.engines.running and all(cur.get(k) == v for k, v in wanted.items()):
            return
        if self.engines.running:
            log.info("controller changed (%s -> %s): restarting engines", cur, wanted)
        self.status.controller = wanted
        info = engine_info(
            found.address, rec.base_port, self.s.keys, location=found.address, curve=rec.curve
        )
        await self.engines.start(info)
        self.set_state("running", f"controller {found.address} instance {rec.iid}")

    # -- lifecycle ----------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        publisher = asyncio.create_task(self._publisher())
        aiozc = open_zeroconf()
        self.announcer = Announcer(aiozc, self.s.host)
        self._changed()
        body = asyncio.create_task(
            self.run_controller() if self.is_controller else self.run_engine_host()
        )
        stopper = asyncio.create_task(stop.wait())
        try:
            done, _ = await asyncio.wait({body, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if body in done:
                body.result()  # re-raise a crash
        finally:
            for task in (body, stopper):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await self.engines.stop()
            publisher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await publisher
            with contextlib.suppress(Exception):
                await self.announcer.close()
            await aiozc.async_close()
            self.status.state = "stopped"
            self._write_status()


async def _main(setup: Setup) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await Agent(setup).run(stop)


def run(paths: Paths) -> int:
    try:
        setup = check(paths)
    except StartupError as exc:
        log.error("%s", exc)
        log.error("not joining any cluster until this is fixed")
        return EX_CONFIG
    log.info(
        "%s, cluster %r, key fingerprint %s",
        setup.decision.explain(str(paths.config)),
        setup.config.cluster.name,
        setup.keys.fingerprint,
    )
    asyncio.run(_main(setup))
    return 0
