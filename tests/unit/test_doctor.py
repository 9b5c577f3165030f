import pytest

from picluster import doctor, secret
from picluster.doctor import Level
from picluster.paths import Paths


@pytest.fixture
def paths(tmp_path, monkeypatch):
    monkeypatch.setenv("PICLUSTER_HOSTNAME", "engine-1")
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    p = Paths(tmp_path / "cluster.toml", tmp_path / "secret", tmp_path / "state")
    secret.write(p.secret, secret.generate())
    return p


READ_FLAGS = doctor.multicast_interfaces  # the real one, before any test patches it


@pytest.fixture(autouse=True)
def lan(monkeypatch):
    """No unit test sends multicast on this machine's real network: the mDNS round
    trip answers what the test sets, and the node has one LAN interface."""
    heard = {"trip": doctor.RoundTrip(0.1, 0.1, "10.0.0.1")}
    monkeypatch.setattr(doctor, "mdns_round_trip", lambda host, cluster: heard["trip"])
    monkeypatch.setattr(doctor, "multicast_interfaces", lambda sys_net=None: ["eth0"])
    monkeypatch.setattr("picluster.discovery.lan_addresses", lambda: ["10.0.0.2"])
    return heard


def by_name(checks):
    return {c.name: c for c in checks}


def test_healthy_node(paths):
    checks = by_name(doctor.run_checks(paths))
    assert checks["config"].level is Level.OK
    assert checks["role"].level is Level.OK and "engine" in checks["role"].message
    assert checks["secret"].level is Level.OK and "fingerprint" in checks["secret"].message


def test_encryption_is_on_by_default_and_off_is_a_warning(paths):
    assert by_name(doctor.run_checks(paths))["encryption"].level is Level.OK
    paths.config.write_text("[cluster]\ncurve = false\n")
    check = by_name(doctor.run_checks(paths))["encryption"]
    assert check.level is Level.WARN and "in clear" in check.message and "Fix:" in check.message


def test_open_secret_fails_with_fix(paths):
    paths.secret.chmod(0o644)
    check = by_name(doctor.run_checks(paths))["secret"]
    assert check.level is Level.FAIL and "chmod 600" in check.message


def test_bad_config_fails_config_and_role(paths):
    paths.config.write_text("[cluster]\nbase_prot = 1\n")
    checks = by_name(doctor.run_checks(paths))
    assert (
        checks["config"].level is Level.FAIL
        and "did you mean 'base_port'" in checks["config"].message
    )
    assert checks["role"].level is Level.FAIL


def test_unnamed_card(paths, monkeypatch):
    monkeypatch.setenv("PICLUSTER_HOSTNAME", "raspberrypi")
    check = by_name(doctor.run_checks(paths))["role"]
    assert check.level is Level.FAIL and "never given its own name" in check.message


def test_controller_port_in_use(paths, monkeypatch):
    import socket

    monkeypatch.setenv("PICLUSTER_HOSTNAME", "controller")
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        port = s.getsockname()[1]
        s.listen()
        paths.config.write_text(f"[cluster]\nbase_port = {port - 3}\n")
        check = by_name(doctor.run_checks(paths))["ports"]
    assert check.level is Level.FAIL and str(port) in check.message
    assert "base_port" in check.message


def test_multicast_interfaces_reads_flags(tmp_path):
    for name, flags in (("lo", 0x49), ("eth0", 0x1003), ("wlan0", 0x1002)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "flags").write_text(f"{flags:#x}\n")
    assert READ_FLAGS(tmp_path) == ["eth0"]


def test_exit_status(paths, capsys):
    assert doctor.main(paths) in (0, 1)
    paths.secret.unlink()
    assert doctor.main(paths) == 1
    assert "no cluster secret" in capsys.readouterr().out


def test_mdns_round_trip_answered(paths):
    check = by_name(doctor.run_checks(paths))["multicast"]
    assert (
        check.level is Level.OK
        and "from 10.0.0.1" in check.message
        and "checks its seal" in check.message
    )


@pytest.mark.parametrize("own", [None, 0.1], ids=["silent", "own-record-only"])
def test_mdns_silence_fails_and_names_the_static_fix(paths, lan, own):
    lan["trip"] = doctor.RoundTrip(own, None)
    check = by_name(doctor.run_checks(paths))["multicast"]
    assert check.level is Level.FAIL
    for fix in ('[cluster] controller = "<address>"', 'discovery = "static"', "address ="):
        assert fix in check.message


def test_mdns_silence_is_only_a_warning_with_a_static_controller(paths, lan):
    paths.config.write_text('[cluster]\ncontroller = "10.0.0.1"\n')
    lan["trip"] = doctor.RoundTrip(None, None)
    check = by_name(doctor.run_checks(paths))["multicast"]
    assert check.level is Level.WARN and "not needed here" in check.message.lower()
