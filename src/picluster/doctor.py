"""``picluster doctor``: check this node and say what to fix."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from picluster import config, roles, secret
from picluster.config import PORTS_USED
from picluster.findings import Finding, Level, has_errors
from picluster.mdns_log import quiet_zeroconf
from picluster.paths import Paths, hostname

IFF_UP = 0x1
IFF_LOOPBACK = 0x8
IFF_MULTICAST = 0x1000


def check_config(paths: Paths) -> tuple[Finding, config.Layered | None]:
    try:
        layered = config.load_layered(paths.config)
    except config.ConfigError as exc:
        return Finding("config", Level.FAIL, str(exc)), None
    if not layered.files:
        return Finding("config", Level.OK, f"{paths.config} absent: all defaults"), layered
    files = " + ".join(map(str, layered.files))
    return Finding(
        "config",
        Level.OK,
        f"{files} {'is' if len(layered.files) == 1 else 'are'} valid "
        "(`picluster config` shows which file set each value)",
    ), layered


def check_role(layered: config.Layered | None) -> Finding:
    if layered is None:
        return Finding("role", Level.FAIL, "unknown until the config is fixed")
    try:
        decision = roles.decide(hostname(), layered.config)
    except roles.RoleError as exc:
        return Finding("role", Level.FAIL, str(exc))
    return Finding("role", Level.OK, decision.explain(layered.decided(decision)))


def check_secret(paths: Paths) -> Finding:
    path = secret.credential_path(paths.secret)
    try:
        keys = secret.Keys.derive(secret.load(path))
    except secret.SecretError as exc:
        return Finding("secret", Level.FAIL, str(exc))
    problems = secret.check_permissions(path) if path == paths.secret else []
    if problems:
        return Finding("secret", Level.FAIL, " ".join(problems))
    return Finding("secret", Level.OK, f"{path} is private; key fingerprint {keys.fingerprint}")


def multicast_interfaces(sys_net: Path = Path("/sys/class/net")) -> list[str]:
    out = []
    for dev in sorted(sys_net.iterdir()):
        with contextlib.suppress(OSError, ValueError):
            flags = int((dev / "flags").read_text(), 16)
            if flags & IFF_UP and flags & IFF_MULTICAST and not flags & IFF_LOOPBACK:
                out.append(dev.name)
    return out


STATIC_FIX = (
    'Fix: give every engine card the controller\'s address, [cluster] controller = "<address>" '
    "in /etc/picluster/cluster.toml (discovery is then skipped); with `picluster cards`, set "
    'discovery = "static" in the manifest and give the controller\'s [[card]] a static '
    'address = "192.168.1.10/24" (examples/cluster-manifest.toml), then write the cards again'
)
MDNS_DEADLINE_S = 3.0
"""How long each mDNS question of the round trip may take (a first answer takes ~0.1 s)."""


@dataclass(frozen=True)
class RoundTrip:
    """What a real mDNS round trip heard: seconds to each answer, None for silence."""

    own: float | None
    controller: float | None
    controller_address: str = ""


def mdns_round_trip(host: str, cluster: str, deadline: float = MDNS_DEADLINE_S) -> RoundTrip:
    """Ask the LAN, by multicast, for this node's own record, then for the controller's."""
    import asyncio

    from zeroconf import IPVersion
    from zeroconf.asyncio import AsyncServiceInfo

    from picluster.discovery import choose_address, open_zeroconf
    from picluster.records import CONTROLLER_TYPE, NODE_TYPE, ControllerRecord, NodeRecord

    async def ask() -> RoundTrip:
        aiozc = open_zeroconf()
        try:
            took: list[float | None] = []
            infos = []
            for type_, name in (
                (NODE_TYPE, NodeRecord.service_name(host)),
                (CONTROLLER_TYPE, ControllerRecord.service_name(cluster)),
            ):
                info = AsyncServiceInfo(type_, name)
                start = time.monotonic()
                answered = await info.async_request(aiozc.zeroconf, int(deadline * 1000))
                took.append(time.monotonic() - start if answered else None)
                infos.append(info)
            address = ""
            if took[1] is not None:
                address = choose_address(infos[1].parsed_addresses(IPVersion.V4Only)) or ""
            return RoundTrip(took[0], took[1], address)
        finally:
            await aiozc.async_close()

    return asyncio.run(ask())


def _agent_running(paths: Paths) -> bool:
    with contextlib.suppress(OSError, ValueError):
        return json.loads(paths.status_file.read_text()).get("state") not in (None, "stopped")
    return False


def check_multicast(
    cfg: config.Config | None,
    paths: Paths,
    sys_net: Path = Path("/sys/class/net"),
    round_trip: Callable[[str, str], RoundTrip] | None = None,
) -> Finding:
    """Multicast tested, not guessed: interfaces first, then a real mDNS round trip."""
    from picluster.discovery import lan_addresses

    static = cfg.cluster.controller if cfg else ""
    ifaces = multicast_interfaces(sys_net)
    if not ifaces:
        return Finding(
            "multicast",
            Level.WARN if static else Level.FAIL,
            "no network interface is up with multicast: mDNS cannot find the controller. "
            f"Fix: connect Ethernet/Wi-Fi{'' if static else '; or ' + STATIC_FIX[5:]}",
        )
    if not lan_addresses():
        return Finding(
            "multicast",
            Level.FAIL,
            f"{', '.join(ifaces)} up but no IPv4 address. Fix: check DHCP on your router "
            "(or the card's network-config)",
        )
    if cfg is None:
        return Finding("multicast", Level.WARN, "mDNS not tested until the config is fixed")
    ask = round_trip or mdns_round_trip
    heard = ask(hostname(), cfg.cluster.name)
    controller_name = f"{cfg.cluster.name}._ipyparallel._tcp.local."
    if heard.controller is not None:
        own = f"this node's record in {heard.own * 1000:.0f} ms, " if heard.own is not None else ""
        return Finding(
            "multicast",
            Level.OK,
            # Any answer proves multicast works; whether it is sealed by our secret is
            # what `status` checks, so the address is not called "the controller" here.
            f"mDNS round trip on {', '.join(ifaces)}: {own}an answer for {controller_name} "
            f"from {heard.controller_address or '?'} in {heard.controller * 1000:.0f} ms "
            "(`picluster status` checks its seal)",
        )
    wait = f"{MDNS_DEADLINE_S:.0f} s"
    if heard.own is not None:
        what = (
            f"this node's own mDNS record answered, but nothing answered for {controller_name} "
            f"within {wait}: the controller is off or not on this LAN, or multicast does not "
            "cross this network (Wi-Fi client isolation)"
        )
    elif _agent_running(paths):
        what = (
            f"no mDNS answer within {wait}, not even for this node's own record (its agent is "
            f"running), nor for {controller_name}: multicast is blocked on this network "
            "(firewall, Wi-Fi client isolation)"
        )
    else:
        what = (
            f"no mDNS answer for {controller_name} within {wait} (this node's agent is not "
            "running, so its own record could not be asked for): the controller is off, or "
            "multicast is blocked on this network"
        )
    if static:
        return Finding(
            "multicast",
            Level.WARN,
            f"{what}. Not needed here: [cluster] controller = {static!r} is set",
        )
    return Finding("multicast", Level.FAIL, f"{what}. {STATIC_FIX}")


def check_ports(cfg: config.Config | None, paths: Paths) -> Finding:
    if cfg is None:
        return Finding("ports", Level.FAIL, "unknown until the config is fixed")
    base = cfg.cluster.base_port
    busy = []
    for port in range(base, base + PORTS_USED):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("0.0.0.0", port))
            except OSError:
                busy.append(port)
    if not busy:
        return Finding("ports", Level.OK, f"{base}-{base + PORTS_USED - 1} free")
    with contextlib.suppress(OSError, ValueError):
        state = json.loads(paths.status_file.read_text())
        if state.get("role") == "controller" and state.get("state") == "running":
            return Finding(
                "ports", Level.OK, f"{base}-{base + PORTS_USED - 1} used by our controller"
            )
    return Finding(
        "ports",
        Level.FAIL if cfg is not None else Level.WARN,
        f"ports in use by another program: {', '.join(map(str, busy[:5]))}"
        f"{'...' if len(busy) > 5 else ''}. Fix: stop it, or choose another [cluster] base_port",
    )


def check_encryption(cfg: config.Config | None) -> Finding:
    if cfg is None or cfg.cluster.curve:
        return Finding("encryption", Level.OK, "CurveZMQ (keys derived from the secret)")
    return Finding(
        "encryption",
        Level.WARN,
        "curve = false: the cluster's traffic (engine output, results) crosses the LAN in "
        "clear and anyone there can read it. Fix: remove 'curve = false' from [cluster] "
        "on every card",
    )


def run_checks(paths: Paths) -> list[Finding]:
    cfg_check, layered = check_config(paths)
    cfg = layered.config if layered else None
    checks = [cfg_check, check_role(layered), check_secret(paths), check_multicast(cfg, paths)]
    checks.append(check_encryption(cfg))
    role_ok = checks[1].level is Level.OK and cfg is not None
    if role_ok and cfg is not None and roles.decide(hostname(), cfg).role is roles.Role.CONTROLLER:
        checks.append(check_ports(cfg, paths))
    return checks


def main(
    paths: Paths,
    console: Console | None = None,
    runner: Callable[[Paths], list[Finding]] = run_checks,
) -> int:
    quiet_zeroconf()
    console = console or Console(width=int(os.environ.get("COLUMNS", "120")))
    checks = runner(paths)
    table = Table(title=f"picluster doctor on {hostname()}", show_lines=True)
    table.add_column("check")
    table.add_column("result")
    table.add_column("details / fix", overflow="fold")
    style = {
        Level.OK: "[green]ok[/green]",
        Level.WARN: "[yellow]warning[/yellow]",
        Level.FAIL: "[red]FAIL[/red]",
    }
    for check in checks:
        table.add_row(check.rule, style[check.level], escape(check.message))
    console.print(table)
    return 1 if has_errors(checks) else 0
