"""Who may join: a wrong secret is refused and says why; two clusters on one
LAN never mix; a broken config starts nothing."""

import json
import re
import subprocess
import sys

from picluster import secret
from tests.harness.cluster import wait_for
from tests.harness.netns import pids_in

CONTROLLER = "[engines]\non_controller = 1\n"
ENGINE = "[engines]\nper_node = 2\n"


def test_wrong_secret_is_refused_and_explained(cluster, cluster_secret):
    ctl = cluster.add("controller", CONTROLLER, cluster_secret)
    cluster.add("engine-1", ENGINE, cluster_secret)
    bad = cluster.add("engine-2", ENGINE, secret.generate())
    wait_for(
        lambda: bad.status().get("state") == "fingerprint-mismatch",
        120,
        "engine-2 (wrong secret) reporting fingerprint-mismatch",
        on_fail=cluster.logs,
    )
    assert "key fingerprint does not match" in bad.log.read_text()
    hosts = cluster.client(
        """
        rc.wait_for_engines(3, timeout=120)
        result = sorted(rc[:].apply_sync(__import__("socket").gethostname))
        """,
        cluster_secret,
        ctl.host.address,
    )
    assert hosts == ["controller", "engine-1", "engine-1"], "engine-2 must not have joined"
    assert not bad.host.pids("ipyparallel.engine"), (
        "engine-2 started engines although its key cannot work"
    )
    # What the user runs on the bad card (as root, so it can read its secret).
    status = bad.host.run(
        sys.executable, "-m", "picluster", "status",
        "--json", "--config", str(bad.config), "--secret", str(bad.secret), check=False,
    )  # fmt: skip
    view = json.loads(status.stdout)
    row = next(h for h in view["hosts"] if h["host"] == "engine-2")
    assert any("key fingerprint does not match" in p for p in row["problems"]), row
    assert status.returncode == 1, "status must exit non-zero when there is a problem"
    assert secret.encode(cluster_secret).strip() not in status.stdout + bad.log.read_text()


def test_two_clusters_on_one_lan_do_not_mix(cluster):
    alpha, beta = secret.generate(), secret.generate()
    ctl_a = cluster.add("alpha-controller", '[cluster]\nname = "alpha"\n' + CONTROLLER, alpha)
    ctl_b = cluster.add("beta-controller", '[cluster]\nname = "beta"\n' + CONTROLLER, beta)
    for i in (1, 2):
        cluster.add(f"alpha-{i}", '[cluster]\nname = "alpha"\n' + ENGINE, alpha)
        cluster.add(f"beta-{i}", '[cluster]\nname = "beta"\n' + ENGINE, beta)
    code = """
        rc.wait_for_engines(5, timeout=120)
        import time
        time.sleep(3)  # let any stray engine arrive: we assert it did NOT
        result = sorted(set(rc[:].apply_sync(__import__("socket").gethostname)))
        """
    a = cluster.start_client(code, alpha, ctl_a.host.address)
    b = cluster.start_client(code, beta, ctl_b.host.address)
    assert a.result() == ["alpha-1", "alpha-2", "alpha-controller"]
    assert b.result() == ["beta-1", "beta-2", "beta-controller"]


def test_static_controller_address_without_multicast(cluster, cluster_secret):
    ctl = cluster.add("controller", CONTROLLER, cluster_secret)
    node = cluster.add(
        "engine-1",
        f'[cluster]\ncontroller = "{ctl.host.address}"\n' + ENGINE,
        cluster_secret,
        start=False,
    )
    node.host.block_multicast()
    node.start()
    hosts = cluster.client(
        """
        rc.wait_for_engines(3, timeout=120)
        result = sorted(rc[:].apply_sync(__import__("socket").gethostname))
        """,
        cluster_secret,
        ctl.host.address,
    )
    assert hosts == ["controller", "engine-1", "engine-1"]


def test_malformed_config_starts_nothing(cluster, cluster_secret):
    node = cluster.add("engine-1", '[engines]\nper_node = "many"\nper_nod = 1\n', cluster_secret)
    code = node.proc.wait(timeout=120)
    log = node.log.read_text()
    assert code == 78, f"agent exit status {code}, expected 78 (EX_CONFIG)\n{log}"
    assert re.search(r"cluster\.toml: \[engines\] per_node: must be \"auto\"", log), log
    assert "did you mean" in log, log
    assert pids_in(node.host.ns) == [], "processes were left running after a config error"
    assert not (node.state_dir / "ipython").exists(), "engine state was created"


def test_second_controller_with_same_name_is_reported(cluster, cluster_secret):
    first = cluster.add("controller", CONTROLLER, cluster_secret)
    wait_for(lambda: first.status().get("state") == "running", 120,
             "the first controller running", on_fail=cluster.logs)  # fmt: skip
    second = cluster.add("head", CONTROLLER, cluster_secret)
    wait_for(lambda: second.status().get("state") == "duplicate-controller", 120,
             "the second controller (head) reporting duplicate-controller",
             on_fail=cluster.logs)  # fmt: skip
    assert not second.host.pids("ipyparallel.controller"), "head kept an ipcontroller running"
    status = first.host.run(
        sys.executable, "-m", "picluster", "status", "--json",
        "--config", str(first.config), "--secret", str(first.secret), check=False,
    )  # fmt: skip
    row = next(h for h in json.loads(status.stdout)["hosts"] if h["host"] == "head")
    assert any("two controllers" in p for p in row["problems"]), row


# A stranger on the LAN, without the secret, subscribes to the controller's
# client-facing iopub port (base + 12) and listens while the cluster works.
EAVESDROPPER = r"""
import signal, sys, time, zmq
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # report what was heard, then go
sub = zmq.Context().socket(zmq.SUB)
sub.setsockopt(zmq.SUBSCRIBE, b"")
sub.setsockopt(zmq.RCVTIMEO, 200)
sub.connect(sys.argv[1])
heard, deadline = b"", time.monotonic() + float(sys.argv[2])
try:
    while time.monotonic() < deadline and b"overheard" not in heard:
        try:
            heard += b"".join(sub.recv_multipart())
        except zmq.Again:
            pass
finally:
    print("HEARD" if b"overheard" in heard else "NOTHING", len(heard), flush=True)
"""


def test_a_stranger_on_the_lan_cannot_read_the_cluster_traffic(cluster, cluster_secret):
    ctl = cluster.add("controller", CONTROLLER, cluster_secret)
    cluster.add("engine-1", ENGINE, cluster_secret)
    stranger = subprocess.Popen(
        ["ip", "netns", "exec", cluster.client_host.ns, sys.executable, "-c", EAVESDROPPER,
         f"tcp://{ctl.host.address}:{47000 + 12}", "150"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        printed = cluster.client(
            """
            rc.wait_for_engines(3, timeout=120)
            ar = rc[:].apply_async(lambda: print("overheard", flush=True))
            ar.get(timeout=60)
            ar.wait_for_output(timeout=30)
            result = [s.strip() for s in ar.stdout]
            """,
            cluster_secret,
            ctl.host.address,
        )
        assert printed == ["overheard"] * 3, "the legitimate client must see the output"
        stranger.terminate()
        out, err = stranger.communicate(timeout=30)
    finally:
        if stranger.poll() is None:
            stranger.kill()
            stranger.communicate()
    assert out.startswith(("HEARD", "NOTHING")), f"the eavesdropper did not report: {err}"
    assert "HEARD" not in out, f"a stranger read engine output off the LAN: {out}"
