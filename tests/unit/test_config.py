import pytest

from picluster import config
from picluster.config import ConfigError

SRC = "/etc/picluster/cluster.toml"


def error(text: str) -> str:
    with pytest.raises(ConfigError) as exc:
        config.parse(text, SRC)
    return str(exc.value)


def test_missing_file_means_defaults(tmp_path):
    cfg = config.load(tmp_path / "absent.toml")
    assert cfg == config.Config()
    assert cfg.cluster.base_port == 47000
    assert cfg.engines.per_node == "auto"


def test_dumps_round_trips():
    cfg = config.parse(
        '[cluster]\nname = "lab"\ncontroller = "10.0.0.5"\n[engines]\nper_node = 3\n'
        'startup = "import numpy"\n'
    )
    assert config.parse(config.dumps(cfg)) == cfg


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "[cluster]\nnmae = 'x'\n",
            f"{SRC}: [cluster] nmae: unknown key. Fix: remove it or "
            "correct it (did you mean 'name'?)",
        ),
        (
            "[clutser]\n",
            f"{SRC}: clutser: unknown key. Fix: remove it or correct it (did you mean 'cluster'?)",
        ),
        (
            "[cluster]\nbase_port = 80\n",
            f"{SRC}: [cluster] base_port: Input should be greater "
            "than or equal to 1024 (found 80). Fix: a port from 1024 to 65505",
        ),
        ("[cluster]\nname = 'My Cluster'\n", f"{SRC}: [cluster] name: must be a DNS label"),
        ("[cluster]\ncontroller = 'pi.local'\n", f"{SRC}: [cluster] controller: must be an IPv4"),
        ("[engines]\nper_node = 'many'\n", f'{SRC}: [engines] per_node: must be "auto"'),
        ("[engines]\nper_node = 1000\n", f'{SRC}: [engines] per_node: must be "auto"'),
        (
            "[jupyter]\npassword_hash = 'hunter2'\n",
            f"{SRC}: [jupyter] password_hash: must be a hash, never a plain password",
        ),
        ("[controller]\nlisten = 'lan'\n", f"{SRC}: [controller] listen: must be an IPv4"),
        ("[jupyter]\nip = 'my pi'\n", f"{SRC}: [jupyter] ip: must be an IPv4 address"),
        ("[cluster\n", f"{SRC}: not valid TOML"),
    ],
)
def test_messages_name_file_key_and_fix(text, expected):
    assert expected in error(text)


def test_plain_password_is_not_echoed():
    assert "hunter2" not in error("[jupyter]\npassword_hash = 'hunter2'\n").split("(found")[0]


def test_all_problems_reported_at_once():
    msg = error("[cluster]\nbase_port = 1\n[engines]\nper_node = 'x'\n")
    assert "base_port" in msg and "per_node" in msg
