"""The boot tier's plumbing without VMs: the private LAN, its DHCP server and the port relay.

A real HTTP server inside the namespace (on the bridge's address) stands in
for the controller VM's JupyterLab; the host reaches it on 127.0.0.1 only. A
minimal DHCP client (``dhcp_client.py``) in a second namespace, on a veth into
the bridge, stands in for the VMs' DHCP clients against the real dnsmasq.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from picluster.vm.cluster import BootCluster, wait_for
from picluster.vm.lan import SUBNET, Dhcp, Lan

REPO = Path(__file__).resolve().parents[2]

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


def test_the_dhcp_server_serves_the_bridge_like_a_home_router(tmp_path):
    """dnsmasq in the LAN's namespace: a reserved address for a known MAC, the range for
    any other, the client's hostname in the leases file, one ACK per request in its log;
    bound to br0 only, and gone (with its pid file) after close()."""
    lan = Lan(f"picluster-dhcp-{os.getpid()}")
    client = f"picluster-dhcpc-{os.getpid()}"
    dhcp = Dhcp(lan, tmp_path, {"52:54:00:21:30:00": SUBNET.network_address + 10})
    try:
        lan.create()
        dhcp.start()
        sockets = subprocess.run(
            lan.exec_argv(["ss", "-ulpnH", "sport", "= :67"]), capture_output=True, text=True
        ).stdout
        assert "%br0:67" in sockets and "dnsmasq" in sockets, sockets
        subprocess.run(["ip", "netns", "add", client], check=True)
        subprocess.run(
            ["ip", "-n", lan.name, "link", "add", "vc", "type", "veth",
             "peer", "name", "eth0", "netns", client],
            check=True,
        )  # fmt: skip
        subprocess.run(
            ["ip", "-n", lan.name, "link", "set", "vc", "master", "br0", "up"], check=True
        )

        def ask(mac: str, name: str) -> str:
            subprocess.run(["ip", "-n", client, "link", "set", "eth0", "down"], check=True)
            subprocess.run(
                ["ip", "-n", client, "link", "set", "eth0", "address", mac, "up"], check=True
            )
            proc = subprocess.run(
                ["ip", "netns", "exec", client, sys.executable, "-m", "tests.boot.dhcp_client",
                 "eth0", mac, name],
                capture_output=True, text=True, cwd=REPO, timeout=60,
            )  # fmt: skip
            assert proc.returncode == 0, proc.stderr
            return proc.stdout.strip()

        assert ask("52:54:00:21:30:00", "controller") == "10.213.0.10"
        first = ask("52:54:00:21:30:07", "engine-213007")
        assert ask("52:54:00:21:30:07", "engine-213007") == first  # a reboot: the same address
        leases = dhcp.leases()
        assert leases["52:54:00:21:30:07"].from_range, leases
        assert leases["52:54:00:21:30:07"].hostname == "engine-213007", leases
        assert not leases["52:54:00:21:30:00"].from_range, leases
        assert dhcp.acks("52:54:00:21:30:07") == 2
        assert dhcp.acks("52:54:00:21:30:00") == 1
        pid = dhcp.process.pid if dhcp.process else 0
    finally:
        dhcp.close()
        lan.close()
        subprocess.run(["ip", "netns", "delete", client], capture_output=True)
    assert not Path(f"/proc/{pid}").exists(), "dnsmasq still runs after close()"
    assert not dhcp.pid_file.exists()
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert lan.name not in names and client not in names, "namespace left behind"
