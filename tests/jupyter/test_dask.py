"""``rc.become_dask()`` on the namespace cluster, seen from the LAN: the scheduler
and the workers answer only clients with the cluster's certificate, nothing new
listens on the LAN without authentication, and the dashboard, on the controller's
loopback, answers through JupyterLab to its logged-in users only.

The client that starts Dask runs in the controller's namespace, configured as a
JupyterLab kernel is (``picluster.jupyter.write_dask_config``); the probes run on
the client host. Dask is stopped before the module ends (the last test checks
that ``rc.stop_dask()`` closes everything it opened), so other tests sharing the
cluster are not disturbed. Unit level: tests/unit/test_dasktls.py and
tests/unit/test_daskcluster.py.
"""

from __future__ import annotations

import ipaddress
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from picluster import daskcluster, dasktls, secret
from picluster.jupyter import write_dask_config
from picluster.secret import Keys
from tests.harness.cluster import wait_for
from tests.harness.netns import Host
from tests.jupyter.conftest import ENGINES
from tests.jupyter.lab import running_lab

PORT = 18766  # JupyterLab for this module (test_server.py uses 18765)
BASE_PORT = 47000  # the cluster's default range (tests/jupyter/conftest.py sets none)
SCHEDULER = daskcluster.scheduler_port(BASE_PORT)
DASHBOARD = daskcluster.dashboard_port(BASE_PORT)

BECOME = f"""
import json, socket
import ipyparallel as ipp
rc = ipp.Client()
rc.wait_for_engines({ENGINES}, timeout=120)
dc = rc.become_dask()
dc.wait_for_workers({ENGINES}, timeout=120)
print("RESULT " + json.dumps({{
    "scheduler": dc.scheduler.address,
    "link": dc.dashboard_link,
    "workers": dc.run(socket.gethostname),
    "answer": dc.submit(sum, [1, 2, 3]).result(timeout=60),
}}))
dc.close()
rc.close()
"""

STOP = """
import ipyparallel as ipp
rc = ipp.Client()
rc.stop_dask()
rc.close()
print("RESULT true")
"""

# A distributed.Client on the client host, with whatever TLS files DASK_CONFIG names.
CLIENT = """
import json, sys
from distributed import Client
try:
    with Client(sys.argv[1], timeout=5) as c:
        got = {"connected": True, "answer": c.submit(sum, [1, 2, 3]).result(timeout=60)}
except (OSError, TimeoutError) as exc:
    got = {"connected": False, "error": f"{type(exc).__name__}: {exc}"}
print("RESULT " + json.dumps(got))
"""

# Raw probes of one listener: a TLS client with a given certificate (or none) that
# trusts any server, and a plain TCP client sending an HTTP request. What each
# receives, in hex: distributed's handshake frame when the server accepts the
# client, nothing (alert or EOF) when it refuses it.
PROBE = """
import json, socket, ssl, sys
args = json.loads(sys.argv[1])


def tls(host, port, directory):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if directory:
        ctx.load_cert_chain(f"{directory}/{args['cert']}", f"{directory}/{args['key']}")
    with socket.create_connection((host, port), timeout=10) as raw:
        try:
            with ctx.wrap_socket(raw) as conn:
                return conn.recv(1024).hex()
        except (ssl.SSLError, ConnectionResetError):
            return ""


def plain(host, port):
    data = b""
    with socket.create_connection((host, port), timeout=10) as conn:
        conn.sendall(b"GET /status HTTP/1.0\\r\\n\\r\\n")
        try:
            while chunk := conn.recv(4096):
                data += chunk
        except (ConnectionResetError, TimeoutError):
            pass
    return data.hex()


out = {}
for host, port in args["targets"]:
    out[f"{host}:{port}"] = {
        "ours": tls(host, port, args["ours"]),
        "theirs": tls(host, port, args["theirs"]),
        "none": tls(host, port, None),
        "plain": plain(host, port),
    }
print("RESULT " + json.dumps(out))
"""


def result(run) -> object:
    for line in reversed(run.stdout.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line.removeprefix("RESULT "))
    raise AssertionError(
        f"no result ({run.returncode}):\n{run.stdout[-2000:]}\n{run.stderr[-4000:]}"
    )


def listeners(host: Host) -> set[tuple[str, int]]:
    """Every listening TCP socket of ``host``, as (address, port)."""
    out = set()
    for line in host.run("ss", "-ltnH").stdout.splitlines():
        address, _, port = line.split()[3].rpartition(":")
        out.add((address.strip("[]").split("%")[0], int(port)))
    return out


def on_lan(address: str) -> bool:
    return address in ("*", "0.0.0.0", "::") or not ipaddress.ip_address(address).is_loopback


@dataclass
class DaskUp:
    info: dict
    before: dict[str, set[tuple[str, int]]]
    after: dict[str, set[tuple[str, int]]]
    ours: Path  # DASK_CONFIG of this cluster's user
    theirs: Path  # DASK_CONFIG of another cluster's user

    def new(self, node: str) -> set[tuple[str, int]]:
        return self.after[node] - self.before[node]


def hosts(jcluster) -> dict[str, Host]:
    return {name: node.host for name, node in jcluster.nodes.items()}


def in_controller(jcluster, config: Path, code: str, check: bool = True):
    run = jcluster.nodes["controller"].host.run(
        "env", f"IPYTHONDIR={jcluster.ipython_dir}", f"DASK_CONFIG={config}",
        sys.executable, "-c", code, check=False,
    )  # fmt: skip
    if check:
        assert run.returncode == 0, f"{run.stdout[-2000:]}\n{run.stderr[-4000:]}{jcluster.logs()}"
    return run


@pytest.fixture(scope="module")
def lab(jcluster):
    with running_lab(jcluster, jcluster.secret, PORT) as lab:
        yield lab


@pytest.fixture(scope="module")
def dask_up(jcluster, lab):
    """Dask started by a client in the controller's namespace, with every host's TCP
    listeners before and after; stopped again when the module ends."""
    ours = write_dask_config(jcluster.workdir / "dask-home", Keys.derive(jcluster.secret)).parent
    theirs = write_dask_config(
        jcluster.workdir / "dask-home-other", Keys.derive(secret.generate())
    ).parent
    in_controller(jcluster, ours, STOP)  # nothing of an earlier test left running
    before = {name: listeners(host) for name, host in hosts(jcluster).items()}
    try:
        info = result(in_controller(jcluster, ours, BECOME))
        after = {name: listeners(host) for name, host in hosts(jcluster).items()}
        yield DaskUp(info, before, after, ours, theirs)
    finally:
        in_controller(jcluster, ours, STOP, check=False)


def test_dask_runs_on_every_engine_over_tls(jcluster, dask_up):
    ctl = jcluster.nodes["controller"].host
    assert dask_up.info["scheduler"] == f"tls://{ctl.address}:{SCHEDULER}", dask_up.info
    assert sorted(dask_up.info["workers"].values()) == ["controller"] * 2 + ["engine-1"] * 2
    assert all(w.startswith("tls://") for w in dask_up.info["workers"]), dask_up.info
    assert dask_up.info["answer"] == 6
    assert dask_up.info["link"] == daskcluster.dashboard_path(BASE_PORT) == "/proxy/47029/status"


def test_dashboard_answers_through_jupyterlab_to_its_users_only(lab, dask_up):
    path = daskcluster.dashboard_path(BASE_PORT)
    code, body, _ = lab.get(path, token=lab.token)
    assert code == 200, f"{code} {body[:500]}\n{lab.log()}"
    assert "Dask" in body and "bokeh" in body.lower(), body[:1000]
    code, _, redirect = lab.get(path)
    assert code == 403 or (code == 302 and "/login" in redirect), (code, redirect)
    assert lab.get(path, token="0" * 48)[0] in (302, 403)


def test_dashboard_is_not_on_the_lan(jcluster, dask_up):
    ctl = jcluster.nodes["controller"].host
    assert ("127.0.0.1", DASHBOARD) in dask_up.new("controller")
    url = f"http://{ctl.address}:{DASHBOARD}/status"
    out = jcluster.client_host.run("curl", "-s", "-m", "10", "-o", "/dev/null", url, check=False)
    assert out.returncode == 7, f"curl {url}: exit {out.returncode} (7: connection refused)"


def test_nothing_new_on_the_lan_answers_without_the_clusters_certificate(jcluster, dask_up):
    addresses = {name: host.address for name, host in hosts(jcluster).items()}
    targets = set()
    for name in addresses:
        for address, port in dask_up.new(name):
            if on_lan(address):
                targets.add((address if address not in ("*", "0.0.0.0", "::") else addresses[name],
                             port))  # fmt: skip
    # exactly Dask's own TLS comms are new on the LAN: the scheduler and one per worker
    expected = {(addresses["controller"], SCHEDULER)}
    expected |= {(w.removeprefix("tls://").rsplit(":", 1)[0], int(w.rsplit(":", 1)[1]))
                 for w in dask_up.info["workers"]}  # fmt: skip
    assert targets == expected, (targets, expected, dask_up.before, dask_up.after)
    args = {
        "targets": sorted(targets), "ours": str(dask_up.ours / "picluster-tls"),
        "theirs": str(dask_up.theirs / "picluster-tls"),
        "cert": dasktls.CERT_FILE, "key": dasktls.KEY_FILE,
    }  # fmt: skip
    run = jcluster.client_host.run(sys.executable, "-c", PROBE, json.dumps(args), check=False)
    got = result(run)
    assert sorted(got) == sorted(f"{a}:{p}" for a, p in targets), got
    for target, seen in got.items():
        # the probe can tell: with the cluster's certificate, distributed greets it
        assert seen["ours"], f"{target}: no handshake with the cluster's own certificate"
        assert seen["theirs"] == "", f"{target} answered another cluster's certificate: {seen}"
        assert seen["none"] == "", f"{target} answered a client without a certificate: {seen}"
        plain = bytes.fromhex(seen["plain"])
        # nothing, or a TLS alert record (content type 21): never plaintext
        assert plain == b"" or plain[0] == 0x15, f"{target} answered plain TCP: {plain[:200]!r}"


def test_a_client_of_another_cluster_cannot_reach_the_scheduler(jcluster, dask_up):
    scheduler = dask_up.info["scheduler"]
    got = {}
    for name, config in (("ours", dask_up.ours), ("theirs", dask_up.theirs)):
        run = jcluster.client_host.run(
            "env", f"DASK_CONFIG={config}", sys.executable, "-c", CLIENT, scheduler, check=False
        )
        got[name] = result(run)
    assert got["ours"] == {"connected": True, "answer": 6}, got  # from the LAN, with the secret
    assert not got["theirs"]["connected"], got
    assert "TLS" in got["theirs"]["error"] or "certificate" in got["theirs"]["error"], got


def test_stop_dask_closes_everything_become_dask_opened(jcluster, dask_up):
    """Last in this module: rc.stop_dask() (ipyparallel's hub left the scheduler
    listening, see daskcluster.patch_hub); become_dask() works again right after."""
    in_controller(jcluster, dask_up.ours, STOP)
    for name, host in hosts(jcluster).items():
        wait_for(
            lambda host=host, name=name: not (listeners(host) - dask_up.before[name]),
            30, f"every listener Dask opened on {name} closed",
            on_fail=lambda host=host, name=name: f"\nstill open: "
            f"{listeners(host) - dask_up.before[name]}",
        )  # fmt: skip
    again = result(in_controller(jcluster, dask_up.ours, BECOME))
    assert again["scheduler"] == dask_up.info["scheduler"] and again["answer"] == 6, again
    in_controller(jcluster, dask_up.ours, STOP)
