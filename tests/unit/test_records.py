import dataclasses

import pytest

from picluster.records import (
    CONTROLLER_TYPE,
    NODE_TYPE,
    ControllerRecord,
    Freshness,
    NodeRecord,
    RecordError,
    Unauthenticated,
    seal,
    to_props,
    unseal,
)
from picluster.secret import Keys

CTL = ControllerRecord(
    "lab", 47000, "9.2.0", "a1b2c3d4e5f6", "0123456789ab", False, "3.13", 8888, "token"
)
NODE = NodeRecord("engine-1", "engine", "lab", 4, 3, "running", "0123456789ab", "0.1.0")


@pytest.mark.parametrize("record", [CTL, NODE])
def test_round_trip(record):
    assert type(record).decode(to_props(record)) == record


def test_service_names():
    assert ControllerRecord.service_name("lab") == "lab._ipyparallel._tcp.local."
    assert NodeRecord.service_name("engine-1") == "engine-1._picluster._tcp.local."


def test_other_schema_version_is_refused_with_advice():
    props = to_props(CTL) | {b"v": b"2"}
    with pytest.raises(RecordError, match="update picluster"):
        ControllerRecord.decode(props)


def test_missing_and_malformed_fields():
    props = to_props(CTL)
    del props[b"iid"]
    with pytest.raises(RecordError, match="no 'iid'"):
        ControllerRecord.decode(props)
    with pytest.raises(RecordError, match="'port' is not a number"):
        ControllerRecord.decode(to_props(CTL) | {b"port": b"x"})


def test_txt_fits_one_packet_and_carries_no_key():
    size = sum(len(k) + len(v) + 2 for k, v in to_props(CTL).items())
    assert size < 200
    assert set(CTL.encode()) == {
        "v", "cluster", "port", "ipp", "iid", "fp", "curve", "py", "lab", "login"
    }  # fmt: skip


# -- the seal (issue 14): a MAC over every field, the addresses and the freshness ---------

KEY = Keys.derive(bytes(range(32))).record_key
OTHER_KEY = Keys.derive(bytes(32)).record_key
ADDRS = ["10.0.0.5", "192.168.1.5"]
NAMING = dataclasses.replace(NODE, state="naming", hw="020000abcdef")
SEALS = [(CTL, CONTROLLER_TYPE), (NODE, NODE_TYPE), (NAMING, NODE_TYPE)]


def sealed(record, type_, key=KEY, port=47000, fresh=None):
    fresh = fresh or Freshness(7, 3)
    return seal(record, key, service_type=type_, port=port, addresses=ADDRS, fresh=fresh)


@pytest.mark.parametrize(("record", "type_"), SEALS)
def test_seal_round_trip(record, type_):
    props = sealed(record, type_)
    opened = unseal(props, KEY, service_type=type_, port=47000)
    assert opened.addresses == tuple(ADDRS) and opened.fresh == Freshness(7, 3)
    assert type(record).decode(props) == record


@pytest.mark.parametrize(("record", "type_"), SEALS)
def test_every_field_is_covered(record, type_):
    """Changing, dropping or adding any TXT field breaks the seal; so do the port and
    the service type it was sealed for, and another cluster's key."""
    props = sealed(record, type_)
    assert {k.decode() for k in props} == set(record.encode()) | {"addr", "n", "mac"}
    for key in props:
        if key == b"mac":
            continue
        for tampered in (
            props | {key: props[key] + b"x"},
            props | {key: b""},
            props | {key: None},
            {k: v for k, v in props.items() if k != key},
        ):
            with pytest.raises(Unauthenticated):
                unseal(tampered, KEY, service_type=type_, port=47000)
    with pytest.raises(Unauthenticated):
        unseal(props | {b"extra": b"1"}, KEY, service_type=type_, port=47000)
    with pytest.raises(Unauthenticated):
        unseal(props, KEY, service_type=type_, port=47001)
    other_type = NODE_TYPE if type_ == CONTROLLER_TYPE else CONTROLLER_TYPE
    with pytest.raises(Unauthenticated):
        unseal(props, KEY, service_type=other_type, port=47000)
    with pytest.raises(Unauthenticated, match="does not verify"):
        unseal(props, OTHER_KEY, service_type=type_, port=47000)


def test_a_record_without_a_mac_or_with_a_forged_one_is_refused():
    props = sealed(CTL, CONTROLLER_TYPE)
    with pytest.raises(Unauthenticated, match="no MAC"):
        unseal(to_props(CTL), KEY, service_type=CONTROLLER_TYPE, port=47000)
    with pytest.raises(Unauthenticated):
        unseal(props | {b"mac": b"0" * 32}, KEY, service_type=CONTROLLER_TYPE, port=47000)


def test_copied_txt_keeps_the_addresses_it_was_sealed_with():
    """A stranger can copy the TXT but not change the addresses it vouches for."""
    props = sealed(CTL, CONTROLLER_TYPE)
    moved = props | {b"addr": b"10.0.0.66"}
    with pytest.raises(Unauthenticated):
        unseal(moved, KEY, service_type=CONTROLLER_TYPE, port=47000)


def test_freshness_orders_by_epoch_then_seq():
    assert Freshness(1, 9) < Freshness(2, 0) < Freshness(2, 1)
    assert Freshness.parse("1767225600.12") == Freshness(1767225600, 12)
    for bad in ("", "1", "a.b", "1.-2", "1.2.3"):
        with pytest.raises(Unauthenticated):
            Freshness.parse(bad)


def test_sealed_txt_fits_one_packet_and_carries_no_key():
    props = sealed(CTL, CONTROLLER_TYPE, fresh=Freshness(1767225600, 1000))
    assert sum(len(k) + len(v) + 2 for k, v in props.items()) < 300
    assert KEY.hex() not in repr(props)
