"""SSH between the nodes, derived from the cluster secret, against real sshd and ssh.

Three namespace hosts on a bridge: ``controller`` (the client) and ``engine-1``
set up by ``picluster.sshtrust`` from the cluster's secret, ``engine-2`` from
another secret. Each server runs the real ``/usr/sbin/sshd`` with a config of
its own that includes only the drop-in our code wrote (no ``authorized_keys``:
``AuthorizedKeysFile none``). The client runs ``ssh`` with the ssh_config
drop-in and the ``ssh_known_hosts`` our code wrote and nothing else
(``StrictHostKeyChecking=yes``, an empty user known_hosts, no agent): the
``.local`` names resolve through the namespace's own ``/etc/hosts``
(``ip netns exec`` mounts ``/etc/netns/<ns>/hosts`` over it), as mDNS would.

The login user is root (the test runs as root, and sshd needs a real account);
``PermitRootLogin prohibit-password`` lets a certificate in, the image itself says
``no``.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from pathlib import Path

import pytest

from picluster import secret, sshtrust
from tests.harness.cluster import wait_for
from tests.harness.netns import Host, Lan

SSHD = Path("/usr/sbin/sshd")


def _server_config(layout: sshtrust.Layout, address: str, workdir: Path) -> Path:
    cfg = workdir / "sshd_config"
    cfg.write_text(
        f"Include {layout.sshd_dropin.parent}/*.conf\n"
        f"ListenAddress {address}\n"
        f"HostKey {layout.host_key.with_suffix('')}\n"
        f"PidFile {workdir / 'sshd.pid'}\n"
        "AuthorizedKeysFile none\n"
        "PermitRootLogin prohibit-password\n"
        "PasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\n"
        "UsePAM no\n"
        # The test's directories live under /tmp (world-writable): sshd's ownership
        # checks of the principals file's parents would refuse them.
        "StrictModes no\n"
        "LogLevel VERBOSE\n"
    )
    return cfg


def _node(root: Path, name: str, key: bytes, user: pwd.struct_passwd) -> sshtrust.Layout:
    layout = sshtrust.Layout(root / name)
    layout.host_key.parent.mkdir(parents=True)
    host_key = layout.host_key.with_suffix("")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", host_key], check=True)
    sshtrust.apply(key, name, user, layout)
    return layout


@pytest.fixture
def lan(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces, sshd)")
    if not SSHD.exists() or shutil.which("ssh") is None:
        pytest.fail("sshd/ssh not found: apt-get install openssh-server openssh-client")
    lan = Lan(f"pct{os.getpid()}-ssh")
    made: list[Path] = []
    privsep = Path("/run/sshd")  # sshd's privilege separation dir (the unit makes it)
    try:
        if not privsep.exists():
            privsep.mkdir(mode=0o755)
            made.append(privsep)
        yield lan, made
    finally:
        try:
            lan.close()
        finally:
            for path in reversed(made):
                shutil.rmtree(path, ignore_errors=True)


def _start_sshd(host: Host, layout: sshtrust.Layout, workdir: Path) -> None:
    workdir.mkdir()
    log = workdir / "sshd.log"
    cfg = _server_config(layout, host.address, workdir)
    with log.open("wb") as out:
        subprocess.Popen(
            ["ip", "netns", "exec", host.ns, str(SSHD), "-D", "-e", "-f", str(cfg)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    wait_for(
        lambda: "Server listening" in log.read_text(),
        20,
        f"sshd listening on {host.name}",
        on_fail=lambda: log.read_text(),
    )


def test_cluster_ssh_trust_with_real_sshd(lan, tmp_path):
    lan, made = lan
    root = pwd.getpwuid(0)
    cluster, other = secret.generate(), secret.generate()
    controller = lan.add_host("controller")
    engines = {"engine-1": lan.add_host("engine-1"), "engine-2": lan.add_host("engine-2")}

    client = _node(tmp_path, "controller", cluster, root)
    servers = {
        "engine-1": _node(tmp_path, "engine-1", cluster, root),
        "engine-2": _node(tmp_path, "engine-2", other, root),  # another cluster's CA
    }
    for name, host in engines.items():
        _start_sshd(host, servers[name], tmp_path / f"{name}-sshd")
    netns_etc = Path("/etc/netns")
    if not netns_etc.exists():
        made.append(netns_etc)
    etc = netns_etc / controller.ns
    made.append(etc)
    etc.mkdir(parents=True)
    (etc / "hosts").write_text(
        "127.0.0.1 localhost\n" + "".join(f"{h.address} {n}.local\n" for n, h in engines.items())
    )

    isolated = [
        "-o", "BatchMode=yes",
        "-o", "StrictHostKeyChecking=yes",
        "-o", "UserKnownHostsFile=/dev/null",
        "-o", f"GlobalKnownHostsFile={client.known_hosts}",
        "-o", "IdentitiesOnly=yes",
        "-o", "IdentityAgent=none",
        "-o", "ConnectTimeout=20",
    ]  # fmt: skip

    def ssh(target: str, *options: str, config: Path = client.ssh_dropin):
        argv = ["ssh", "-v", "-F", str(config), *isolated, *options, f"root@{target}"]
        return controller.run(*argv, "echo", "logged-in-as-$(id -un)", check=False)

    # The cluster's user key, offered by the drop-in alone, to a host certified by the
    # cluster's CA: no prompt, no flag.
    ok = ssh("engine-1.local")
    assert ok.returncode == 0 and ok.stdout.strip() == "logged-in-as-root", ok.stderr
    ca = sshtrust.ClusterSsh.derive(cluster).ca.fingerprint()
    assert f'ID "picluster engine-1" CA ssh-ed25519 {ca}' in ok.stderr, ok.stderr
    assert f"Found CA key in {client.known_hosts}" in ok.stderr, ok.stderr

    # A user key derived from another secret (its certificate from another CA) is refused.
    stranger = _node(tmp_path, "stranger", other, root)
    key = stranger.user_key(root)
    refused = ssh("engine-1.local", "-o", f"IdentityFile={key}", config=Path("/dev/null"))
    assert refused.returncode == 255 and "Permission denied (publickey)" in refused.stderr

    # The cluster's own user key without its certificate is not enough either.
    bare = tmp_path / "bare" / "id"
    bare.parent.mkdir()
    shutil.copy(client.user_key(root), bare)
    refused = ssh("engine-1.local", "-o", f"IdentityFile={bare}", config=Path("/dev/null"))
    assert refused.returncode == 255 and "Permission denied (publickey)" in refused.stderr

    # A host whose certificate another secret's CA signed is refused by the client.
    wrong_host = ssh("engine-2.local")
    assert wrong_host.returncode == 255, wrong_host.stdout
    assert "No matching CA found" in wrong_host.stderr, wrong_host.stderr
    assert "Host key verification failed" in wrong_host.stderr

    log = (tmp_path / "engine-1-sshd" / "sshd.log").read_text()
    assert f"Accepted publickey for root from {controller.address}" in log, log
    assert "ED25519-CERT SHA256:" in log and f"CA ED25519 {ca}" in log, log
    other_ca = sshtrust.ClusterSsh.derive(other).ca.fingerprint()
    assert f"CA ED25519 {other_ca}" in log, "the stranger's certificate was never offered"
