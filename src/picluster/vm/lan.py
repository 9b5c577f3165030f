"""A private LAN for the VMs: a network namespace with a bridge, one tap per VM, and
a DHCP server on the bridge, as a home router has.

Nothing touches the host's own interfaces: the namespace, bridge and taps are
created here and removed in ``close()``, which is safe to call twice and runs
from ``finally`` blocks and signal handlers. The DHCP server (dnsmasq) runs
inside the namespace, bound to the bridge only, with its leases, log and pid
file in the caller's work directory; ``Dhcp.close()`` stops it.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

SUBNET = ipaddress.ip_network("10.213.0.0/24")
DHCP_FIRST = SUBNET.network_address + 100
DHCP_LAST = SUBNET.network_address + 199
"""The range a DHCP client gets an address from (a home router's pool)."""
LEASE_TIME = "12h"


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


@dataclass(frozen=True)
class Lease:
    """One line of dnsmasq's leases file."""

    mac: str
    address: str
    hostname: str
    """The name the client sent with its request ("" when it sent none)."""

    @classmethod
    def parse(cls, line: str) -> Lease | None:
        # <expiry> <mac> <address> <hostname or *> <client id or *>
        parts = line.split()
        if len(parts) < 4:
            return None
        return cls(parts[1].lower(), parts[2], "" if parts[3] == "*" else parts[3])

    @property
    def from_range(self) -> bool:
        return DHCP_FIRST <= ipaddress.ip_address(self.address) <= DHCP_LAST


@dataclass
class Dhcp:
    """dnsmasq as the LAN's home router: DHCP only (``port=0``: no DNS), on ``br0``.

    ``reserved`` maps a MAC to a fixed address (a router's "address
    reservation"); every other client gets one from DHCP_FIRST..DHCP_LAST.
    ``--log-dhcp`` writes every request and answer to ``log``, which is how a
    test sees a client ask again after a reboot (dnsmasq keeps its lease, so the
    leases file alone does not change).
    """

    lan: Lan
    work: Path
    reserved: dict[str, ipaddress.IPv4Address] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None

    @property
    def leases_file(self) -> Path:
        return self.work / "dnsmasq.leases"

    @property
    def log(self) -> Path:
        return self.work / "dnsmasq.log"

    @property
    def pid_file(self) -> Path:
        return self.work / "dnsmasq.pid"

    def argv(self) -> list[str]:
        return [
            "dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--port=0",
            "--interface=br0", "--except-interface=lo", "--bind-interfaces",
            f"--dhcp-range={DHCP_FIRST},{DHCP_LAST},{SUBNET.netmask},{LEASE_TIME}",
            "--dhcp-authoritative", f"--dhcp-leasefile={self.leases_file}",
            f"--pid-file={self.pid_file}", "--log-dhcp", f"--log-facility={self.log}",
            *(f"--dhcp-host={mac},{address}" for mac, address in self.reserved.items()),
        ]  # fmt: skip

    def start(self, deadline: float = 20.0) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        for path in (self.leases_file, self.log, self.pid_file):
            path.unlink(missing_ok=True)
        self.leases_file.touch()
        self.process = subprocess.Popen(
            self.lan.exec_argv(self.argv()),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=(self.work / "dnsmasq.stderr").open("wb"),
            start_new_session=True,
        )
        # Up once it has written its pid file and its log says DHCP is on.
        end = time.monotonic() + deadline
        while not (self.pid_file.exists() and "DHCP, IP range" in self._log_text()):
            if self.process.poll() is not None or time.monotonic() > end:
                err = (self.work / "dnsmasq.stderr").read_text(errors="replace").strip()
                self.close()
                raise RuntimeError(
                    f"dnsmasq did not start on br0 of {self.lan.name} within {deadline:.0f} s: "
                    f"{err or self._log_text().strip() or 'no output'}"
                )
            time.sleep(0.1)

    def _log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def leases(self) -> dict[str, Lease]:
        """MAC (lower case) -> its lease."""
        try:
            lines = self.leases_file.read_text().splitlines()
        except FileNotFoundError:
            return {}
        return {lease.mac: lease for lease in map(Lease.parse, lines) if lease}

    def acks(self, mac: str) -> int:
        """How many times this server acknowledged a lease to ``mac`` (one per boot, and
        one per renewal: the lease time is longer than any test)."""
        pattern = re.compile(rf"DHCPACK\(br0\) \S+ {re.escape(mac)}\b", re.IGNORECASE)
        return len(pattern.findall(self._log_text()))

    def close(self) -> None:
        """Stop dnsmasq (its process group: SIGTERM, SIGKILL after 5 s). Safe twice."""
        proc, self.process = self.process, None
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.pid_file.unlink(missing_ok=True)
