"""``picluster doctor``: check this node and say what to fix."""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from picluster import config, roles, secret
from picluster.config import PORTS_USED
from picluster.findings import Finding, Level, has_errors
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


def check_multicast(sys_net: Path = Path("/sys/class/net")) -> Finding:
    from picluster.discovery import lan_addresses

    ifaces = multicast_interfaces(sys_net)
    if not ifaces:
        return Finding(
            "multicast",
            Level.FAIL,
            "no network interface is up with multicast: mDNS cannot find the controller. "
            'Fix: connect Ethernet/Wi-Fi, or set [cluster] controller = "<address>"',
        )
    if not lan_addresses():
        return Finding(
            "multicast",
            Level.FAIL,
            f"{', '.join(ifaces)} up but no IPv4 address. Fix: check DHCP on your router "
            "(or the card's network-config)",
        )
    return Finding("multicast", Level.OK, f"multicast-capable: {', '.join(ifaces)}")


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
    checks = [cfg_check, check_role(layered), check_secret(paths), check_multicast()]
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
        table.add_row(check.rule, style[check.level], escape(check.message))
    console.print(table)
    return 1 if has_errors(checks) else 0
