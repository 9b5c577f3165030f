"""Start JupyterLab the way ``picluster-jupyter.service`` does, in a namespace host.

``picluster jupyter`` runs as uid ``nobody`` with a private HOME and the secret
handed over like systemd's ``LoadCredential=`` does (``$CREDENTIALS_DIRECTORY``).
On this development machine the Python interpreter lives under /root (mode
0700), so the process keeps one ambient capability, CAP_DAC_READ_SEARCH, only
to reach it; it is still not root (the server refuses root) and owns nothing
of root's. Used by test_server.py and bench/jupyterlab_screenshot.py.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from picluster import secret
from picluster.secret import Keys
from tests.harness.cluster import Cluster, wait_for


def run_as_user(home: Path, creds: Path, *argv: str) -> list[str]:
    """``picluster ARGV`` in the unit's context: User=nobody, HOME,
    $CREDENTIALS_DIRECTORY, nothing else."""
    return python_as_user(home, creds, "-m", "picluster", *argv)


def python_as_user(home: Path, creds: Path, *argv: str) -> list[str]:
    return [
        "env", "-i", "PATH=/usr/bin:/bin", f"HOME={home}", "USER=nobody", "LANG=C.UTF-8",
        f"CREDENTIALS_DIRECTORY={creds}",
        "setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
        "--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search",
        sys.executable, *argv,
    ]  # fmt: skip


class Lab:
    def __init__(self, cluster: Cluster, key: bytes, home: Path, port: int) -> None:
        self.cluster = cluster
        self.home = home
        self.port = port
        self.token = Keys.derive(key).jupyter_token
        self.ctl = cluster.nodes["controller"]
        self.base = f"http://{self.ctl.host.address}:{port}"
        self.config = home / "cluster.toml"
        self.creds = home / "credentials"
        self.proc: subprocess.Popen[bytes] | None = None

    def log(self) -> str:
        return (self.home / "jupyter.log").read_text(errors="replace")[-4000:]

    def get(self, path: str, token: str | None = None) -> tuple[int, str, str]:
        """GET from the client host; the token goes to curl on stdin, not argv."""
        conf = f'url = "{self.base}{path}"\n'
        if token:
            conf += f'header = "Authorization: token {token}"\n'
        out = self.cluster.client_host.run(
            "curl", "-s", "-m", "20", "-K", "-", "-w", "\n%{http_code} %{redirect_url}",
            input=conf, check=False,
        )  # fmt: skip
        body, _, status = out.stdout.rpartition("\n")
        code, _, redirect = status.partition(" ")
        return int(code or 0), body, redirect

    def put_json(self, path: str, body: str) -> int:
        conf = (
            f'url = "{self.base}{path}"\nrequest = "PUT"\n'
            f'header = "Authorization: token {self.token}"\n'
            'header = "Content-Type: application/json"\n'
        )
        body_file = self.home / "put-body.json"
        body_file.write_text(body)
        conf += f'data-binary = "@{body_file}"\n'
        out = self.cluster.client_host.run(
            "curl", "-s", "-o", "/dev/null", "-m", "20", "-K", "-", "-w", "%{http_code}",
            input=conf, check=False,
        )  # fmt: skip
        return int(out.stdout or 0)

    def chown(self, path: Path) -> None:
        nobody = pwd.getpwnam("nobody")
        os.chown(path, nobody.pw_uid, nobody.pw_gid)

    def start(self, key: bytes) -> None:
        self.home.chmod(0o755)
        self.creds.mkdir(mode=0o700)
        secret.write(self.creds / "picluster-secret", key)
        self.config.write_text(
            self.ctl.config.read_text() + f'\n[jupyter]\nport = {self.port}\nip = "0.0.0.0"\n'
        )
        for path in (self.home, self.creds, self.creds / "picluster-secret", self.config):
            self.chown(path)
        argv = run_as_user(self.home, self.creds, "jupyter", "--config", str(self.config))
        with (self.home / "jupyter.log").open("wb") as log:
            self.proc = subprocess.Popen(
                ["ip", "netns", "exec", self.ctl.host.ns, *argv],
                stdout=log, stderr=subprocess.STDOUT, cwd="/", start_new_session=True,
            )  # fmt: skip
        proc = self.proc
        wait_for(
            lambda: proc.poll() is not None or self.get("/lab")[0] == 302,
            60, "JupyterLab answering on the LAN", on_fail=self.log,
        )  # fmt: skip
        assert proc.poll() is None, f"picluster jupyter exited {proc.returncode}:\n{self.log()}"

    def stop(self) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@contextlib.contextmanager
def running_lab(cluster: Cluster, key: bytes, port: int) -> Iterator[Lab]:
    home = Path(tempfile.mkdtemp(prefix="picluster-lab-", dir="/tmp"))
    lab = Lab(cluster, key, home, port)
    try:
        lab.start(key)
        yield lab
    finally:
        lab.stop()
        shutil.rmtree(home, ignore_errors=True)
