"""``picluster doctor``: check this node and say what to fix."""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from picluster import config, roles, secret
from picluster.connection import PORT_RANGE
from picluster.paths import Paths, hostname

IFF_UP = 0x1
IFF_LOOPBACK = 0x8
IFF_MULTICAST = 0x1000


class Level(StrEnum):
    OK = "ok"
    WARN = "warning"
    FAIL = "fail"


@dataclass(frozen=True)
class Check:
    name: str
    level: Level
    message: str


def check_config(paths: Paths) -> tuple[Check, config.Config | None]:
    if not paths.config.exists():
        return Check("config", Level.OK, f"{paths.config} absent: all defaults"), config.Config()
    try:
        cfg = config.load(paths.config)
    except config.ConfigError as exc:
        return Check("config", Level.FAIL, str(exc)), None
    return Check("config", Level.OK, f"{paths.config} is valid"), cfg


def check_role(cfg: config.Config | None, source: Path) -> Check:
    if cfg is None:
        return Check("role", Level.FAIL, "unknown until the config is fixed")
    try:
        decision = roles.decide(hostname(), cfg)
    except roles.RoleError as exc:
        return Check("role", Level.FAIL, str(exc))
    return Check("role", Level.OK, decision.explain(str(source)))


def check_secret(paths: Paths) -> Check:
    path = secret.credential_path(paths.secret)
    try:
        keys = secret.Keys.derive(secret.load(path))
    except secret.SecretError as exc:
        return Check("secret", Level.FAIL, str(exc))
    problems = secret.check_permissions(path) if path == paths.secret else []
    if problems:
        return Check("secret", Level.FAIL, " ".join(problems))
    return Check("secret", Level.OK, f"{path} is private; key fingerprint {keys.fingerprint}")


def multicast_interfaces(sys_net: Path = Path("/sys/class/net")) -> list[str]:
    out = []
    for dev in sorted(sys_net.iterdir()):
        with contextlib.suppress(OSError, ValueError):
            flags = int((dev / "flags").read_text(), 16)
            if flags & IFF_UP and flags & IFF_MULTICAST and not flags & IFF_LOOPBACK:
                out.append(dev.name)
    return out


def check_multicast(sys_net: Path = Path("/sys/class/net")) -> Check:
    from picluster.discovery import lan_addresses

    ifaces = multicast_interfaces(sys_net)
    if not ifaces:
        return Check(
            "multicast",
            Level.FAIL,
            "no network interface is up with multicast: mDNS cannot find the controller. "
            'Fix: connect Ethernet/Wi-Fi, or set [cluster] controller = "<address>"',
        )
    if not lan_addresses():
        return Check(
            "multicast",
            Level.FAIL,
            f"{', '.join(ifaces)} up but no IPv4 address. Fix: check DHCP on your router "
            "(or the card's network-config)",
        )
    return Check("multicast", Level.OK, f"multicast-capable: {', '.join(ifaces)}")


def check_ports(cfg: config.Config | None, paths: Paths) -> Check:
    if cfg is None:
        return Check("ports", Level.FAIL, "unknown until the config is fixed")
    base = cfg.cluster.base_port
    busy = []
    for port in range(base, base + PORT_RANGE):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("0.0.0.0", port))
            except OSError:
                busy.append(port)
    if not busy:
        return Check("ports", Level.OK, f"{base}-{base + PORT_RANGE - 1} free")
    with contextlib.suppress(OSError, ValueError):
        state = json.loads(paths.status_file.read_text())
        if state.get("role") == "controller" and state.get("state") == "running":
            return Check(
                "ports", Level.OK, f"{base}-{base + PORT_RANGE - 1} used by our controller"
            )
    return Check(
        "ports",
        Level.FAIL if cfg is not None else Level.WARN,
        f"ports in use by another program: {', '.join(map(str, busy[:5]))}"
        f"{'...' if len(busy) > 5 else ''}. Fix: stop it, or choose another [cluster] base_port",
    )


def check_encryption(cfg: config.Config | None) -> Check:
    if cfg is None or cfg.cluster.curve:
        return Check("encryption", Level.OK, "CurveZMQ (keys derived from the secret)")
    return Check(
        "encryption",
        Level.WARN,
        "curve = false: the cluster's traffic (engine output, results) crosses the LAN in "
        "clear and anyone there can read it. Fix: remove 'curve = false' from [cluster] "
        "on every card",
    )


def run_checks(paths: Paths) -> list[Check]:
    cfg_check, cfg = check_config(paths)
    checks = [cfg_check, check_role(cfg, paths.config), check_secret(paths), check_multicast()]
    checks.append(check_encryption(cfg))
    role_ok = checks[1].level is Level.OK and cfg is not None
    if role_ok and cfg is not None and roles.decide(hostname(), cfg).role is roles.Role.CONTROLLER:
        checks.append(check_ports(cfg, paths))
    return checks


def main(
    paths: Paths,
    console: Console | None = None,
    runner: Callable[[Paths], list[Check]] = run_checks,
) -> int:
    console = console or Console()
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
        table.add_row(check.name, style[check.level], escape(check.message))
    console.print(table)
    return 1 if any(c.level is Level.FAIL for c in checks) else 0
