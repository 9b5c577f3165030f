"""What a node makes of a resolved mDNS record (``discovery.open_info``) and what
``picluster status`` says about it: only records sealed with the cluster's key
count, everything else claiming the cluster is reported (issue 14)."""

from __future__ import annotations

from dataclasses import dataclass, field

from rich.console import Console

from picluster import status
from picluster.discovery import Found, Member, Scan, Stranger, open_info
from picluster.records import (
    CONTROLLER_TYPE,
    NODE_TYPE,
    ControllerRecord,
    Freshness,
    NodeRecord,
    seal,
    to_props,
)
from picluster.secret import Keys

KEYS = Keys.derive(bytes(range(32)))
WRONG = Keys.derive(bytes(32))
CTL = ControllerRecord("lab", 47000, "9.2.0", "a1b2c3d4e5f6", KEYS.fingerprint, True)
NODE = NodeRecord("engine-1", "engine", "lab", 2, 2, "running", KEYS.fingerprint, "0.1.0")


@dataclass
class Resolved:
    """The few attributes of a resolved ``AsyncServiceInfo`` that ``open_info`` reads."""

    type: str
    name: str
    properties: dict
    addresses: list[str] = field(default_factory=list)
    port: int = 47000

    def parsed_addresses(self, version=None) -> list[str]:
        return self.addresses


def sealed(record, type_, addresses, keys=KEYS):
    fresh = Freshness(5, 0)
    return seal(
        record, keys.record_key, service_type=type_, port=47000, addresses=addresses, fresh=fresh
    )


def controller(at: list[str], sealed_for: list[str] | None = None, keys=KEYS, record=CTL):
    props = sealed(record, CONTROLLER_TYPE, sealed_for or at, keys)
    return Resolved(CONTROLLER_TYPE, "lab." + CONTROLLER_TYPE, props, at)


def test_a_sealed_record_is_found_at_its_sealed_address():
    got = open_info(controller(["10.0.0.1"]), "lab", KEYS.record_key)
    assert got == Found(CTL, "10.0.0.1", Freshness(5, 0), "lab." + CONTROLLER_TYPE)


def test_a_copied_txt_under_another_address_is_a_stranger():
    copied = controller(["10.0.0.66"], sealed_for=["10.0.0.1"])
    got = open_info(copied, "lab", KEYS.record_key)
    assert isinstance(got, Stranger) and got.address == "10.0.0.66"
    assert str(got).startswith("unauthenticated record from 10.0.0.66")


def test_the_announcing_hosts_own_loopback_view_is_not_a_stranger():
    own = controller(["127.0.0.1"], sealed_for=["10.0.0.1"])
    assert open_info(own, "lab", KEYS.record_key).address == "10.0.0.1"


def test_unsealed_and_wrongly_sealed_records_claiming_our_cluster_are_strangers():
    plain = Resolved(CONTROLLER_TYPE, "lab." + CONTROLLER_TYPE, to_props(CTL), ["10.0.0.9"])
    forged = controller(["10.0.0.9"], keys=WRONG)
    for info in (plain, forged):
        got = open_info(info, "lab", KEYS.record_key)
        assert isinstance(got, Stranger) and got.fp == KEYS.fingerprint


def test_a_squatter_on_our_name_is_a_stranger_even_with_garbage_fields():
    junk = Resolved(CONTROLLER_TYPE, "lab." + CONTROLLER_TYPE, {b"v": b"x"}, ["10.0.0.9"])
    assert isinstance(open_info(junk, "lab", KEYS.record_key), Stranger)


def test_other_clusters_records_are_none_of_our_business():
    theirs = ControllerRecord("beta", 47000, "9.2.0", "ffff", WRONG.fingerprint, True)
    info = controller(["10.0.0.7"], keys=WRONG, record=theirs)
    info.name = "beta." + CONTROLLER_TYPE
    assert open_info(info, "lab", KEYS.record_key) is None


def test_without_the_secret_records_are_returned_unverified():
    plain = Resolved(NODE_TYPE, "engine-1." + NODE_TYPE, to_props(NODE), ["10.0.0.2"])
    assert open_info(plain, "lab", None) == Member(NODE, "10.0.0.2", verified=False)


HOSTILE = NodeRecord("[/]", "[red]engine", "lab", 1, 1, "running", "x", "0")


def test_status_lists_strangers_as_problems_not_hosts_and_prints_them_as_text():
    crafted = Resolved(NODE_TYPE, "[/]\x1b[2J." + NODE_TYPE, to_props(HOSTILE), ["10.0.0.9"])
    stranger = open_info(crafted, "lab", KEYS.record_key)
    assert isinstance(stranger, Stranger)
    scan = Scan(
        controllers=[Found(CTL, "10.0.0.1", Freshness(5, 0))],
        nodes=[Member(NODE, "10.0.0.2")],
        strangers=[stranger],
    )
    view = status.build_view("lab", scan, None)  # None: do not dial a controller here
    assert [row.host for row in view.hosts] == ["engine-1"]
    assert any(p.startswith("unauthenticated record from 10.0.0.9") for p in view.problems)
    console = Console(record=True, width=300)
    status.render(view, console)
    out = console.export_text()
    assert "[/]" in out and "\x1b" not in out and "\\x1b" in out


def test_status_on_a_card_with_the_wrong_secret_says_so_once():
    """Every record fails this card's MAC; the controller's fingerprint differs: the
    card's secret is wrong, said once, not as a list of strangers."""
    real = [controller(["10.0.0.1"])]
    real.append(
        Resolved(
            NODE_TYPE,
            "engine-1." + NODE_TYPE,
            sealed(NODE, NODE_TYPE, ["10.0.0.2"]),
            ["10.0.0.2"],
        )
    )
    opened = [open_info(info, "lab", WRONG.record_key) for info in real]
    view = status.build_view("lab", Scan(strangers=opened), WRONG)
    fingerprint = [p for p in view.problems if "key fingerprint does not match" in p]
    assert len(fingerprint) == 1 and "10.0.0.1" in fingerprint[0]
    assert not any(p.startswith("unauthenticated") for p in view.problems)


def test_txt_rdata_is_unpacked_as_zeroconf_does():
    from zeroconf import ServiceInfo

    from picluster.discovery import unpack_txt

    props = sealed(CTL, CONTROLLER_TYPE, ["10.0.0.1"])
    info = ServiceInfo(CONTROLLER_TYPE, "lab." + CONTROLLER_TYPE, port=47000, properties=props)
    assert unpack_txt(info.text) == info.properties == props
    assert unpack_txt(b"\x03a=1\x01b\x03a=2\x00") == {b"a": b"1", b"b": None}
