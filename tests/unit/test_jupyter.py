"""JupyterLab on the controller: its config, login, files and cluster file,
checked without starting a server (tests/jupyter/ starts the real one)."""

import json
import os
import stat
from pathlib import Path

import nbformat
import pytest

from picluster import cli, clusterfile, jupyter
from picluster.config import Config, parse
from picluster.secret import Keys

REPO = Path(__file__).resolve().parents[2]
KEYS = Keys.derive(bytes(range(32)))
HASH = "argon2:$argon2id$v=19$m=10240,t=10,p=8$abc$def"


def test_token_login_by_default():
    cfg = Config()
    conf = jupyter.server_config(cfg.jupyter, KEYS, Path("/home/pi/notebooks"))
    assert conf["IdentityProvider"]["token"] == KEYS.jupyter_token
    assert conf["PasswordIdentityProvider"]["hashed_password"] == ""
    server = conf["ServerApp"]
    assert server["ip"] == "0.0.0.0" and server["port"] == 8888
    assert server["open_browser"] is False and server["allow_root"] is False
    assert server["root_dir"] == "/home/pi/notebooks"
    assert server["port_retries"] == 0


def test_password_hash_replaces_the_token():
    cfg = parse(f'[jupyter]\npassword_hash = "{HASH}"\nport = 9999\n')
    conf = jupyter.server_config(cfg.jupyter, KEYS, Path("/x"))
    assert conf["IdentityProvider"]["token"] == ""
    assert conf["PasswordIdentityProvider"]["hashed_password"] == HASH
    assert conf["PasswordIdentityProvider"]["allow_password_change"] is False
    assert jupyter.url(cfg.jupyter, KEYS, "controller.local") == "http://controller.local:9999/lab"


def test_url_carries_the_derived_token():
    url = jupyter.url(Config().jupyter, KEYS, "controller.local")
    assert url == f"http://controller.local:8888/lab?token={KEYS.jupyter_token}"


def test_root_dir_expands_against_the_users_home():
    home = Path("/home/ada")
    assert jupyter.expand_root(Config().jupyter, home) == home / "notebooks"
    assert jupyter.expand_root(parse('[jupyter]\nroot_dir = "/srv/nb"\n').jupyter, home) == Path(
        "/srv/nb"
    )
    assert (
        jupyter.expand_root(parse('[jupyter]\nroot_dir = "work"\n').jupyter, home) == home / "work"
    )


def test_refuses_root(monkeypatch, tmp_path):
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    with pytest.raises(jupyter.JupyterError, match="root"):
        jupyter.prepare(Config(), KEYS, tmp_path)


def test_prepare_writes_private_files_and_keeps_the_token_off_argv(monkeypatch, tmp_path):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setenv("RUNTIME_DIRECTORY", str(tmp_path / "run"))
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path / "creds"))
    monkeypatch.delenv("IPYTHONDIR", raising=False)
    home = tmp_path / "home"
    launch = jupyter.prepare(parse("[cluster]\nbase_port = 48000\n"), KEYS, home)

    assert not any(KEYS.jupyter_token in arg for arg in launch.argv)
    assert launch.argv[-1] == f"--config={launch.config_file}"
    assert "CREDENTIALS_DIRECTORY" not in launch.env, "kernels must not inherit the secret's path"
    assert launch.env["IPYTHONDIR"] == str(home / ".ipython")

    security = home / ".ipython" / "profile_default" / "security"
    client = json.loads((security / "ipcontroller-client.json").read_text())
    # CurveZMQ by default: the server key, derived from the secret, instead of an HMAC key.
    assert client["registration"] == 48000
    assert client["curve_serverkey"] == KEYS.curve().server_public.decode()
    assert client["interface"] == "tcp://127.0.0.1"
    for private in (
        launch.config_file,
        security / "ipcontroller-client.json",
        security / "cluster-.json",
    ):
        assert stat.S_IMODE(private.stat().st_mode) == 0o600, private
    assert json.loads(launch.config_file.read_text())["IdentityProvider"]["token"] == (
        KEYS.jupyter_token
    )
    examples = sorted(p.name for p in (home / "notebooks" / "examples").iterdir())
    assert examples == [f.name for f in jupyter.example_notebooks()]


def test_examples_never_overwrite_the_users_edits(tmp_path):
    first = jupyter.install_examples(tmp_path)
    assert len(first) == len(jupyter.example_notebooks()) >= 7
    edited = first[0]
    edited.write_text("my edits")
    assert jupyter.install_examples(tmp_path) == []
    assert edited.read_text() == "my edits"


@pytest.mark.parametrize("source", jupyter.example_notebooks(), ids=lambda f: f.name)
def test_example_notebooks_are_valid_and_explained(source):
    nb = nbformat.reads(source.read_text(), as_version=4)
    nbformat.validate(nb)
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), (
        "ship notebooks without outputs: they are stale on every other cluster"
    )
    assert "ipp.Client()" in "".join(c.source for c in nb.cells)


def test_cluster_file_round_trips_through_ipyparallel(tmp_path):
    import ipyparallel as ipp

    path = clusterfile.write(tmp_path)
    assert path.name == "cluster-.json"
    data = json.loads(path.read_text())
    cluster = ipp.Cluster.from_file(str(path))
    assert isinstance(cluster.controller, clusterfile.AgentControllerLauncher)
    assert cluster.controller.state == "running"
    assert cluster.to_dict() == data, "from_dict would rewrite the file on every listing"
    # with no arguments, ipyparallel looks for exactly this file in the default profile
    default = ipp.Cluster(cluster_id="", profile_dir=str(tmp_path / "profile_default"))
    assert default.cluster_file == str(path)


def test_cluster_file_refuses_start_and_stop(tmp_path):
    import asyncio

    import ipyparallel as ipp

    cluster = ipp.Cluster.from_file(str(clusterfile.write(tmp_path)))
    with pytest.raises(clusterfile.ManagedByAgent, match="systemctl restart picluster-agent"):
        asyncio.run(cluster.stop_cluster())
    assert (tmp_path / "profile_default" / "security" / "cluster-.json").exists()


def test_engine_count_only_runs_inside_the_server(tmp_path):
    """Kernels that load the cluster file must not start a counting client."""
    import ipyparallel as ipp

    cluster = ipp.Cluster.from_file(str(clusterfile.write(tmp_path)))
    assert not clusterfile.in_jupyter_server()
    assert cluster.to_dict()["engines"]["sets"]["agents"]["n"] == 0
    assert clusterfile._counters == {}


def test_engine_counter_waits_for_an_absent_hub(tmp_path):
    from picluster.connection import client_info, dumps

    client = tmp_path / "client.json"
    # nothing listens on port 1
    client.write_text(dumps(client_info("127.0.0.1", 1, KEYS, curve=True)))
    counter = clusterfile.EngineCounter(client)
    counter.CONNECT_TIMEOUT = 0.2
    counter.start()
    counter.start()  # idempotent: one thread
    assert counter.count is None


def test_url_command_on_the_build_host(tmp_path, capsys):
    secret_file = tmp_path / "lab.secret"
    secret_file.write_text(bytes(range(32)).hex() + "\n")
    secret_file.chmod(0o600)
    code = cli.main(
        ["url", "--secret", str(secret_file), "--host", "controller.local",
         "--config", str(tmp_path / "missing.toml")]
    )  # fmt: skip
    assert code == 0
    assert capsys.readouterr().out.strip() == jupyter.url(
        Config().jupyter, KEYS, "controller.local"
    )


def test_url_command_says_what_to_do_without_the_secret(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    code = cli.main(
        ["url", "--secret", str(tmp_path / "none"), "--config", str(tmp_path / "missing.toml")]
    )
    assert code == 78
    assert "--secret deploy/<name>.secret" in capsys.readouterr().err


def test_unit_names_no_user_and_gets_a_credential():
    unit = (REPO / "files" / "systemd" / "picluster-jupyter.service").read_text()
    lines = {
        line.split("=", 1)[0]: line.split("=", 1)[1]
        for line in unit.splitlines()
        if "=" in line and not line.startswith("#")
    }
    assert lines["ExecCondition"] == "/opt/picluster/bin/picluster role --is controller"
    assert lines["ExecStart"] == "/opt/picluster/bin/picluster jupyter"
    assert lines["LoadCredential"] == "picluster-secret:/etc/picluster/secret"
    # No User=: `picluster jupyter` drops to [jupyter] user (the one place naming it)
    # before JupyterLab starts; the boot tier checks the server's real owner.
    assert "User" not in lines
    assert lines["Restart"] == "on-failure" and lines["RestartPreventExitStatus"] == "78"
