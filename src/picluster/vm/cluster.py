"""Boot the image as a virtual cluster: one controller VM and N engine VMs.

Phase by phase, each with a deadline: seeds (``picluster cards``), one card
image per VM (``picluster seed``; an unseeded VM gets a plain copy of the
image), the LAN with its DHCP server, QEMU, then what each VM reaches (kernel,
login prompt, cloud-init done from its serial console; a seeded VM's own view
over ssh; role and registered engines from ``picluster status`` run on the VM
LAN with the build's secret, the only view of an unseeded VM). Addresses are
a home network's: the controller's from DHCP (reserved for its MAC, as a
router does), an unseeded engine's from the DHCP range, a seeded engine's
static from its seed. Everything is torn down in ``close()``, also on errors
and Ctrl-C; serial logs stay in the work directory.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from picluster import config
from picluster.cards import bootfs
from picluster.config import ClusterSection
from picluster.errors import PiclusterError
from picluster.files import atomic_write_text
from picluster.vm import lan as lan_mod
from picluster.vm import machine as vm_mod
from picluster.vm.machine import PROBE, VMState

HOST_TOOLS = {
    "qemu-system-aarch64": "qemu-system-arm",
    "ip": "iproute2",
    "dnsmasq": "dnsmasq-base",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
    "mdir": "mtools",
    "mtype": "mtools",
    "mcopy": "mtools",
}
"""What ``picluster boot`` runs on the host -> its Debian package (dnsmasq-base is the
binary without the system service that the dnsmasq package would enable)."""

PY = [sys.executable, "-m", "picluster"]
SSH_OPTIONS = (
    "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
    "-o", "ConnectTimeout=10", "-o", "LogLevel=ERROR",
)  # fmt: skip


class BootError(PiclusterError):
    pass


def check_host_tools() -> None:
    missing = sorted({pkg for tool, pkg in HOST_TOOLS.items() if shutil.which(tool) is None})
    if missing:
        tools = ", ".join(t for t, p in HOST_TOOLS.items() if p in missing)
        raise BootError(
            f"missing host tools: {tools}. Fix: sudo apt-get install {' '.join(missing)}"
        )


def wait_for(
    predicate: Callable[[], Any], deadline: float, what: str, interval: float = 2.0
) -> Any:
    """Poll ``predicate`` until it returns something truthy, or fail naming ``what``."""
    end = time.monotonic() + deadline
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > end:
            raise BootError(f"after {deadline:.0f} s: {what}")
        time.sleep(interval)


def image_raw(image: Path, work: Path) -> Path:
    """A raw image to copy from: ``.img`` as is, ``.img.xz`` unpacked once into ``work``."""
    if image.suffix != ".xz":
        return image
    raw = work / image.with_suffix("").name
    stamp = raw.with_suffix(".stamp")
    key = f"{image.resolve()} {image.stat().st_size} {image.stat().st_mtime_ns}"
    if not (raw.exists() and stamp.exists() and stamp.read_text() == key):
        partial = raw.with_suffix(".partial")
        with partial.open("wb") as out:
            bootfs.copy_image(image, out)
        partial.replace(raw)
        stamp.write_text(key)
    return raw


def kernel_and_initrd(raw: Path, dest: Path) -> tuple[Path, Path]:
    """Copy the newest vmlinuz/initrd.img from the image's FAT partition (mtools)."""
    part = bootfs.boot_partition(raw)
    listing = subprocess.run(
        ["mdir", "-b", "-i", f"{raw}@@{part.start}", "::"],
        capture_output=True, text=True, check=True, env={**os.environ, "MTOOLS_SKIP_CHECK": "1"},
    ).stdout.split()  # fmt: skip
    names = [n.removeprefix("::/").removeprefix("::") for n in listing]
    kernels = sorted(n for n in names if n.startswith("vmlinuz"))
    initrds = sorted(n for n in names if n.startswith("initrd.img"))
    if not kernels or not initrds:
        raise BootError(f"{raw}: no vmlinuz/initrd.img on the FAT partition (found {names})")
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for name in (kernels[-1], initrds[-1]):
        target = dest / name
        target.write_bytes(bootfs.read_file(raw, name, part))
        out.append(target)
    return out[0], out[1]


def imager_cmdline(disk: Path, card: Path) -> None:
    """Do to the card's cmdline.txt what Raspberry Pi Imager 2.x does: append
    `` ds=nocloud;i=<instance-id>`` (the id of the seed's meta-data)."""
    meta = (card / "meta-data").read_text()
    match = re.search(r"^instance-id:\s*(\S+)", meta, re.MULTILINE)
    if not match:
        raise BootError(f"{card / 'meta-data'}: no instance-id")
    part = bootfs.boot_partition(disk)
    line = bootfs.read_file(disk, "cmdline.txt", part).decode().strip()
    new = disk.with_name(disk.name + ".cmdline.txt")
    new.write_text(f"{line} ds=nocloud;i={match.group(1)}\n")
    try:
        bootfs.write_seed(disk, {"cmdline.txt": new}, part)
    finally:
        new.unlink(missing_ok=True)


def node_ready(row: dict[str, Any] | None, engines: int) -> bool:
    """A ``picluster status --json`` host row: running, with ``engines`` registered."""
    return bool(row and row.get("state") == "running" and (row.get("registered") or 0) >= engines)


@dataclass
class BootCluster:
    image: Path
    secret: Path
    work: Path
    engines: int = 2
    """Engine VMs with a card seed (engine-1 .. engine-N)."""
    unseeded: int = 0
    """Engine VMs that boot the image as built: no seed, a DHCP address, a name of their own."""
    memory_mb: int = 1024
    cpus: int = 2
    cluster: str = field(default_factory=lambda: ClusterSection().name)
    base_port: int | None = None
    """None = the image's own (what its build set, else the node default)."""
    user: str = "pi"
    """Who logs in over ssh: the image's first user, whose keys the seeds give."""
    log: Callable[[str], None] = print
    lan: lan_mod.Lan | None = None
    dhcp: lan_mod.Dhcp | None = None
    vms: list[vm_mod.VM] = field(default_factory=list)
    helpers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    key: Path | None = None
    _acks_before: dict[str, int] = field(default_factory=dict)
    """VM name -> DHCP acks it had when its QEMU last started."""

    @property
    def hostnames(self) -> list[str]:
        """The seeded VMs' names (their cards' hostnames)."""
        return ["controller"] + [f"engine-{i}" for i in range(1, self.engines + 1)]

    @property
    def unseeded_names(self) -> list[str]:
        """The names the unseeded VMs must give themselves (after their MACs)."""
        first = len(self.hostnames)
        return [vm_mod.self_name(vm_mod.mac_for(first + i)) for i in range(self.unseeded)]

    # --- preparation -------------------------------------------------------
    def prepare(self) -> None:
        check_host_tools()
        self.work.mkdir(parents=True, exist_ok=True)
        self.key = self.work / "id_ed25519"
        if not self.key.exists():
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "picluster-boot",
                 "-f", str(self.key)],
                check=True,
            )  # fmt: skip
        manifest = self.work / "cluster.toml"
        # As a user writes one: no secret and no user, so the cards keep the image's
        # own (the boot tier proves that path); only the cards' names and addresses:
        # the controller takes DHCP (its address is reserved for its MAC on the LAN's
        # DHCP server), every seeded engine a static one.
        port = {"base_port": self.base_port} if self.base_port is not None else {}
        data: dict[str, Any] = {
            "cluster": self.cluster,
            **port,
            "ssh_keys": [str(self.key.with_suffix(".pub"))],
            "card": [
                {"hostname": h, **({"address": f"{self._lan_address(i)}/24"} if i else {})}
                for i, h in enumerate(self.hostnames)
            ],
        }
        atomic_write_text(manifest, tomli_w.dumps(data), 0o644)
        status_toml = config.dumps({"cluster": {"name": self.cluster, **port}})
        atomic_write_text(self.status_config, status_toml, 0o644)
        cards_dir = self.work / "cards"
        shutil.rmtree(cards_dir, ignore_errors=True)
        self._run([*PY, "cards", str(manifest), "--out", str(cards_dir)], "picluster cards")
        raw = image_raw(self.image, self.work)
        kernel, initrd = kernel_and_initrd(raw, self.work / "kernel")
        names = [*self.hostnames, *self.unseeded_names]
        for i, host in enumerate(names):
            disk = self.work / f"{host}.img"
            seeded = i < len(self.hostnames)
            if seeded:
                self.log(f"{host}: writing its card image (picluster seed)")
                self._run(
                    [*PY, "seed", str(raw), "--card", str(cards_dir / host), "-o", str(disk)],
                    f"picluster seed for {host}",
                )
                if i:
                    imager_cmdline(disk, cards_dir / host)
            else:
                self.log(f"{host}: copying the image as built (no seed; it names itself)")
                self._run(["cp", "--sparse=always", str(raw), str(disk)], f"copy for {host}")
            cmdline = bootfs.read_file(disk, "cmdline.txt").decode(errors="replace")
            self.vms.append(
                vm_mod.VM(
                    name=host, index=i, disk=disk, kernel=kernel, initrd=initrd,
                    serial_log=self.work / "serial" / f"{host}.log", tap=f"tap{i}",
                    mac=vm_mod.mac_for(i), cmdline=vm_mod.kernel_cmdline(cmdline),
                    seeded=seeded, memory_mb=self.memory_mb, cpus=self.cpus,
                )
            )  # fmt: skip

    def _lan_address(self, index: int) -> str:
        """A seeded VM's address: reserved on the DHCP server (controller) or static."""
        return str(lan_mod.SUBNET.network_address + 10 + index)

    def address(self, vm: vm_mod.VM) -> str:
        """Where ``vm`` is on the LAN: its fixed address, or its lease ("" before one)."""
        if vm.seeded:
            return self._lan_address(vm.index)
        lease = self.dhcp.leases().get(vm.mac) if self.dhcp else None
        return lease.address if lease else ""

    def dhcp_acks(self, vm: vm_mod.VM) -> int:
        return self.dhcp.acks(vm.mac) if self.dhcp else 0

    def _run(self, argv: list[str], what: str) -> str:
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise BootError(f"{what} failed: {proc.stderr.strip() or proc.stdout.strip()}")
        return proc.stdout

    # --- running -----------------------------------------------------------
    def start(self) -> None:
        self.lan = lan_mod.Lan(f"picluster-boot-{os.getpid()}")
        self.lan.create()
        controller = self.vms[0] if self.vms else None
        reserved = {controller.mac: lan_mod.SUBNET.network_address + 10} if controller else {}
        self.dhcp = lan_mod.Dhcp(self.lan, self.work / "dhcp", reserved)
        try:
            self.dhcp.start()
        except RuntimeError as exc:
            raise BootError(str(exc)) from None
        for vm in self.vms:
            self.lan.add_tap(vm.index)
            self._start_vm(vm)
            self.log(f"{vm.name}: QEMU started ({vm.cpus} vCPU, {vm.memory_mb} MiB)")

    def _start_vm(self, vm: vm_mod.VM) -> None:
        assert self.lan
        self._acks_before[vm.name] = self.dhcp_acks(vm)
        vm.start(["ip", "netns", "exec", self.lan.name])

    def power_cycle(self, vms: list[vm_mod.VM] | None = None) -> None:
        """Power off and on again: every VM, or only ``vms``."""
        vms = self.vms if vms is None else vms
        self._close_ssh()
        for vm in vms:
            vm.stop()
        for vm in vms:
            self._start_vm(vm)

    def in_lan(self, argv: list[str], timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        assert self.lan
        try:
            return subprocess.run(
                self.lan.exec_argv(argv),
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            # A VM under emulation can take minutes to answer; callers poll.
            out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else exc.stdout or ""
            return subprocess.CompletedProcess(argv, 124, out, f"timed out after {timeout:.0f} s")

    def _control_path(self, host_index: int) -> Path:
        return self.work / f"ssh-{host_index}.ctl"

    def ssh(
        self, host_index: int, command: str, timeout: float = 120.0
    ) -> subprocess.CompletedProcess[str]:
        """``command`` on a VM as the first user. One master connection per VM is
        kept for a minute, so polling an emulated VM does not pay a key exchange
        (seconds of its emulated CPU) every time."""
        assert self.key
        return self.in_lan(
            [
                "ssh", "-i", str(self.key), *SSH_OPTIONS,
                "-o", "ControlMaster=auto", "-o", "ControlPersist=60",
                "-o", f"ControlPath={self._control_path(host_index)}",
                f"{self.user}@{self._lan_address(host_index)}", command,
            ],
            timeout=timeout,
        )  # fmt: skip

    def probe(self, host_index: int, timeout: float = 120.0) -> VMState | None:
        """The VM's own view of its boot, or None while it does not answer ssh."""
        proc = self.ssh(host_index, PROBE, timeout)
        return VMState.parse(proc.stdout) if proc.returncode == 0 else None

    def observe(self, old_boots: dict[str, str] | None = None) -> list[vm_mod.VM]:
        """Look at every VM once; return the VMs that are not ready yet.

        A seeded VM is probed over ssh: ready once booted, cloud-init finished
        and the agent active. ``old_boots`` (name -> boot id) makes answers from
        an earlier boot of the same VM count as no answer, so a power cycle
        cannot be mistaken for a finished boot. An unseeded VM has no key to log
        in with: it is ready once ``picluster status`` on the LAN lists it under
        its own name, running, with all its engines registered; and only after
        it took a DHCP lease in this boot (so nothing of an earlier boot counts;
        the controller drops a dead VM's engines within a minute, its next boot
        takes minutes). Raises BootError when a VM's QEMU has exited.
        """
        pending = []
        view: dict[str, Any] | None = None
        for vm in self.vms:
            if not vm.alive():
                raise BootError(f"{vm.name}: QEMU exited; serial log {vm.serial_log}")
            vm.update_phases()
            if not vm.seeded:
                if self.dhcp_acks(vm) > self._acks_before.get(vm.name, 0):
                    vm.seen.setdefault("DHCP lease", time.monotonic() - vm.started)
                    view = view if view is not None else self.status() or {}
                    row = next((h for h in view.get("hosts", []) if h["host"] == vm.name), None)
                    vm.observe_node(row, registered=node_ready(row, vm.cpus))
                    if node_ready(row, vm.cpus):
                        continue
                pending.append(vm)
                continue
            state = self.probe(vm.index, timeout=60)
            if state and old_boots and state.boot_id == old_boots.get(vm.name):
                state = None
            vm.observe(state)
            if not (state and state.ready):
                pending.append(vm)
        return pending

    def wait_ready(self, deadline: float, old_boots: dict[str, str] | None = None) -> None:
        """Until every VM is ready (``observe``), or BootError saying which is not and why."""
        end = time.monotonic() + deadline
        while pending := self.observe(old_boots):
            if time.monotonic() > end:
                detail = "; ".join(f"{vm.name}: {vm.summary()}" for vm in pending)
                raise BootError(f"after {deadline:.0f} s, not ready: {detail}")
            time.sleep(10)

    def boot_ids(self) -> dict[str, str]:
        """Seeded VMs' boot ids (an unseeded VM's boot is told apart by its DHCP lease)."""
        return {vm.name: vm.state.boot_id for vm in self.vms if vm.state}

    def _close_ssh(self) -> None:
        for vm in self.vms:
            control = self._control_path(vm.index)
            if control.exists() and self.lan:
                self.in_lan(
                    ["ssh", "-o", f"ControlPath={control}", "-O", "exit", "unused"], timeout=10
                )
            control.unlink(missing_ok=True)

    def status(self) -> dict[str, Any] | None:
        """``picluster status --json`` as seen from the VM LAN, with the build's secret."""
        proc = self.in_lan(
            [*PY, "status", "--json", "--secret", str(self.secret),
             "--config", str(self.status_config), "--state-dir", str(self.work / "status")],
            timeout=90,
        )  # fmt: skip
        try:
            return json.loads(proc.stdout)
        except json.JSONDecodeError:
            return None

    @property
    def status_config(self) -> Path:
        """The cluster.toml ``status`` reads on the host (written once, by ``prepare``)."""
        return self.work / "status-cluster.toml"

    def registered(self) -> dict[str, int]:
        view = self.status() or {}
        return {h["host"]: h.get("registered") or 0 for h in view.get("hosts", [])}

    def forward(self, vm_port: int, host_port: int) -> None:
        assert self.lan
        sock = self.work / f"forward-{host_port}.sock"
        sock.unlink(missing_ok=True)
        inner = subprocess.Popen(
            self.lan.exec_argv(
                [*PY[:1], "-m", "picluster.vm.forward", "inner", "--unix", str(sock),
                 "--to", f"{self._lan_address(0)}:{vm_port}"]
            ),
            start_new_session=True,
        )  # fmt: skip
        self.helpers.append(inner)
        wait_for(sock.exists, 30, f"the relay socket {sock} did not appear", interval=0.1)
        outer = subprocess.Popen(
            [*PY[:1], "-m", "picluster.vm.forward", "outer", "--unix", str(sock),
             "--listen", f"127.0.0.1:{host_port}"],
            start_new_session=True,
        )  # fmt: skip
        self.helpers.append(outer)

    def close(self) -> None:
        """Power off every VM, stop the relays and the DHCP server, remove the namespace.
        Each step runs even when an earlier one failed."""
        try:
            self._close_ssh()
        finally:
            try:
                for vm in self.vms:
                    vm.stop()
                for helper in self.helpers:
                    if helper.poll() is None:
                        helper.terminate()
                        try:
                            helper.wait(timeout=5)
                        except subprocess.TimeoutExpired:
                            helper.kill()
                self.helpers.clear()
            finally:
                try:
                    if self.dhcp:
                        self.dhcp.close()
                        self.dhcp = None
                finally:
                    if self.lan:
                        self.lan.close()
                        self.lan = None

    def remove_disks(self) -> None:
        for vm in self.vms:
            vm.disk.unlink(missing_ok=True)
