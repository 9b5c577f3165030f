"""One virtual Pi: qemu-system-aarch64 -M virt booting the image's own kernel.

The kernel and initrd come out of the image's FAT partition (where
raspi-firmware puts them for a real Pi), read with mtools, so the disk boots
unmodified except for its card seed. The kernel command line is the card's own
``cmdline.txt`` from that partition, as the Pi's firmware passes it, plus
QEMU_CMDLINE (``kernel_cmdline``). Under TCG the CPU model matters:
cortex-a72 avoids the costly pointer-authentication emulation of ``-cpu max``.
The serial console goes to a log file that is kept when something fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

QEMU_CMDLINE = "console=ttyAMA0,115200"
"""What ``-M virt`` needs beyond the card's cmdline.txt: its PL011 UART as the console
(the last ``console=`` is /dev/console). The rest stays as the card has it. Its
``root=`` is LABEL=rootfs (debian base) or PARTUUID=<disk id>-02 (pi-gen's export):
the initrd's udev resolves both on virtio. Pi-only arguments (``console=serial0``,
which the Pi firmware rewrites, ``cma=64M``, ``cfg80211.ieee80211_regdom=``) are
ignored or harmless under ``virt``: a boot with them (and root=PARTUUID) prints no
unknown-parameter warning and reaches multi-user. Raspberry Pi Imager's
``ds=nocloud;i=<id>`` is "passed to user space" (the kernel says so, as on a Pi),
where cloud-init reads it from /proc/cmdline."""


def kernel_cmdline(cmdline_txt: str) -> str:
    """The kernel command line for a card: its cmdline.txt (one line; the firmware
    joins whitespace the same way) followed by QEMU_CMDLINE."""
    return " ".join([*cmdline_txt.split(), QEMU_CMDLINE])


# Serial-console markers, in boot order: (phase, pattern). Figures only: the
# console shows what systemd and getty chose to print, not always every line.
PHASES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("kernel", re.compile(r"Linux version \d")),
    ("login prompt", re.compile(r"\S+ login: ")),
    ("cloud-init done", re.compile(r"Cloud-init v\. \S+ finished at")),
)


# What a VM says about itself, in one ssh round trip: readiness is read from
# the VM (boot id, systemd, cloud-init, our units), never from console text,
# which systemd and getty do not always print. Timestamps are the VM's own
# monotonic clock (seconds since its kernel started). cloud-init's own state
# files are read rather than `cloud-init status`: that command imports
# cloud-init, which takes tens of seconds of an emulated CPU per poll.
PROBE = r"""
echo "boot_id=$(cat /proc/sys/kernel/random/boot_id)"
echo "uptime=$(cut -d' ' -f1 /proc/uptime)"
echo "system=$(systemctl is-system-running 2>/dev/null)"
echo "cloud_init_started=$(test -e /run/cloud-init/status.json && echo yes)"
echo "cloud_init_result=$(tr -d '\n' < /run/cloud-init/result.json 2>/dev/null)"
echo "agent=$(systemctl is-active picluster-agent.service)"
echo "failed=$(systemctl list-units --state=failed --plain --no-legend | awk '{print $1}' | xargs)"
for unit in multi-user.target cloud-final.service picluster-agent.service; do
    echo "t:$unit=$(systemctl show -p ActiveEnterTimestampMonotonic --value "$unit")"
done
"""


@dataclass(frozen=True)
class VMState:
    """One VM's own view of its boot (see ``PROBE``)."""

    boot_id: str
    uptime: float
    system: str
    """``systemctl is-system-running``: starting, running, degraded, ..."""
    cloud_init: str
    """not started, running, done or error (from /run/cloud-init)."""
    agent: str
    failed: list[str]
    reached: dict[str, float]
    """unit -> seconds after the kernel started when it became active."""

    @classmethod
    def parse(cls, text: str) -> VMState | None:
        values: dict[str, str] = {}
        for line in text.splitlines():
            key, sep, value = line.partition("=")
            if sep:
                values[key.strip()] = value.strip()
        if "boot_id" not in values:
            return None
        reached = {}
        for key, value in values.items():
            if key.startswith("t:") and value.isdigit() and int(value) > 0:
                reached[key[2:]] = int(value) / 1e6
        try:
            uptime = float(values.get("uptime", "0"))
        except ValueError:
            uptime = 0.0
        cloud_init = "running" if values.get("cloud_init_started") else "not started"
        if values.get("cloud_init_result"):
            try:
                result = json.loads(values["cloud_init_result"])
                errors = result["v1"]["errors"]
            except (ValueError, KeyError, TypeError):
                errors = ["unreadable /run/cloud-init/result.json"]
            cloud_init = "error" if errors else "done"
        return cls(
            boot_id=values["boot_id"],
            uptime=uptime,
            system=values.get("system", ""),
            cloud_init=cloud_init,
            agent=values.get("agent", ""),
            failed=values.get("failed", "").split(),
            reached=reached,
        )

    @property
    def booted(self) -> bool:
        """systemd finished starting (degraded included: the failed units are listed)."""
        return self.system in ("running", "degraded")

    @property
    def ready(self) -> bool:
        """Booted, cloud-init finished (cleanly or not) and our agent up."""
        return self.booted and self.cloud_init in ("done", "error") and self.agent == "active"

    def summary(self) -> str:
        failed = f", failed units: {' '.join(self.failed)}" if self.failed else ""
        return (
            f"system {self.system or '?'}, cloud-init {self.cloud_init or '?'}, "
            f"agent {self.agent or '?'}, up {self.uptime:.0f} s{failed}"
        )


@dataclass
class VM:
    name: str
    index: int
    disk: Path
    kernel: Path
    initrd: Path
    serial_log: Path
    tap: str
    mac: str
    cmdline: str
    """The kernel command line (``kernel_cmdline`` of the card's cmdline.txt)."""
    seeded: bool = True
    """False: the image as built, no card seed: no ssh key, an address from DHCP and
    a name it gives itself; observed from the LAN only."""
    memory_mb: int = 1024
    cpus: int = 2
    cpu: str = "cortex-a72"
    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    seen: dict[str, float] = field(default_factory=dict)
    """Figures only: phase -> seconds after QEMU started (console markers, probes)."""
    state: VMState | None = None
    """What the VM last said about itself over ssh (this boot)."""
    node: dict[str, Any] | None = None
    """Its row in ``picluster status --json`` on the LAN (this boot), for a VM without ssh."""
    boots: int = 0
    """How many times QEMU was started for it."""

    def argv(self) -> list[str]:
        return [
            "qemu-system-aarch64",
            "-M", "virt", "-cpu", self.cpu, "-smp", str(self.cpus), "-m", str(self.memory_mb),
            "-accel", "tcg,thread=multi",
            "-kernel", str(self.kernel), "-initrd", str(self.initrd), "-append", self.cmdline,
            "-drive", f"file={self.disk},format=raw,if=none,id=disk0,cache=unsafe",
            "-device", "virtio-blk-pci,drive=disk0",
            "-netdev", f"tap,id=net0,ifname={self.tap},script=no,downscript=no",
            "-device", f"virtio-net-pci,netdev=net0,mac={self.mac},romfile=",
            "-device", "virtio-rng-pci",
            "-display", "none", "-monitor", "none",
            "-serial", f"file:{self.serial_log}",
            "-name", self.name,
        ]  # fmt: skip

    def start(self, wrap: list[str]) -> None:
        """Start QEMU (``wrap`` puts it in the LAN's namespace)."""
        self.serial_log.parent.mkdir(parents=True, exist_ok=True)
        self.serial_log.write_bytes(b"")
        self.started = time.monotonic()
        self.seen.clear()
        self.state = None
        self.node = None
        self.boots += 1
        self.process = subprocess.Popen(
            [*wrap, *self.argv()],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self.serial_log.with_suffix(".qemu.log").open("wb"),
            start_new_session=True,
        )

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def serial(self) -> str:
        try:
            return self.serial_log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def observe(self, state: VMState | None) -> None:
        """Keep what the VM said about itself, and when each phase was first seen."""
        if state is None:
            return
        self.state = state
        now = time.monotonic() - self.started
        marks = {"ssh answers": True, "booted": state.booted, "ready": state.ready}
        for phase, reached in marks.items():
            if reached and phase not in self.seen:
                self.seen[phase] = now
        for unit, at in state.reached.items():
            self.seen.setdefault(f"{unit} (VM clock)", at)

    def observe_node(self, row: dict[str, Any] | None, registered: bool) -> None:
        """Keep its status row (``None``: not on the LAN) and when it was first seen."""
        if row is None:
            return
        self.node = row
        now = time.monotonic() - self.started
        marks = {"announced": True, "running": row.get("state") == "running",
                 "engines registered": registered, "ready": registered}  # fmt: skip
        for phase, reached in marks.items():
            if reached and phase not in self.seen:
                self.seen[phase] = now

    def summary(self) -> str:
        """What is known of this boot, in a few words."""
        if self.seeded:
            return self.state.summary() if self.state else "no answer over ssh"
        if self.node is None:
            return "not in 'picluster status' on the LAN"
        got = self.node.get("registered")
        return (
            f"state {self.node.get('state')}, {got if got is not None else '?'} of "
            f"{self.node.get('engines')} engines registered"
        )

    def update_phases(self) -> dict[str, float]:
        text = self.serial()
        now = time.monotonic() - self.started
        for phase, pattern in PHASES:
            if phase not in self.seen and pattern.search(text):
                self.seen[phase] = now
        return self.seen

    def stop(self, timeout: float = 20.0) -> None:
        """Power off: SIGTERM (QEMU exits at once), SIGKILL after ``timeout``."""
        if self.process is None:
            return
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(timeout=timeout)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.process = None


def mac_for(index: int) -> str:
    return f"52:54:00:21:30:{index:02x}"


def self_name(mac: str) -> str:
    """The name a card without one gives itself on a board without a serial number
    (QEMU's virt): ``engine-`` and the last 6 hex digits of its wired MAC."""
    return "engine-" + mac.replace(":", "").lower()[-6:]
