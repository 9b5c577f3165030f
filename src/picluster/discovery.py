"""mDNS with python-zeroconf: announce this node and find the controller.

It shares UDP 5353 with the image's avahi-daemon (both use SO_REUSEPORT). Our
services point at their own SRV host name ``<host>.picluster.local.`` rather
than avahi's ``<host>.local.``, so the two responders never claim the same
host record.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from collections.abc import Callable
from dataclasses import dataclass

import ifaddr
from zeroconf import (
    InterfaceChoice,
    IPVersion,
    NonUniqueNameException,
    ServiceStateChange,
    Zeroconf,
)
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from picluster.records import CONTROLLER_TYPE, NODE_TYPE, ControllerRecord, NodeRecord, to_props

log = logging.getLogger(__name__)

RESOLVE_MS = 3000


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


def _info(
    type_: str, name: str, host: str, port: int, props: dict[bytes, bytes]
) -> AsyncServiceInfo:
    return AsyncServiceInfo(
        type_,
        name,
        port=port,
        properties=props,
        server=f"{host}.picluster.local.",
        parsed_addresses=lan_addresses(),
    )


class Announcer:
    """Registers and updates this node's services; unregisters them on close."""

    def __init__(self, aiozc: AsyncZeroconf, host: str) -> None:
        self.aiozc = aiozc
        self.host = host
        self._registered: dict[str, AsyncServiceInfo] = {}

    async def _register(self, info: AsyncServiceInfo) -> None:
        try:
            task = await self.aiozc.async_register_service(info, allow_name_change=False)
            await task
        except NonUniqueNameException:
            raise DuplicateName(info.name) from None
        self._registered[info.name] = info

    async def announce_node(self, record: NodeRecord, port: int) -> None:
        info = _info(
            NODE_TYPE, NodeRecord.service_name(self.host), self.host, port, to_props(record)
        )
        if info.name in self._registered:
            task = await self.aiozc.async_update_service(info)
            await task
            self._registered[info.name] = info
        else:
            await self._register(info)

    async def announce_controller(self, record: ControllerRecord) -> None:
        name = ControllerRecord.service_name(record.cluster)
        info = _info(CONTROLLER_TYPE, name, self.host, record.base_port, to_props(record))
        await self._register(info)

    async def withdraw(self, name: str) -> None:
        info = self._registered.pop(name, None)
        if info is not None:
            task = await self.aiozc.async_unregister_service(info)
            await task

    async def close(self) -> None:
        for name in list(self._registered):
            with contextlib.suppress(Exception):
                await self.withdraw(name)


@dataclass(frozen=True)
class Found:
    record: ControllerRecord
    address: str


class ControllerWatcher:
    """Follows ``<cluster>._ipyparallel._tcp.local.``: calls back with what it
    resolves to on every add/update, and with None when it says goodbye."""

    def __init__(
        self, aiozc: AsyncZeroconf, cluster: str, on_change: Callable[[Found | None], None]
    ) -> None:
        self.aiozc = aiozc
        self.name = ControllerRecord.service_name(cluster)
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
        if name.lower() != self.name.lower():
            return
        if state_change is ServiceStateChange.Removed:
            self.on_change(None)
            return
        task = asyncio.ensure_future(self._resolve(name))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _resolve(self, name: str) -> None:
        info = AsyncServiceInfo(CONTROLLER_TYPE, name)
        if not await info.async_request(self.aiozc.zeroconf, RESOLVE_MS):
            log.debug("could not resolve %s yet", name)
            return
        try:
            record = ControllerRecord.decode(info.properties)
        except ValueError as exc:
            log.warning("ignoring controller record %s: %s", name, exc)
            return
        address = choose_address(info.parsed_addresses(IPVersion.V4Only))
        if address is None:
            log.warning("controller record %s has no reachable IPv4 address", name)
            return
        self.on_change(Found(record, address))

    async def close(self) -> None:
        if self.browser:
            await self.browser.async_cancel()
        for task in list(self._tasks):
            task.cancel()


async def browse(
    aiozc: AsyncZeroconf, seconds: float
) -> tuple[list[tuple[ControllerRecord, list[str], str]], list[tuple[NodeRecord, list[str]]]]:
    """Everything announced on the LAN within ``seconds`` (for ``picluster status``)."""
    names: dict[str, set[str]] = {CONTROLLER_TYPE: set(), NODE_TYPE: set()}

    def handler(
        zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        if state_change is not ServiceStateChange.Removed:
            names[service_type].add(name)

    browser = AsyncServiceBrowser(aiozc.zeroconf, [CONTROLLER_TYPE, NODE_TYPE], handlers=[handler])
    try:
        await asyncio.sleep(seconds)  # a listening window, not synchronisation
    finally:
        await browser.async_cancel()

    async def resolve(type_: str, name: str) -> AsyncServiceInfo | None:
        info = AsyncServiceInfo(type_, name)
        return info if await info.async_request(aiozc.zeroconf, RESOLVE_MS) else None

    controllers = []
    for name in sorted(names[CONTROLLER_TYPE]):
        info = await resolve(CONTROLLER_TYPE, name)
        if info is None:
            continue
        with contextlib.suppress(ValueError):
            rec = ControllerRecord.decode(info.properties)
            controllers.append((rec, info.parsed_addresses(IPVersion.V4Only), info.server or ""))
    nodes = []
    for name in sorted(names[NODE_TYPE]):
        info = await resolve(NODE_TYPE, name)
        if info is None:
            continue
        with contextlib.suppress(ValueError):
            nodes.append(
                (NodeRecord.decode(info.properties), info.parsed_addresses(IPVersion.V4Only))
            )
    return controllers, nodes
