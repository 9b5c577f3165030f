import pytest

from picluster import config, roles
from picluster.roles import Role, RoleError

DEFAULT = config.Config()


@pytest.mark.parametrize(
    ("host", "role", "pattern"),
    [
        ("controller", Role.CONTROLLER, "controller"),
        ("lab-controller", Role.CONTROLLER, "*-controller"),
        ("controller-2", Role.CONTROLLER, "controller-*"),
        ("head", Role.CONTROLLER, "head"),
        ("rack1-head", Role.CONTROLLER, "*-head"),
        ("engine-1", Role.ENGINE, "*"),
        ("pi4", Role.ENGINE, "*"),
        ("Controller", Role.CONTROLLER, "controller"),
    ],
)
def test_default_patterns(host, role, pattern):
    decision = roles.decide(host, DEFAULT)
    assert decision.role is role
    assert decision.pattern == pattern


def test_explain_names_pattern_and_file():
    text = roles.decide("engine-3", DEFAULT).explain("/etc/picluster/cluster.toml")
    assert text == (
        "engine: 'engine-3' matches '*' in [roles] engine of /etc/picluster/cluster.toml"
    )


@pytest.mark.parametrize("host", ["raspberrypi", "localhost"])
def test_unnamed_cards_join_nothing(host):
    with pytest.raises(RoleError, match="never given its own name"):
        roles.decide(host, DEFAULT)


@pytest.mark.parametrize("host", ["-bad", "bad-", "under_score", "a" * 64, ""])
def test_invalid_hostnames(host):
    with pytest.raises(RoleError, match="not a valid name"):
        roles.decide(host, DEFAULT)


def test_custom_patterns_and_no_match():
    cfg = config.parse('[roles]\ncontroller = ["boss"]\nengine = ["worker-*"]\n')
    assert roles.decide("boss", cfg).role is Role.CONTROLLER
    assert roles.decide("worker-7", cfg).role is Role.ENGINE
    with pytest.raises(RoleError, match="matches no pattern"):
        roles.decide("controller", cfg)
