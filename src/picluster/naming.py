"""A card that nobody named names itself from its hardware, once (``picluster name``).

Flash the same image to every card and name only the controller: a card that
boots with a name from ``[roles] unassigned`` (the image's own ``raspberrypi``)
becomes ``[roles] self_name`` with ``{id}`` filled in, ``engine-<id>`` unless
configured otherwise, before the agent decides its role.

**The id.** The Pi's firmware writes the board serial into the device tree
(``/proc/device-tree/serial-number``): it survives reflashing and is printed
by ``cat /proc/cpuinfo`` on the Pi itself. A machine without one (QEMU's virt
board) uses the MAC of its wired interface instead, which QEMU fixes per VM.
The name takes the last 6 hex digits (16.7 million values, short enough to
type in ``ssh engine-1a2b3c.local``).

**Unique on the LAN.** Six digits make a clash in a drawer of Pis unlikely,
not impossible (two vendors' MACs can share their last three bytes). So the
card first announces a sealed node record for the short name, in state
``naming`` with its whole id, and listens. It takes the name with its whole
id instead (unique by construction, as serials and MACs are) when a member of
the cluster already holds the short one, or when another card is naming
itself with the same short name at the same moment and has the lower id: of
two cards booted together exactly one moves. Only sealed records count, so a
stranger on the LAN cannot push a card off its name.

**Persistent.** The name goes to ``/etc/hostname`` and the ``127.0.1.1``
line of ``/etc/hosts`` (what ``raspi-config`` changes), the kernel gets it,
and avahi is told so ``<name>.local`` answers at once. The next boot starts
with it; cloud-init leaves a hostname alone that it did not set itself.
"""

from __future__ import annotations

import asyncio
import logging
import re
import shutil
import socket
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from picluster import __version__, config, roles, secret
from picluster.discovery import (
    Announcer,
    DuplicateName,
    Heard,
    Member,
    Sealer,
    answers,
    ask_directly,
    open_info,
    open_zeroconf,
)
from picluster.errors import ConfigurationError
from picluster.files import atomic_write_text
from picluster.names import is_label
from picluster.paths import DEFAULT_ETC_DIR, Paths, hostname
from picluster.records import NODE_TYPE, NodeRecord

log = logging.getLogger(__name__)

SHORT_ID = 6
"""Hex digits of the hardware id in a card's first-choice name."""
CLAIM_S = 2.5
"""How long a card listens after announcing the name it wants: python-zeroconf
announces a new record three times within about two seconds of probing it."""
NAMING = "naming"
"""The node record state of a card that is choosing its name."""
SERIAL_FILES = ("proc/device-tree/serial-number", "sys/firmware/devicetree/base/serial-number")
ARPHRD_ETHER = "1"


class NamingError(ConfigurationError):
    """This card cannot name itself; ``str()`` says why and what to do instead."""


@dataclass(frozen=True)
class HardwareId:
    value: str
    """Lower-case hex digits."""
    source: str
    """Where it was read, for the journal: "board serial" or "MAC of eth0"."""


def _serial(root: Path) -> str | None:
    for rel in SERIAL_FILES:
        try:
            raw = (root / rel).read_bytes()
        except OSError:
            continue
        value = raw.rstrip(b"\0").decode("ascii", "replace").strip().lower()
        if re.fullmatch(r"[0-9a-f]{6,32}", value) and value.strip("0"):
            return value
    return None


def _mac(root: Path) -> tuple[str, str] | None:
    """(interface, MAC) of the wired port: a physical Ethernet device before a virtual
    one, wired before wireless, then by name."""
    found = []
    net = root / "sys/class/net"
    try:
        devices = list(net.iterdir())
    except OSError:
        return None
    for dev in devices:
        try:
            mac = (dev / "address").read_text().strip().lower()
            kind = (dev / "type").read_text().strip()
        except OSError:
            continue
        if kind != ARPHRD_ETHER or not re.fullmatch(r"([0-9a-f]{2}:){5}[0-9a-f]{2}", mac):
            continue
        if mac == "00:00:00:00:00:00":
            continue
        physical = (dev / "device").exists()
        wireless = (dev / "wireless").exists() or (dev / "phy80211").exists()
        found.append(((not physical, wireless, dev.name), dev.name, mac))
    if not found:
        return None
    _, name, mac = min(found)
    return name, mac


def hardware_id(root: Path = Path("/")) -> HardwareId:
    """The board serial from the device tree, else the wired MAC."""
    serial = _serial(root)
    if serial:
        return HardwareId(serial, "board serial")
    mac = _mac(root)
    if mac:
        return HardwareId(mac[1].replace(":", ""), f"MAC of {mac[0]}")
    raise NamingError(
        "this card has no board serial in its device tree and no network interface with "
        "a MAC, so it cannot name itself. Fix: give it a hostname (card seed 'hostname:' "
        "or Raspberry Pi Imager)"
    )


def names_for(template: str, hw: HardwareId) -> tuple[str, str]:
    """(first choice, fallback): ``template`` with the short id, then with the whole id."""
    return (
        template.replace("{id}", hw.value[-SHORT_ID:]),
        template.replace("{id}", hw.value),
    )


def _holds(member: Member, name: str, hw: HardwareId) -> bool:
    """Does ``member`` keep ``name`` from us? A member settled on it does; another
    card naming itself with it at the same time does when its id is lower."""
    record = member.record
    if record.host != name or record.hw == hw.value:
        return False
    return record.state != NAMING or record.hw < hw.value


async def claim(
    want: str, fallback: str, hw: HardwareId, cfg: config.Config, keys: secret.Keys, epoch: int
) -> str:
    """``want`` unless a sealed member of the cluster holds it (see the module's text)."""
    if want == fallback:
        return want
    aiozc = open_zeroconf()
    heard = Heard()
    aiozc.zeroconf.async_add_listener(heard, None)
    announcer = Announcer(aiozc, want, Sealer(keys.record_key, epoch))
    record = NodeRecord(
        host=want,
        role=str(roles.Role.ENGINE),
        cluster=cfg.cluster.name,
        engines=0,
        registered=0,
        state=NAMING,
        fp=keys.fingerprint,
        version=__version__,
        hw=hw.value,
    )
    name = NodeRecord.service_name(want)
    try:
        try:
            await announcer.announce_node(record, cfg.cluster.base_port)
        except DuplicateName:
            log.info("another card answers for %s", name)
            return fallback
        await asyncio.sleep(CLAIM_S)  # a listening window, not synchronisation
        # Ask the name outright: a card already settled on it answers for it now.
        await ask_directly(aiozc, [name])
        for answer in answers(aiozc.zeroconf, NODE_TYPE, name, heard):
            opened = open_info(answer, cfg.cluster.name, keys.record_key)
            if isinstance(opened, Member) and _holds(opened, want, hw):
                log.info(
                    "%s at %s holds %s (%s)", opened.record.host, opened.address, want,
                    opened.record.state,
                )  # fmt: skip
                return fallback
        return want
    finally:
        aiozc.zeroconf.async_remove_listener(heard)
        await announcer.close()
        await aiozc.async_close()


def _saved_name(paths: Paths) -> str | None:
    try:
        name = (paths.etc_dir / "hostname").read_text().strip().split(".", 1)[0].lower()
    except OSError:
        return None
    return name if is_label(name) else None


def hosts_with(text: str, name: str) -> str:
    """``/etc/hosts`` with ``name`` on the 127.0.1.1 line, where Debian puts the
    hostname (sudo and friends look it up), every other line as it was."""
    lines = [line for line in text.splitlines() if line.split()[:1] != ["127.0.1.1"]]
    return "\n".join([*lines, f"127.0.1.1\t{name}"]) + "\n"


def apply(name: str, paths: Paths) -> None:
    """Give this host ``name`` now and for every later boot."""
    try:
        socket.sethostname(name)
    except PermissionError:
        raise NamingError("setting the hostname needs root: run 'sudo picluster name'") from None
    atomic_write_text(paths.etc_dir / "hostname", name + "\n")
    hosts = paths.etc_dir / "hosts"
    try:
        old = hosts.read_text()
    except FileNotFoundError:
        old = "127.0.0.1\tlocalhost\n"
    atomic_write_text(hosts, hosts_with(old, name))
    if paths.etc_dir == DEFAULT_ETC_DIR:
        _tell_avahi(name)


def _tell_avahi(name: str) -> None:
    """avahi-daemon read the old hostname when it started; hand it the new one."""
    busctl = shutil.which("busctl")
    if busctl is None:
        return
    proc = subprocess.run(
        [busctl, "--system", "call", "org.freedesktop.Avahi", "/",
         "org.freedesktop.Avahi.Server", "SetHostName", "s", name],
        capture_output=True, text=True, timeout=20, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        log.warning(
            "avahi-daemon did not take the new name (%s): %s.local answers after a reboot",
            proc.stderr.strip() or f"exit {proc.returncode}",
            name,
        )


def ensure(paths: Paths, cfg: config.Config, epoch: Callable[[], int]) -> str:
    """Name this card if nobody did; what happened, in one line for the journal."""
    current = hostname()
    if not roles.is_unassigned(current, cfg):
        return f"{current}: this card has its name"
    saved = _saved_name(paths)
    if saved and not roles.is_unassigned(saved, cfg):
        apply(saved, paths)
        return f"{saved}: the name this card gave itself before ({paths.etc_dir / 'hostname'})"
    if not cfg.roles.self_name:
        return (
            f"{current}: not naming this card ([roles] self_name is empty); "
            "it joins no cluster until it is given a name"
        )
    hw = hardware_id()
    want, fallback = names_for(cfg.roles.self_name, hw)
    keys = secret.Keys.derive(secret.load(secret.credential_path(paths.secret)))
    name = asyncio.run(claim(want, fallback, hw, cfg, keys, epoch()))
    apply(name, paths)
    why = f"named after its {hw.source} {hw.value}"
    if name != want:
        why += f"; {want} was taken on this LAN"
    return f"{name}: {why}"
