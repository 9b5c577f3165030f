import pytest

from picluster.records import ControllerRecord, NodeRecord, RecordError, to_props

CTL = ControllerRecord("lab", 47000, "9.2.0", "a1b2c3d4e5f6", "0123456789ab", False)
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
    assert set(CTL.encode()) == {"v", "cluster", "port", "ipp", "iid", "fp", "curve"}
