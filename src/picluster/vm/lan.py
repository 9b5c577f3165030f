"""A private LAN for the VMs: a network namespace with a bridge and one tap per VM.

Nothing touches the host's own interfaces: the namespace, bridge and taps are
created here and removed in ``close()``, which is safe to call twice and runs
from ``finally`` blocks and signal handlers.
"""

from __future__ import annotations

import ipaddress
import subprocess
from dataclasses import dataclass, field

SUBNET = ipaddress.ip_network("10.213.0.0/24")


def _ip(*args: str, ns: str | None = None) -> None:
    cmd = ["ip", *(["-n", ns] if ns else []), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {proc.stderr.strip()}")


@dataclass
class Lan:
    name: str
    taps: list[str] = field(default_factory=list)
    up: bool = False

    def create(self) -> None:
        subprocess.run(["ip", "netns", "delete", self.name], capture_output=True, check=False)
        _ip("netns", "add", self.name)
        self.up = True
        _ip("link", "set", "lo", "up", ns=self.name)
        _ip("link", "add", "br0", "type", "bridge", "mcast_snooping", "0", ns=self.name)
        _ip("addr", "add", f"{self.gateway}/{SUBNET.prefixlen}", "dev", "br0", ns=self.name)
        _ip("link", "set", "br0", "up", ns=self.name)

    @property
    def gateway(self) -> ipaddress.IPv4Address:
        return SUBNET.network_address + 1

    def address(self, index: int) -> ipaddress.IPv4Address:
        """VM ``index`` (0 = controller) gets .10, .11, ..."""
        return SUBNET.network_address + 10 + index

    def add_tap(self, index: int) -> str:
        tap = f"tap{index}"
        _ip("tuntap", "add", "dev", tap, "mode", "tap", ns=self.name)
        _ip("link", "set", tap, "master", "br0", ns=self.name)
        _ip("link", "set", tap, "up", ns=self.name)
        self.taps.append(tap)
        return tap

    def exec_argv(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]

    def close(self) -> None:
        if self.up:
            subprocess.run(["ip", "netns", "delete", self.name], capture_output=True, check=False)
            self.up = False
