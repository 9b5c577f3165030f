"""A LAN of network namespaces on one machine: a bridge and N hosts.

The bridge lives in its own namespace, so nothing the tests send ever touches
the machine's real interfaces; multicast snooping is off so that mDNS floods
like on a home switch. Everything is created under a per-run prefix and torn
down in ``close()``, which also kills every process left in the namespaces.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path


def sh(
    *argv: str, check: bool = True, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, capture_output=True, text=True, input=input, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def pids_in(ns: str) -> list[int]:
    out = sh("ip", "netns", "pids", ns, check=False).stdout.split()
    return [int(p) for p in out if p.isdigit()]


def kill_namespace_processes(ns: str, sig: int = signal.SIGKILL, deadline: float = 10.0) -> None:
    """Kill every process in ``ns`` and wait until none is left."""
    end = time.monotonic() + deadline
    while True:
        pids = pids_in(ns)
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        if time.monotonic() > end:
            raise RuntimeError(f"processes {pids} in namespace {ns} survived {sig!r}")
        time.sleep(0.05)


@dataclass
class Host:
    name: str
    ns: str
    address: str

    def run(
        self, *argv: str, check: bool = True, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        return sh("ip", "netns", "exec", self.ns, *argv, check=check, input=input)

    def pids(self, cmdline_part: str) -> list[int]:
        """Processes on this host whose command line contains ``cmdline_part``."""
        out = []
        for pid in pids_in(self.ns):
            with contextlib.suppress(OSError):
                raw = Path(f"/proc/{pid}/cmdline").read_bytes()
                if cmdline_part.encode() in raw:
                    out.append(pid)
        return sorted(out)

    def block_multicast(self) -> None:
        """Drop all multicast in and out of this host, as some Wi-Fi networks do."""
        rules = (
            "table inet nomcast {\n"
            " chain in { type filter hook input priority 0; ip daddr 224.0.0.0/4 drop; }\n"
            " chain out { type filter hook output priority 0; ip daddr 224.0.0.0/4 drop; }\n"
            "}\n"
        )
        self.run("nft", "-f", "-", input=rules)


@dataclass
class Lan:
    prefix: str
    subnet: str = "10.77.0"
    hosts: dict[str, Host] = field(default_factory=dict)
    _next: int = 1

    @property
    def switch(self) -> str:
        return f"{self.prefix}-sw"

    def __post_init__(self) -> None:
        sh("ip", "netns", "add", self.switch)
        try:
            sw = ("ip", "netns", "exec", self.switch)
            sh(*sw, "ip", "link", "set", "lo", "up")
            sh(*sw, "ip", "link", "add", "br0", "type", "bridge", "mcast_snooping", "0")
            sh(*sw, "ip", "link", "set", "br0", "up")
        except Exception:
            self.close()
            raise

    def add_host(self, name: str) -> Host:
        index = self._next
        self._next += 1
        ns = f"{self.prefix}-{name}"
        host = Host(name, ns, f"{self.subnet}.{index}")
        self.hosts[name] = host
        outer = f"v{index}"  # lives in the switch namespace: short, unique there
        sh("ip", "netns", "add", ns)
        sh(
            "ip",
            "link",
            "add",
            outer,
            "netns",
            self.switch,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            ns,
        )
        sw = ("ip", "netns", "exec", self.switch)
        sh(*sw, "ip", "link", "set", outer, "master", "br0")
        sh(*sw, "ip", "link", "set", outer, "up")
        host.run("ip", "link", "set", "lo", "up")
        host.run("ip", "addr", "add", f"{host.address}/24", "dev", "eth0")
        host.run("ip", "link", "set", "eth0", "up")
        return host

    def close(self) -> None:
        errors = []
        for ns in [h.ns for h in self.hosts.values()] + [self.switch]:
            try:
                kill_namespace_processes(ns)
            except RuntimeError as exc:
                errors.append(str(exc))
            sh("ip", "netns", "delete", ns, check=False)
        self.hosts.clear()
        if errors:
            raise RuntimeError("; ".join(errors))


def sweep_stale(prefix_root: str = "pct") -> None:
    """Remove namespaces left by a test run that was killed (SIGKILL skips finally)."""
    for line in sh("ip", "netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        if not name.startswith(prefix_root):
            continue
        owner = name[len(prefix_root) :].split("-", 1)[0]
        if owner.isdigit() and not Path(f"/proc/{owner}").exists():
            with contextlib.suppress(RuntimeError):
                kill_namespace_processes(name)
            sh("ip", "netns", "delete", name, check=False)
