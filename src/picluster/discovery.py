"""mDNS with python-zeroconf: announce this node and find the controller.

It shares UDP 5353 with the image's avahi-daemon (both use SO_REUSEPORT). Our
services point at their own SRV host name ``<host>.picluster.local.`` rather
than avahi's ``<host>.local.``, so the two responders never claim the same
host record.

Every record we announce is sealed with the cluster's record key
(``records.seal``) and every record we resolve is opened before use
(:func:`open_info`): what comes back is either a record this cluster's key
vouches for, at an address that key vouches for (:class:`Found`,
:class:`Member`), or a :class:`Stranger` that claims our cluster without
being ours, which callers report and otherwise ignore. Records of other
clusters are neither: they are not our business. An instance name is only
a label: a controller that finds ``<cluster>._ipyparallel._tcp.local.``
taken by a stranger announces under another name, and engines follow the
sealed ``cluster`` field, not the name.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import ifaddr
from zeroconf import (
    DNSOutgoing,
    DNSQuestion,
    DNSRecord,
    InterfaceChoice,
    IPVersion,
    NonUniqueNameException,
    RecordUpdate,
    RecordUpdateListener,
    ServiceStateChange,
    Zeroconf,
    current_time_millis,
)
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from picluster.records import (
    CONTROLLER_TYPE,
    NODE_TYPE,
    ControllerRecord,
    Freshness,
    NodeRecord,
    RecordError,
    Sealed,
    Unauthenticated,
    seal,
    unseal,
)

log = logging.getLogger(__name__)

RESOLVE_MS = 3000
DIRECT_ANSWER_S = 1.0
"""How long ``browse`` listens for answers to its direct SRV/TXT questions (responders
delay multicast answers by up to ~0.5 s)."""


class DuplicateName(Exception):
    """Another responder on the LAN already owns this service name."""


def lan_addresses() -> list[str]:
    """IPv4 addresses of this host that other hosts can reach (not loopback/link-local)."""
    out = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if not isinstance(ip.ip, str):
                continue
            addr = ipaddress.IPv4Address(ip.ip)
            if addr.is_loopback or addr.is_link_local:
                continue
            out.append(ip.ip)
    return out


def choose_address(candidates: list[str]) -> str | None:
    """The candidate we can reach: not loopback, preferably on one of our subnets.

    A host resolving its own service may see 127.0.0.1 among the addresses.
    """
    usable = [a for a in candidates if not ipaddress.IPv4Address(a).is_loopback]
    if not usable:
        return None
    networks = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if isinstance(ip.ip, str):
                networks.append(ipaddress.IPv4Network(f"{ip.ip}/{ip.network_prefix}", strict=False))
    for addr in usable:
        if any(ipaddress.IPv4Address(addr) in net for net in networks):
            return addr
    return usable[0]


def open_zeroconf() -> AsyncZeroconf:
    return AsyncZeroconf(interfaces=InterfaceChoice.All, ip_version=IPVersion.V4Only)


class Sealer:
    """Seals this node's records: the record key, this agent run's epoch and a
    sequence number that only goes up (shared by every announcer the node opens,
    so a re-announcement after an address change is newer than the one before)."""

    def __init__(self, key: bytes, epoch: int) -> None:
        self._key = key
        self.epoch = epoch
        self._seq = itertools.count()

    def __repr__(self) -> str:  # the key never reaches a log
        return f"Sealer(epoch={self.epoch})"

    def info(
        self, type_: str, name: str, host: str, port: int, record: ControllerRecord | NodeRecord
    ) -> AsyncServiceInfo:
        addresses = lan_addresses()
        props = seal(
            record,
            self._key,
            service_type=type_,
            port=port,
            addresses=addresses,
            fresh=Freshness(self.epoch, next(self._seq)),
        )
        return AsyncServiceInfo(
            type_,
            name,
            port=port,
            properties=props,
            server=f"{host}.picluster.local.",
            parsed_addresses=addresses,
        )


class Announcer:
    """Registers and updates this node's services; unregisters them on close."""

    def __init__(self, aiozc: AsyncZeroconf, host: str, sealer: Sealer) -> None:
        self.aiozc = aiozc
        self.host = host
        self.sealer = sealer
        self._registered: dict[str, AsyncServiceInfo] = {}
        self.controller_name: str | None = None
        """The name the controller record got (another one when a stranger squats ours)."""

    async def _register(self, info: AsyncServiceInfo, rename: bool = False) -> None:
        try:
            task = await self.aiozc.async_register_service(info, allow_name_change=rename)
            await task
        except NonUniqueNameException:
            raise DuplicateName(info.name) from None
        self._registered[info.name] = info

    async def _update(self, info: AsyncServiceInfo) -> None:
        task = await self.aiozc.async_update_service(info)
        await task
        self._registered[info.name] = info

    async def announce_node(self, record: NodeRecord, port: int) -> None:
        name = NodeRecord.service_name(self.host)
        info = self.sealer.info(NODE_TYPE, name, self.host, port, record)
        if info.name in self._registered:
            await self._update(info)
        else:
            await self._register(info)

    async def announce_controller(self, record: ControllerRecord, *, rename: bool = False) -> str:
        """Register the controller record (update it once registered); the name it got.

        With ``rename``, a name already taken gets a suffix (``<cluster>-2``)
        instead of raising :class:`DuplicateName`: for a name a stranger squats.
        """
        if self.controller_name is not None:
            info = self.sealer.info(
                CONTROLLER_TYPE, self.controller_name, self.host, record.base_port, record
            )
            await self._update(info)
            return self.controller_name
        name = ControllerRecord.service_name(record.cluster)
        info = self.sealer.info(CONTROLLER_TYPE, name, self.host, record.base_port, record)
        await self._register(info, rename)
        self.controller_name = info.name
        return info.name

    async def withdraw(self, name: str) -> None:
        info = self._registered.pop(name, None)
        if name == self.controller_name:
            self.controller_name = None
        if info is not None:
            task = await self.aiozc.async_unregister_service(info)
            await task

    async def close(self) -> None:
        for name in list(self._registered):
            with contextlib.suppress(Exception):
                await self.withdraw(name)


# -- opening what others announce ---------------------------------------------------------


@dataclass(frozen=True)
class Found:
    """A controller record: sealed with our key (``fresh`` set) unless read without one."""

    record: ControllerRecord
    address: str
    fresh: Freshness | None = None
    name: str = ""


@dataclass(frozen=True)
class Member:
    record: NodeRecord
    address: str
    verified: bool = True


@dataclass(frozen=True)
class Stranger:
    """A record that claims our cluster (by field or by name) that our key did not seal.

    ``fp`` is the key fingerprint it claims, when it has one: a card with the
    wrong secret sees the real controller's record as a stranger with another
    fingerprint (see ``engine_role.EngineRole.untrusted``).
    """

    kind: str
    name: str
    address: str
    fp: str | None
    why: str

    def __str__(self) -> str:
        # The name comes off the LAN: repr() shows control characters as escapes.
        return f"unauthenticated record from {self.address} ({self.kind} {self.name!r}: {self.why})"


@dataclass(frozen=True)
class Goodbye:
    name: str


def _claims(record_cluster: str | None, name: str, type_: str, cluster: str) -> bool:
    """Does a record claim to belong to ``cluster``, by its field or by its name?"""
    if record_cluster is not None and record_cluster == cluster:
        return True
    if type_ == CONTROLLER_TYPE:
        return name.lower() == ControllerRecord.service_name(cluster).lower()
    return False


def _claimed(props: dict[bytes, bytes | None], key: str) -> str | None:
    value = props.get(key.encode())
    return None if value is None else value.decode("utf-8", "replace")


@dataclass(frozen=True)
class Resolved:
    """One answer for a service name: a TXT record with one SRV record and the A
    records of its host. Two responders may answer for the same name (a stranger
    squatting it, or announcing a copy): each answer is opened on its own."""

    type: str
    name: str
    properties: dict[bytes, bytes | None]
    addresses: list[str]
    port: int

    def parsed_addresses(self, version: IPVersion = IPVersion.V4Only) -> list[str]:
        return self.addresses


UNCOVERED = "announced from an address its seal does not cover"

# DNS type and class numbers (RFC 1035, RFC 2782): what the resolver's cache is keyed by.
TYPE_A, TYPE_TXT, TYPE_SRV, CLASS_IN = 1, 16, 33, 1


def unpack_txt(text: bytes) -> dict[bytes, bytes | None]:
    """TXT rdata as python-zeroconf decodes it: length-prefixed ``key=value`` strings,
    ``key`` alone (no '=') is None, the first of two equal keys wins."""
    props: dict[bytes, bytes | None] = {}
    pos = 0
    while pos < len(text):
        length = text[pos]
        key, sep, value = text[pos + 1 : pos + 1 + length].partition(b"=")
        pos += 1 + length
        if key and key not in props:
            props[key] = value if sep else None
    return props


class Heard(RecordUpdateListener):
    """Every record heard while it listens, kept even when a later answer from another
    responder flushes it from the cache (mDNS keeps one owner's records per name:
    with a stranger answering for our name, a snapshot shows either one)."""

    def __init__(self) -> None:
        self.records: dict[str, set[DNSRecord]] = {}

    def async_update_records(self, zc: Zeroconf, now: float, records: list[RecordUpdate]) -> None:
        for update in records:
            rec = update.new
            if rec.type in (TYPE_A, TYPE_TXT, TYPE_SRV) and rec.class_ == CLASS_IN:
                self.records.setdefault(rec.name.lower(), set()).add(rec)

    def async_entries_with_name(self, name: str) -> list[DNSRecord]:
        return list(self.records.get(name.lower(), ()))


def answers(zc: Zeroconf, type_: str, name: str, heard: Heard | None = None) -> list[Resolved]:
    """Every (TXT, SRV) pair the cache and ``heard`` hold for ``name``, not just the
    last one heard."""
    now = current_time_millis()

    def entries(name: str) -> set[DNSRecord]:
        out = set(zc.cache.async_entries_with_name(name))
        return out | set(heard.async_entries_with_name(name)) if heard else out

    live = [r for r in entries(name) if not r.is_expired(now)]
    txts = [r for r in live if r.type == TYPE_TXT and r.class_ == CLASS_IN]
    srvs = [r for r in live if r.type == TYPE_SRV and r.class_ == CLASS_IN]
    out = []
    for srv in srvs:
        addresses = []
        for rec in entries(srv.server):  # type: ignore[attr-defined]
            if rec.type == TYPE_A and rec.class_ == CLASS_IN and not rec.is_expired(now):
                addresses.append(str(ipaddress.IPv4Address(rec.address)))  # type: ignore[attr-defined]
        for txt in txts:
            props = unpack_txt(txt.text)  # type: ignore[attr-defined]
            out.append(Resolved(type_, name, props, addresses, srv.port))  # type: ignore[attr-defined]
    return out


async def open_name(
    aiozc: AsyncZeroconf,
    type_: str,
    name: str,
    cluster: str,
    key: bytes | None,
    heard: Heard | None = None,
) -> list[Found | Member | Stranger]:
    """Resolve ``name`` and open every answer: what is ours first (the freshest), then
    each stranger once, by address. A stranger's TXT paired with our own host's
    SRV is not reported: its address is ours, the stranger is reported by its own."""
    info = AsyncServiceInfo(type_, name)
    if not await info.async_request(aiozc.zeroconf, RESOLVE_MS):
        log.debug("could not resolve %r yet", name)
        return []
    opened = [open_info(a, cluster, key) for a in answers(aiozc.zeroconf, type_, name, heard)]
    ours = [o for o in opened if isinstance(o, Found | Member)]
    ours.sort(key=lambda o: (o.fresh is not None, o.fresh or 0) if isinstance(o, Found) else 0)
    at = {o.address for o in ours}
    strangers: dict[str, Stranger] = {}
    # A record's own fault (no MAC, a bad one) says more than a mismatched pairing.
    for o in sorted(opened, key=lambda o: isinstance(o, Stranger) and o.why == UNCOVERED):
        if isinstance(o, Stranger) and o.address not in at:
            strangers.setdefault(o.address, o)
    return [*ours[-1:], *strangers.values()]


def open_info(info: Resolved, cluster: str, key: bytes | None) -> Found | Member | Stranger | None:
    """What a resolved record is to a node of ``cluster`` holding ``key``.

    None when it is none of our business (another cluster's, or not ours and
    not claiming to be). Without ``key`` (a user who cannot read the secret)
    nothing can be checked: records are returned unverified.
    """
    type_ = CONTROLLER_TYPE if info.type.lower() == CONTROLLER_TYPE else NODE_TYPE
    kind = "controller" if type_ == CONTROLLER_TYPE else "node"
    props = info.properties
    claimed_cluster = _claimed(props, "cluster")
    if not _claims(claimed_cluster, info.name, type_, cluster):
        return None
    resolved = info.parsed_addresses(IPVersion.V4Only)
    lan = [a for a in resolved if not ipaddress.IPv4Address(a).is_loopback]
    seen_at = choose_address(lan) or (resolved[0] if resolved else "an unknown address")

    def stranger(why: str) -> Stranger:
        return Stranger(kind, info.name, seen_at, _claimed(props, "fp"), why)

    sealed: Sealed | None = None
    if key is not None:
        try:
            sealed = unseal(props, key, service_type=type_, port=info.port or 0)
        except Unauthenticated as exc:
            return stranger(str(exc))
    try:
        record = (ControllerRecord if type_ == CONTROLLER_TYPE else NodeRecord).decode(props)
    except RecordError as exc:
        return stranger(str(exc)) if sealed is None else None  # ours, from another version
    if sealed is None:
        address = choose_address(resolved)
    elif not lan and resolved:
        address = choose_address(list(sealed.addresses))  # our own host's view: loopback
    else:
        address = choose_address([a for a in lan if a in sealed.addresses])
    if address is None:
        if sealed is not None:
            return stranger(UNCOVERED)
        return None
    if isinstance(record, ControllerRecord):
        return Found(record, address, sealed.fresh if sealed else None, info.name)
    return Member(record, address, verified=sealed is not None)


class ControllerWatcher:
    """Follows every ``_ipyparallel._tcp`` record that claims ``cluster``: calls back
    with what each resolves to (:class:`Found` or :class:`Stranger`) on every
    add/update, and with :class:`Goodbye` when one is withdrawn."""

    def __init__(
        self,
        aiozc: AsyncZeroconf,
        cluster: str,
        key: bytes,
        on_change: Callable[[Found | Stranger | Goodbye], None],
    ) -> None:
        self.aiozc = aiozc
        self.cluster = cluster
        self._key = key
        self.on_change = on_change
        self.browser: AsyncServiceBrowser | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self.browser = AsyncServiceBrowser(
            self.aiozc.zeroconf, [CONTROLLER_TYPE], handlers=[self._handler]
        )

    def _handler(
        self,
        zeroconf: Zeroconf,
        service_type: str,
        name: str,
        state_change: ServiceStateChange,
    ) -> None:
        if state_change is ServiceStateChange.Removed:
            self.on_change(Goodbye(name))
            return
        task = asyncio.ensure_future(self._resolve(name))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _resolve(self, name: str) -> None:
        for opened in await open_name(self.aiozc, CONTROLLER_TYPE, name, self.cluster, self._key):
            if isinstance(opened, Found | Stranger):
                self.on_change(opened)

    async def close(self) -> None:
        if self.browser:
            await self.browser.async_cancel()
        for task in list(self._tasks):
            task.cancel()


@dataclass
class Scan:
    """What a node of one cluster sees on the LAN (``picluster status``)."""

    controllers: list[Found] = field(default_factory=list)
    nodes: list[Member] = field(default_factory=list)
    strangers: list[Stranger] = field(default_factory=list)


async def ask_directly(aiozc: AsyncZeroconf, names: list[str]) -> None:
    """Ask each name for its SRV and TXT outright, then listen for the answers (into
    the cache and any ``Heard`` listening): a responder keeps quiet when another one has
    just sent the same PTR (duplicate answer suppression), so a second owner of a name
    is only heard when asked for its own records."""
    for i in range(0, len(names), 8):  # a few names per packet: well inside the MTU
        out = DNSOutgoing(0)
        for name in names[i : i + 8]:
            out.add_question(DNSQuestion(name, TYPE_SRV, CLASS_IN))
            out.add_question(DNSQuestion(name, TYPE_TXT, CLASS_IN))
        aiozc.zeroconf.async_send(out)
    if names:
        await asyncio.sleep(DIRECT_ANSWER_S)  # the answers' listening window


async def browse(aiozc: AsyncZeroconf, seconds: float, cluster: str, key: bytes | None) -> Scan:
    """Everything announced for ``cluster`` within ``seconds``, opened with ``key``."""
    names: dict[str, set[str]] = {CONTROLLER_TYPE: set(), NODE_TYPE: set()}

    def handler(
        zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        if state_change is not ServiceStateChange.Removed:
            names[service_type].add(name)

    heard = Heard()
    aiozc.zeroconf.async_add_listener(heard, None)
    browser = AsyncServiceBrowser(aiozc.zeroconf, [CONTROLLER_TYPE, NODE_TYPE], handlers=[handler])
    try:
        await asyncio.sleep(seconds)  # a listening window, not synchronisation
        await ask_directly(aiozc, sorted(set().union(*names.values())))
    finally:
        await browser.async_cancel()

    scan = Scan()
    for type_ in (CONTROLLER_TYPE, NODE_TYPE):
        for name in sorted(names[type_]):
            for opened in await open_name(aiozc, type_, name, cluster, key, heard):
                if isinstance(opened, Found):
                    scan.controllers.append(opened)
                elif isinstance(opened, Member):
                    scan.nodes.append(opened)
                else:
                    scan.strangers.append(opened)
    aiozc.zeroconf.async_remove_listener(heard)
    return scan


def scan_lan(seconds: float, cluster: str, key: bytes | None) -> Scan:
    """``browse`` on a responder of its own, opened and closed here: what a command
    (``status``, ``hostfile``, ``connect``) sees of ``cluster`` within ``seconds``."""

    async def run() -> Scan:
        aiozc = open_zeroconf()
        try:
            return await browse(aiozc, seconds, cluster, key)
        finally:
            await aiozc.async_close()

    return asyncio.run(run())
