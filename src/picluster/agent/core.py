"""What every node's agent does, whatever its role.

Check everything before starting anything (config, hostname and role, secret);
then keep this node's status current in three places (the journal, the state
file that ``picluster status`` reads, the mDNS node record), own the mDNS
responder, and run one role side until SIGTERM. The role sides
(``controller_role``, ``engine_role``) plug in through :class:`RoleSide`; they
never touch the status file or the node record themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import Any

from zeroconf.asyncio import AsyncZeroconf

from picluster import __version__, config, roles, secret
from picluster.discovery import Announcer, DuplicateName, Sealer, Stranger, open_zeroconf
from picluster.engines import EngineGroup, resolve_count
from picluster.errors import ConfigurationError
from picluster.files import atomic_write_text
from picluster.paths import Paths, hostname
from picluster.records import NodeRecord

log = logging.getLogger(__name__)

ANNOUNCE_SETTLE_S = 0.3
"""Quiet time before the node record is announced again (see ``_publisher``)."""


class StartupError(ConfigurationError):
    """Something a person must fix before this node can join (exit status EX_CONFIG)."""


def next_epoch(paths: Paths) -> int:
    """This agent run's record epoch (``records.Freshness``): one more than the last
    run's, and at least the clock in seconds, so that a card whose state dir was
    wiped still starts above its old records when its clock is sane. Never lower
    than a value this node announced before, whatever the clock says."""
    try:
        last = int(paths.record_epoch.read_text().strip())
    except (OSError, ValueError):
        last = 0
    epoch = max(last + 1, int(time.time()))
    with contextlib.suppress(OSError):
        atomic_write_text(paths.record_epoch, f"{epoch}\n")
    return epoch


@dataclass
class Setup:
    paths: Paths
    config: config.Config
    decision: roles.Decision
    keys: secret.Keys
    host: str
    role_source: str
    """The file whose [roles] pattern decided the role (or "the defaults")."""


def check(paths: Paths) -> Setup:
    """Everything the agent needs, validated before anything starts."""
    try:
        layered = config.load_layered(paths.config)
        cfg = layered.config
        host = hostname()
        decision = roles.decide(host, cfg)
        # The file itself, even when systemd hands the service a private copy.
        secret.check_private(paths.secret)
        keys = secret.Keys.derive(secret.load(secret.credential_path(paths.secret)))
    except (config.ConfigError, roles.RoleError, secret.SecretError) as exc:
        raise StartupError(str(exc)) from None
    return Setup(paths, cfg, decision, keys, decision.hostname, layered.decided(decision))


@dataclass
class NodeStatus:
    """The state file (``agent-status.json``) that ``picluster status`` reads."""

    host: str
    role: str
    cluster: str
    state: str = "starting"
    detail: str = ""
    engines: int = 0
    registered: int = 0
    controller: dict[str, Any] = field(default_factory=dict)
    updated: float = 0.0


class RoleSide(ABC):
    """One role's work on a node: built with the :class:`Node`, run until cancelled.

    ``run`` reports through ``node.set_state`` and drives ``node.engines``;
    the node's mDNS responder (``node.aiozc``, ``node.announcer``) is open by then.
    """

    def __init__(self, node: Node) -> None:
        self.node = node
        self.setup = node.setup

    @staticmethod
    @abstractmethod
    def engine_count(cfg: config.Config) -> config.Count:
        """The ``[engines]`` setting that sizes this role's engine group."""

    @abstractmethod
    async def run(self) -> None: ...


class Node:
    """The shared half of the agent: status, node record, mDNS responder, lifecycle."""

    def __init__(self, setup: Setup, engines: int) -> None:
        self.setup = setup
        self.engines = EngineGroup(
            setup.host, engines, setup.config, setup.keys, setup.paths, self._changed
        )
        self.status = NodeStatus(
            host=setup.host,
            role=str(setup.decision.role),
            cluster=setup.config.cluster.name,
            engines=self.engines.count,
        )
        self._dirty = asyncio.Event()
        self.aiozc: AsyncZeroconf | None = None
        self.announcer: Announcer | None = None
        self._reannounce: asyncio.Task[None] | None = None
        self.sealer = Sealer(setup.keys.record_key, next_epoch(setup.paths))
        self._strangers: set[tuple[str, str, str]] = set()

    # -- status: journal, state file, mDNS node record ---------------------------------

    def _changed(self) -> None:
        self.status.registered = len(self.engines.registered)
        self._write_status()
        self._dirty.set()

    def set_state(self, state: str, detail: str = "", level: int = logging.INFO) -> None:
        """Log a new state once, and publish it to the state file and the node record."""
        if (state, detail) != (self.status.state, self.status.detail):
            log.log(level, "%s%s", state, f": {detail}" if detail else "")
        self.status.state, self.status.detail = state, detail
        self._changed()

    def _announcer(self) -> Announcer:
        """An announcer on the current responder, sealing with this run's sealer."""
        assert self.aiozc is not None
        return Announcer(self.aiozc, self.setup.host, self.sealer)

    def report_stranger(self, stranger: Stranger) -> None:
        """Log a record that claims our cluster without our seal, once per sender
        and name (a stranger repeating itself must not flood the journal)."""
        key = (stranger.kind, stranger.name, stranger.address)
        if key not in self._strangers:
            self._strangers.add(key)
            log.warning("%s; ignored", stranger)

    def _record(self) -> NodeRecord:
        return NodeRecord(
            host=self.setup.host,
            role=self.status.role,
            cluster=self.status.cluster,
            engines=self.status.engines,
            registered=self.status.registered,
            state=self.status.state,
            fp=self.setup.keys.fingerprint,
            version=__version__,
            cores=resolve_count("auto"),
        )

    def _write_status(self) -> None:
        self.status.updated = time.time()
        with contextlib.suppress(OSError):
            atomic_write_text(
                self.setup.paths.status_file, json.dumps(asdict(self.status), indent=2) + "\n"
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
            await asyncio.sleep(ANNOUNCE_SETTLE_S)
            if self._dirty.is_set():
                continue
            record = self._record()
            if record == last_announced:
                continue
            try:
                await self.announcer.announce_node(record, self.setup.config.cluster.base_port)
                last_announced = record
                node_announced = True
            except DuplicateName:
                if not node_announced:
                    log.error(
                        "another node already announces the hostname %r on this LAN; "
                        "give every card its own hostname",
                        self.setup.host,
                    )
                    node_announced = True

    # -- healing: this host's addresses changed ------------------------------------------

    async def readdress(self) -> None:
        """Open the mDNS responder again after this host's addresses changed.

        python-zeroconf binds a socket to each interface address it found when
        it opened: after a DHCP renewal or a router reboot the old ones fail
        ("Network is unreachable") and nothing is announced with the new one.
        The role side re-announces its own records on ``self.announcer`` after
        this; the node record is announced again meanwhile (probing takes ~1.2 s
        per name, so the two run side by side).
        """
        old_zc = self.aiozc
        if old_zc is not None:
            # No goodbyes: they would go out from the address that is gone, and
            # the new announcement replaces the old records in every cache anyway.
            registry = old_zc.zeroconf.registry
            with contextlib.suppress(Exception):
                registry.async_remove(registry.async_get_service_infos())
            with contextlib.suppress(Exception):
                await old_zc.async_close()
        self.aiozc = open_zeroconf()
        self.announcer = self._announcer()
        self._reannounce = asyncio.create_task(self._announce_node_again())

    async def _announce_node_again(self) -> None:
        assert self.announcer is not None
        try:
            await self.announcer.announce_node(self._record(), self.setup.config.cluster.base_port)
        except DuplicateName:
            log.error("another node announces the hostname %r on this LAN", self.setup.host)
        except Exception as exc:  # the publisher announces it again on the next change
            log.warning("could not announce this node with its new address: %s", exc)

    # -- lifecycle ----------------------------------------------------------------------

    async def run(self, role: type[RoleSide], stop: asyncio.Event) -> None:
        """Run ``role`` until ``stop`` is set (or it crashes), then take everything down."""
        publisher = asyncio.create_task(self._publisher())
        self.aiozc = open_zeroconf()
        self.announcer = self._announcer()
        self._changed()
        body = asyncio.create_task(role(self).run())
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
            for task in (publisher, self._reannounce):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            with contextlib.suppress(Exception):
                await self.announcer.close()
            await self.aiozc.async_close()
            self.status.state = "stopped"
            self._write_status()


async def serve(setup: Setup, role: type[RoleSide]) -> None:
    """The node as a service: run ``role`` until SIGTERM or SIGINT (what systemd sends)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    engines = resolve_count(role.engine_count(setup.config))
    await Node(setup, engines).run(role, stop)
