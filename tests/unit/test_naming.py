"""``picluster name``'s pieces that need no LAN: the hardware id, the names, who
yields a name, /etc/hosts. The LAN part (two cards with clashing ids) is the
cluster tier's ``identical-cards-name-themselves``."""

from __future__ import annotations

import pytest

from picluster import config, naming, roles
from picluster.discovery import Member
from picluster.records import NodeRecord


def sysfs(root, serial: bytes | None = None, nics: dict | None = None):
    if serial is not None:
        (root / "proc/device-tree").mkdir(parents=True)
        (root / "proc/device-tree/serial-number").write_bytes(serial)
    for name, (mac, kind, physical, wireless) in (nics or {}).items():
        dev = root / "sys/class/net" / name
        dev.mkdir(parents=True)
        (dev / "address").write_text(mac + "\n")
        (dev / "type").write_text(kind + "\n")
        if physical:
            (dev / "device").mkdir()
        if wireless:
            (dev / "wireless").mkdir()
    return root


def test_board_serial_comes_first(tmp_path):
    root = sysfs(tmp_path, b"10000000A1B2C3D4\x00", {"eth0": ("dc:a6:32:00:00:01", "1", 1, 0)})
    hw = naming.hardware_id(root)
    assert (hw.value, hw.source) == ("10000000a1b2c3d4", "board serial")
    assert naming.names_for("engine-{id}", hw) == ("engine-b2c3d4", "engine-10000000a1b2c3d4")


def test_without_a_serial_the_wired_port_s_mac(tmp_path):
    root = sysfs(
        tmp_path,
        b"0000000000000000\x00",  # what some boards' firmware leaves: no serial at all
        {
            "lo": ("00:00:00:00:00:00", "772", 0, 0),
            "wlan0": ("dc:a6:32:00:00:02", "1", 1, 1),
            "veth7": ("aa:00:00:00:00:03", "1", 0, 0),
            "eth0": ("DC:A6:32:00:00:01", "1", 1, 0),
        },
    )
    hw = naming.hardware_id(root)
    assert (hw.value, hw.source) == ("dca632000001", "MAC of eth0")


def test_no_id_at_all_says_what_to_do(tmp_path):
    with pytest.raises(naming.NamingError, match="Fix: give it a hostname"):
        naming.hardware_id(sysfs(tmp_path))


def member(host: str, state: str, hw: str) -> Member:
    record = NodeRecord(host, "engine", "picluster", 0, 0, state, "fp", "1", hw)
    return Member(record, "10.0.0.2")


@pytest.mark.parametrize(
    ("state", "their_hw", "yields"),
    [
        ("running", "", True),  # a card settled on the name keeps it
        ("running", "ffffffabcdef", True),
        ("naming", "010000abcdef", True),  # naming at the same time, lower id: keeps it
        ("naming", "ffffffabcdef", False),  # naming at the same time, higher id: moves
        ("naming", "020000abcdef", False),  # our own record
    ],
)
def test_who_yields_a_name(state, their_hw, yields):
    hw = naming.HardwareId("020000abcdef", "MAC of eth0")
    assert naming._holds(member("engine-abcdef", state, their_hw), "engine-abcdef", hw) is yields
    assert not naming._holds(member("engine-other", state, their_hw), "engine-abcdef", hw)


def test_hosts_file_gets_the_name_once():
    text = "127.0.0.1\tlocalhost\n127.0.1.1\traspberrypi\n::1\tlocalhost ip6-localhost\n"
    assert naming.hosts_with(text, "engine-abcdef") == (
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n127.0.1.1\tengine-abcdef\n"
    )


def test_unassigned_names_and_the_self_name_setting():
    cfg = config.Config()
    assert roles.is_unassigned("RaspberryPi", cfg)
    assert not roles.is_unassigned("engine-abcdef", cfg)
    with pytest.raises(roles.RoleError, match="names itself before the agent starts"):
        roles.decide("raspberrypi", cfg)
    off = config.Config.model_validate({"roles": {"self_name": ""}})
    with pytest.raises(roles.RoleError, match="self_name is empty"):
        roles.decide("raspberrypi", off)
    for bad in ("engine", "engine-{id}-{id}", "Engine_{id}"):
        with pytest.raises(config.ConfigError, match="self_name"):
            config.parse(f'[roles]\nself_name = "{bad}"\n', "cluster.toml")
