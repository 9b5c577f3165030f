"""``picluster connect``'s decisions that need no LAN; the cluster tier's
``laptop_connects`` step runs it for real from a host that is not a node."""

from __future__ import annotations

import pytest

from picluster import connect, secret
from picluster.cli import main
from picluster.engines import python_minor

KEYS = secret.Keys.derive(bytes(range(32)))


def target(**changes) -> connect.Target:
    base = {
        "address": "192.168.1.10", "base_port": 47000, "curve": True, "python": "",
        "lab": 8888, "login": "token", "found_by": "found by mDNS",
    }  # fmt: skip
    return connect.Target(**(base | changes))


def test_another_python_is_refused_with_the_fix():
    with pytest.raises(connect.ConnectError) as err:
        connect.refuse_other_python("3.99", "http://x:8888/lab")
    message = str(err.value)
    assert f"the engines run Python 3.99 and this is Python {python_minor()}" in message
    assert "Fix: use the controller's JupyterLab (http://x:8888/lab)" in message
    connect.refuse_other_python(python_minor(), "")  # the same: fine
    connect.refuse_other_python("", "")  # an older controller that does not say


def test_lab_url_carries_the_token_only_for_token_login():
    assert connect.lab_url(target(), KEYS) == (
        f"http://192.168.1.10:8888/lab?token={KEYS.jupyter_token}"
    )
    assert "log in with the JupyterLab password" in connect.lab_url(target(login="password"), KEYS)
    assert KEYS.jupyter_token not in connect.lab_url(target(login="password"), KEYS)
    assert connect.lab_url(target(lab=0), KEYS).startswith("none: JupyterLab is off")


def test_bad_controller_address_and_open_secret_are_clear_errors(tmp_path, capsys):
    key = tmp_path / "cluster.secret"
    secret.write(key, bytes(32))
    assert main(["connect", "--secret", str(key), "--controller", "pi.local"]) != 0
    assert "--controller 'pi.local': not an IPv4 address" in capsys.readouterr().err
    key.chmod(0o644)
    assert main(["connect", "--secret", str(key), "--controller", "10.0.0.1"]) != 0
    assert f"Fix: chmod 600 {key}" in capsys.readouterr().err
    assert not (tmp_path / "ipython").exists()


def test_no_controller_answering_leaves_nothing_behind(tmp_path, capsys):
    """Loopback only: nothing listens on 127.0.0.1 at these ports."""
    key = tmp_path / "cluster.secret"
    secret.write(key, bytes(32))
    argv = [
        "connect", "--secret", str(key), "--controller", "127.0.0.1", "--base-port", "64000",
        "--timeout", "2", "--ipython-dir", str(tmp_path / "ipython"),
    ]  # fmt: skip
    assert main(argv) != 0
    assert "the controller did not answer at 127.0.0.1" in capsys.readouterr().err
    assert not (tmp_path / "ipython").exists()
