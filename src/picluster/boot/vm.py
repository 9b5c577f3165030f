"""One virtual Pi: qemu-system-aarch64 -M virt booting the image's own kernel.

The kernel and initrd come out of the image's FAT partition (where
raspi-firmware puts them for a real Pi), read with mtools, so the disk boots
unmodified except for its card seed. Under TCG the CPU model matters:
cortex-a72 avoids the costly pointer-authentication emulation of ``-cpu max``.
The serial console goes to a log file that is kept when something fails.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

KERNEL_CMDLINE = (
    "root=LABEL=rootfs rootwait rw console=ttyAMA0,115200 "
    "systemd.show_status=1 net.ifnames=0 fsck.repair=yes"
)

# serial-console markers, in boot order: (phase, pattern)
PHASES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("kernel", re.compile(r"Linux version \d")),
    ("login prompt", re.compile(r"\S+ login: ")),
    ("cloud-init done", re.compile(r"Cloud-init v\. \S+ finished at")),
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
    memory_mb: int = 1024
    cpus: int = 2
    cpu: str = "cortex-a72"
    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    seen: dict[str, float] = field(default_factory=dict)

    def argv(self) -> list[str]:
        return [
            "qemu-system-aarch64",
            "-M", "virt", "-cpu", self.cpu, "-smp", str(self.cpus), "-m", str(self.memory_mb),
            "-accel", "tcg,thread=multi",
            "-kernel", str(self.kernel), "-initrd", str(self.initrd), "-append", KERNEL_CMDLINE,
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
