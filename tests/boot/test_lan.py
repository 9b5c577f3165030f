"""The boot tier's plumbing without VMs: the private LAN and the port relay.

A real HTTP server inside the namespace (on the bridge's address) stands in
for the controller VM's JupyterLab; the host reaches it on 127.0.0.1 only.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import urllib.request

import pytest

from picluster.vm.cluster import BootCluster, wait_for
from picluster.vm.lan import Lan

pytestmark = [pytest.mark.root, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_relay_reaches_a_server_inside_the_namespace_and_cleans_up(tmp_path):
    lan = Lan(f"picluster-test-{os.getpid()}")
    cluster = BootCluster(image=tmp_path / "x.img", secret=tmp_path / "s", work=tmp_path)
    (tmp_path / "index.html").write_text("inside the LAN\n")
    server = None
    try:
        lan.create()
        cluster.lan = lan
        # the "controller" address is .10: give it to the bridge for this test
        subprocess.run(
            ["ip", "-n", lan.name, "addr", "add", "10.213.0.10/24", "dev", "br0"], check=True
        )
        server = subprocess.Popen(
            lan.exec_argv([sys.executable, "-m", "http.server", "--bind", "10.213.0.10", "8888"]),
            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        port = free_port()
        cluster.forward(8888, port)

        def fetch() -> str:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/index.html", timeout=5) as r:
                    return r.read().decode()
            except OSError:
                return ""

        assert (
            wait_for(fetch, 30, "the relay never delivered the page", interval=0.2)
            == "inside the LAN\n"
        )
    finally:
        if server:
            server.kill()
        cluster.close()
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert lan.name not in names, "namespace left behind"
    assert all(h.poll() is not None for h in cluster.helpers) or not cluster.helpers
