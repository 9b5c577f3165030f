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
    assert config.parse(config.dumps(config.overrides(cfg))) == cfg


def test_dumps_writes_only_what_is_set_and_refuses_bad_values():
    text = config.dumps({"cluster": {"name": "lab"}}, "written by a test\nsecond line")
    assert text.startswith("# written by a test\n# second line\n")
    assert "base_port" not in text
    with pytest.raises(ConfigError, match=r"\[cluster\] base_port"):
        config.dumps({"cluster": {"base_port": 5}})


def test_dropins_merge_over_the_base_file_in_name_order(tmp_path):
    base = tmp_path / "cluster.toml"
    base.write_text('[cluster]\nname = "lab"\nbase_port = 10100\n[engines]\nper_node = 2\n')
    dropins = config.dropin_dir(base)
    dropins.mkdir()
    (dropins / "50-card.toml").write_text("[cluster]\nbase_port = 20000\n")
    (dropins / "90-local.toml").write_text("[engines]\nper_node = 3\n")
    (dropins / "README").write_text("not toml, not read")
    layered = config.load_layered(base)
    assert layered.config.cluster.name == "lab"
    assert layered.config.cluster.base_port == 20000
    assert layered.config.engines.per_node == 3
    assert layered.source_of("cluster", "name") == str(base)
    assert layered.source_of("cluster", "base_port") == str(dropins / "50-card.toml")
    assert layered.source_of("engines", "per_node") == str(dropins / "90-local.toml")
    assert layered.source_of("jupyter", "port") == "the defaults"
    described = layered.describe()
    assert f"base_port = 20000  # {dropins / '50-card.toml'}" in described
    assert 'engine = ["*"]  # the defaults' in described
    assert layered.files == [base, dropins / "50-card.toml", dropins / "90-local.toml"]


def test_a_bad_value_in_a_dropin_names_the_dropin(tmp_path):
    base = tmp_path / "cluster.toml"
    base.write_text('[cluster]\nname = "lab"\n')
    config.dropin_dir(base).mkdir()
    bad = config.dropin_dir(base) / "50-card.toml"
    bad.write_text("[cluster]\nbase_port = 1\n")
    with pytest.raises(ConfigError) as exc:
        config.load(base)
    assert str(exc.value).startswith(f"{bad}: [cluster] base_port:")
    bad.write_text("[cluster\n")
    with pytest.raises(ConfigError, match=f"^{bad}: not valid TOML"):
        config.load(base)


def test_dropins_apply_without_a_base_file(tmp_path):
    base = tmp_path / "cluster.toml"
    config.dropin_dir(base).mkdir()
    (config.dropin_dir(base) / "50-card.toml").write_text('[cluster]\nname = "lab"\n')
    assert config.load(base).cluster.name == "lab"


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
