"""Nodes running the real ``picluster agent`` in namespace hosts, and a client.

Each node gets its own hostname (a UTS namespace), config, secret and state
dir, exactly what a card would have; the agent is the same entry point
systemd starts on the image.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from picluster import secret as secret_mod
from tests.harness.netns import Host, Lan, kill_namespace_processes, sweep_stale

REPO = Path(__file__).resolve().parents[2]


def wait_for(predicate, deadline: float, what: str, interval: float = 0.2, on_fail=None):
    """Poll ``predicate`` until it returns something truthy; fail saying ``what`` did not happen."""
    end = time.monotonic() + deadline
    last = None
    while time.monotonic() < end:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    detail = on_fail() if on_fail else ""
    raise AssertionError(f"within {deadline:.0f} s: {what} did not happen (last: {last!r}){detail}")


@dataclass
class Node:
    host: Host
    root: Path
    proc: subprocess.Popen[bytes] | None = None
    hostname: str = ""
    """The node's key in the cluster, and the name its card was given."""
    boot_name: str = ""
    """The hostname the card boots with, when it is not ``hostname``: an unnamed card
    (``raspberrypi``) that names itself, as the image's own card does."""

    @property
    def config(self) -> Path:
        return self.root / "cluster.toml"

    @property
    def secret(self) -> Path:
        return self.root / "secret"

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    @property
    def log(self) -> Path:
        return self.root / "agent.log"

    @property
    def etc(self) -> Path:
        """This card's own /etc/hostname and /etc/hosts (``picluster name`` writes them)."""
        return self.root / "etc"

    def current_name(self) -> str:
        """The name the card has now: the one it gave itself, else the one it was given."""
        try:
            return (self.etc / "hostname").read_text().strip() or self.hostname
        except OSError:
            return self.hostname

    def start(self) -> None:
        env = dict(os.environ)
        env.pop("PICLUSTER_HOSTNAME", None)
        env["PICLUSTER_ETC_DIR"] = str(self.etc)
        # What the unit's ExecStartPre=+ does (the reservation is per network namespace).
        self.host.run(
            sys.executable, "-m", "picluster", "reserve-ports", "--config", str(self.config),
            check=False,
        )  # fmt: skip
        paths = ["--config", str(self.config), "--secret", str(self.secret),
                 "--state-dir", str(self.state_dir)]  # fmt: skip
        # Boot: the kernel starts with the card's name, then the unit's ExecStartPre=-+
        # (picluster name, whose failure is the agent's to explain), then the agent.
        script = (
            'hostname "$0" || exit 1; py=$1; shift; '
            '"$py" -m picluster name "$@"; exec "$py" -m picluster agent "$@"'
        )
        argv = [
            "ip", "netns", "exec", self.host.ns, "unshare", "--uts", "--",
            "sh", "-c", script, self.boot_name or self.hostname, sys.executable, *paths,
        ]  # fmt: skip
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """``picluster <args>`` as root on this host, with this card's config and secret."""
        return self.host.run(
            sys.executable, "-m", "picluster", *args,
            "--config", str(self.config), "--secret", str(self.secret), check=check,
        )  # fmt: skip

    def status(self) -> dict:
        try:
            return json.loads((self.state_dir / "agent-status.json").read_text())
        except (OSError, ValueError):
            return {}

    def stop(self, deadline: float = 20.0) -> int | None:
        """SIGTERM the agent (what systemd does) and wait for it and its children."""
        if self.proc is None:
            return None
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(deadline)
        except subprocess.TimeoutExpired:
            code = None
        kill_namespace_processes(self.host.ns)
        self.proc.wait()
        self.proc = None
        return code

    def kill(self) -> None:
        """Pull the plug: SIGKILL everything on this host."""
        kill_namespace_processes(self.host.ns)
        if self.proc is not None:
            self.proc.wait()
            self.proc = None

    def tail(self, lines: int = 40) -> str:
        try:
            text = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(text[-lines:])


@dataclass
class ClientRun:
    proc: subprocess.Popen[str]
    cluster: Cluster

    def result(self, timeout: float = 180.0) -> Any:
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
            raise AssertionError(
                f"client script did not finish within {timeout:.0f} s:\n{out[-2000:]}\n"
                f"{err[-4000:]}{self.cluster.logs()}"
            ) from None
        for line in reversed(out.splitlines()):
            if line.startswith("RESULT "):
                return json.loads(line[len("RESULT ") :])
        raise AssertionError(
            f"client script failed ({self.proc.returncode}):\n{out[-2000:]}\n"
            f"{err[-4000:]}{self.cluster.logs()}"
        )


@dataclass
class Cluster:
    """A LAN of namespace hosts running agents, plus a client host on the same LAN."""

    workdir: Path
    prefix: str = field(
        default_factory=lambda: f"pct{os.getpid()}-{int(time.time() * 1000) % 100000}"
    )
    nodes: dict[str, Node] = field(default_factory=dict)

    def __post_init__(self) -> None:
        sweep_stale()
        self.lan = Lan(self.prefix)
        self.client_host = self.lan.add_host("client")

    def add(
        self,
        hostname: str,
        config: str = "",
        secret: bytes | None = None,
        start: bool = True,
        boot_name: str = "",
        mac: str = "",
    ) -> Node:
        """A card: ``hostname`` keys it here (and names it, unless it boots as
        ``boot_name``); ``mac`` is its wired port's MAC (a card without a board
        serial names itself after it)."""
        host = self.lan.add_host(hostname)
        if mac:
            host.run("ip", "link", "set", "eth0", "down")
            host.run("ip", "link", "set", "eth0", "address", mac)
            host.run("ip", "link", "set", "eth0", "up")
        node = Node(host, self.workdir / hostname, hostname=hostname, boot_name=boot_name)
        node.root.mkdir(parents=True)
        node.etc.mkdir()
        (node.etc / "hosts").write_text(
            f"127.0.0.1\tlocalhost\n127.0.1.1\t{boot_name or hostname}\n"
        )
        node.config.write_text(textwrap.dedent(config))
        if secret is not None:
            secret_mod.write(node.secret, secret)
        self.nodes[hostname] = node
        if start:
            node.start()
        return node

    def start_client(
        self, code: str, secret: bytes, controller: str, base_port: int = 47000,
        curve: bool = True,
    ) -> ClientRun:  # fmt: skip
        """Start ``code`` with ``rc`` connected to the controller, in the client host.

        ``code`` sets ``result``, which comes back JSON-decoded from ``ClientRun.result``.
        """
        key_file = self.workdir / f"client-secret-{time.monotonic_ns()}"
        secret_mod.write(key_file, secret)
        script = (
            textwrap.dedent(
                f"""
            import json, sys, time
            from pathlib import Path
            import ipyparallel as ipp
            from picluster import secret
            from picluster.connection import client_info
            keys = secret.Keys.derive(secret.load(Path({str(key_file)!r})))
            Path({str(key_file)!r}).unlink()
            info = client_info({controller!r}, {base_port}, keys, location={controller!r},
                               curve={curve!r})
            rc = ipp.Client(info, timeout=60)
            result = None
            """
            )
            + textwrap.dedent(code)
            + "\nprint('RESULT ' + json.dumps(result))\nrc.close()\n"
        )
        proc = subprocess.Popen(
            ["ip", "netns", "exec", self.client_host.ns, sys.executable, "-c", script],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
        )  # fmt: skip
        return ClientRun(proc, self)

    def client(
        self, code: str, secret: bytes, controller: str, base_port: int = 47000,
        timeout: float = 180.0,
    ) -> Any:  # fmt: skip
        """Run ``code`` (see ``start_client``) and return its ``result``."""
        return self.start_client(code, secret, controller, base_port).result(timeout)

    def logs(self, lines: int = 30) -> str:
        return "".join(
            f"\n--- {n.hostname} agent log ---\n{n.tail(lines)}" for n in self.nodes.values()
        )

    def close(self) -> None:
        """Stop every agent as systemd would (all at once), then remove the LAN."""
        try:
            for node in self.nodes.values():
                if node.proc is not None:
                    with contextlib.suppress(ProcessLookupError):
                        node.proc.send_signal(signal.SIGTERM)
            for node in self.nodes.values():
                with contextlib.suppress(Exception):
                    node.stop(deadline=15)
        finally:
            self.lan.close()
