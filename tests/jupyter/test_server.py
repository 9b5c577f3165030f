"""JupyterLab started the way ``picluster-jupyter.service`` starts it
(``picluster jupyter`` as an unprivileged user with the secret passed as a
systemd credential), in the controller's namespace, probed from another host
on the LAN like a browser would: login is required, the token works, the
token is on no command line, the ipyparallel extension lists the cluster and
a kernel started through the server runs ``%px`` on every engine.
(How the server is started as an unprivileged user: tests/jupyter/lab.py.)
"""

import json
import pwd
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from picluster import secret
from picluster.jupyter import example_notebooks
from picluster.secret import Keys
from tests.harness.cluster import wait_for
from tests.jupyter.conftest import ENGINES
from tests.jupyter.lab import run_as_user, running_lab

PORT = 18765
PROBE = Path(__file__).with_name("kernel_probe.py")


@pytest.fixture(scope="module")
def lab(jcluster):
    with running_lab(jcluster, jcluster.secret, PORT) as lab:
        yield lab


def test_login_is_required(lab):
    code, _, _ = lab.get("/api/contents")
    assert code == 403, lab.log()
    code, _, redirect = lab.get("/lab")
    assert code == 302 and "/login?next=%2Flab" in redirect, (code, redirect)
    assert lab.get("/api/contents", token="0" * 48)[0] == 403


def test_token_works_and_examples_are_there(lab):
    code, body, _ = lab.get("/api/contents/examples", token=lab.token)
    assert code == 200, body
    names = sorted(item["name"] for item in json.loads(body)["content"])
    assert names == sorted(f.name for f in example_notebooks()), names
    # the URL `picluster url` prints logs in too (token in the query, as a browser sends it)
    code, _, _ = lab.get(f"/api/status?token={lab.token}")
    assert code == 200


def test_server_runs_unprivileged_with_private_files(lab):
    pids = lab.ctl.host.pids("jupyterlab")
    assert pids, "no jupyterlab process in the controller namespace"
    for pid in pids:
        status = Path(f"/proc/{pid}/status").read_text()
        uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
        assert uid_line.split()[1:] == [str(pwd.getpwnam("nobody").pw_uid)] * 4, uid_line
    security = lab.home / ".ipython" / "profile_default" / "security"
    runtime = lab.home / ".local" / "share" / "jupyter" / "runtime"
    for private in (
        security / "ipcontroller-client.json",
        security / "cluster-.json",
        runtime / "jupyter_picluster_config.json",
    ):
        assert private.stat().st_mode & 0o077 == 0, f"{private} is readable by others"


def test_token_is_on_no_command_line(lab):
    """The 2018 notebook advisory: /proc/<pid>/cmdline is world-readable."""
    token = lab.token.encode()
    leaks = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if token in (entry / "cmdline").read_bytes():
                    leaks.append((entry.name, (entry / "cmdline").read_bytes()[:200]))
            except OSError:
                continue
    assert not leaks, f"token found on command lines: {leaks}"


def test_clusters_panel_lists_the_running_cluster(lab):
    seen = []

    def listing():
        code, body, _ = lab.get("/ipyparallel/clusters", token=lab.token)
        seen[:] = [code, body]
        if code != 200:
            return None
        clusters = [c for c in json.loads(body) if c.get("controller")]
        return clusters if clusters and clusters[0]["engines"]["n"] == ENGINES else None

    clusters = wait_for(
        listing, 30, f"the cluster listed with {ENGINES} engines",
        on_fail=lambda: f"\nlast answer: {seen}\n{lab.log()}",
    )  # fmt: skip
    (cluster,) = clusters
    assert cluster["id"] == "default:"
    assert cluster["controller"]["class"] == "picluster.clusterfile.AgentControllerLauncher"
    assert cluster["cluster_file"].endswith("/profile_default/security/cluster-.json")


def test_kernel_runs_px_on_every_engine(lab, tmp_path):
    code = textwrap.dedent(
        f"""
        import ipyparallel as ipp
        rc = ipp.Client()
        rc.wait_for_engines({ENGINES}, timeout=60)
        %px import socket
        hosts = rc[:].apply_sync(lambda: socket.gethostname())
        print("HOSTS", sorted(hosts))
        print("PRELOADED", rc[:].apply_sync(lambda: "numpy" in globals()))
        cluster = ipp.Cluster.from_file()
        print("FROM_FILE", len(cluster.connect_client_sync().ids))
        """
    )
    code_file = lab.home / "probe.py"
    code_file.write_text(code)
    out = lab.cluster.client_host.run(
        "env", f"PROBE_TOKEN={lab.token}", sys.executable, str(PROBE), lab.base, str(code_file),
        check=False,
    )  # fmt: skip
    assert out.returncode == 0, f"{out.stdout}\n{out.stderr}\n{lab.log()}"
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["status"] == "ok", result["output"]
    assert "HOSTS ['controller', 'controller', 'engine-1', 'engine-1']" in result["output"], result
    assert f"FROM_FILE {ENGINES}" in result["output"], result
    assert f"PRELOADED {[True] * ENGINES}" in result["output"], "[engines] startup not applied"


def test_picluster_url(lab):
    keys = Keys.derive(lab.cluster.secret)
    expected = f"http://controller.local:{PORT}/lab?token={keys.jupyter_token}"
    # on the build host, with the secret file
    secret_file = lab.home / "build.secret"
    secret.write(secret_file, lab.cluster.secret)
    out = subprocess.run(
        [sys.executable, "-m", "picluster", "url", "--secret", str(secret_file),
         "--host", "controller.local", "--config", str(lab.config)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert out.stdout.strip() == expected
    # on the controller as the first user, who cannot read the root-only secret:
    # the running server's private config tells it
    nobody_run = run_as_user(
        lab.home, lab.home / "no-credentials",
        "url", "--config", str(lab.config), "--host", "controller.local",
    )  # fmt: skip
    out = subprocess.run(nobody_run, capture_output=True, text=True, check=False)
    assert out.stdout.strip() == expected, out.stderr
