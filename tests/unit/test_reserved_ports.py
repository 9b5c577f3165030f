"""The cluster's ports are kept out of the kernel's ephemeral range (per network
namespace), so no outgoing connection can hold one when ipcontroller binds it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from picluster.controller import reserve_ports


def test_reservation_keeps_other_entries_and_is_idempotent(tmp_path):
    sysctl = tmp_path / "ip_local_reserved_ports"
    sysctl.write_text("8080\n")
    assert reserve_ports(47000, sysctl) == "8080,47000-47029"
    assert reserve_ports(47000, sysctl) == "8080,47000-47029"
    sysctl.write_text("\n")
    assert reserve_ports(20000, sysctl) == "20000-20029"


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"), reason="needs root")
def test_the_command_reserves_in_a_fresh_network_namespace(tmp_path):
    config = tmp_path / "cluster.toml"
    config.write_text("[cluster]\nbase_port = 20000\n")
    script = (
        f"{sys.executable} -m picluster reserve-ports --config {config} && "
        "cat /proc/sys/net/ipv4/ip_local_reserved_ports"
    )
    out = subprocess.run(
        ["unshare", "--net", "sh", "-c", script], capture_output=True, text=True, check=True
    ).stdout
    assert "reserved ports: 20000-20029" in out
    assert out.strip().endswith("20000-20029")
