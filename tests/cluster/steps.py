"""The shared steps that cluster scenarios are made of, and the scenario runner.

A step is a named action on a ``Scene`` (the harness ``Cluster`` plus the
secrets it was given and what earlier steps remembered). Steps are built by the
functions below and listed in ``scenarios.py``:

- nodes and faults change the cluster: ``join``, ``start``, ``power_cut``,
  ``stop_agent``, ``drop_multicast``, ``stranger_listens``, ``start_map``;
- ``remember_*`` steps note what a later expectation compares against;
- expectations assert, and every wait has a deadline and says what did not
  happen (``wait_for``), never a bare sleep.

Anything a step starts that the cluster's own teardown would not stop is
registered on ``scene.cleanup``, which the runner closes however the scenario ends.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from picluster import secret as secret_mod
from picluster.config import ClusterSection
from picluster.connection import DASK_PORTS
from tests.harness.cluster import ClientRun, Cluster, Node, wait_for
from tests.harness.netns import pids_in

# -- the runner -----------------------------------------------------------------------


@dataclass
class Scene:
    """What steps act on: the cluster, its secrets, and what earlier steps remembered."""

    cluster: Cluster
    deadline: float
    """Default deadline (s) of every wait in the scenario: engines, states, exits."""
    secrets: dict[str, bytes] = field(default_factory=dict)
    """Secret name (``"cluster"``, ``"alpha"``, ...) -> secret, generated on first use."""
    secret_of: dict[str, bytes] = field(default_factory=dict)
    """Hostname -> the secret written on its card."""
    saved: dict[str, Any] = field(default_factory=dict)
    cleanup: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    def secret(self, name: str) -> bytes:
        return self.secrets.setdefault(name, secret_mod.generate())

    def node(self, hostname: str) -> Node:
        return self.cluster.nodes[hostname]

    def start_client(self, code: str, via: str) -> ClientRun:
        """Start ``code`` (see ``Cluster.start_client``) against controller ``via``."""
        return self.cluster.start_client(code, self.secret_of[via], self.node(via).host.address)

    def client(self, code: str, via: str, timeout: float | None = None) -> Any:
        return self.start_client(code, via).result(timeout or self.deadline + 60)

    def wait_for(self, predicate: Callable[[], Any], what: str, deadline: float | None = None):
        return wait_for(predicate, deadline or self.deadline, what, on_fail=self.cluster.logs)


@dataclass(frozen=True)
class Step:
    what: str
    run: Callable[[Scene], None]

    def __str__(self) -> str:
        return self.what


@dataclass(frozen=True)
class Scenario:
    """One entry of the scenario table; see ``scenarios.py`` for how to add one."""

    name: str
    why: str
    nodes: Sequence[Step]
    before: Sequence[Step] = ()
    fault: Sequence[Step] = ()
    expect: Sequence[Step] = ()
    deadline: float = 120.0

    def __str__(self) -> str:
        return self.name

    def run(self, cluster: Cluster) -> None:
        scene = Scene(cluster, self.deadline)
        with scene.cleanup:
            for phase in ("nodes", "before", "fault", "expect"):
                for step in getattr(self, phase):
                    try:
                        step.run(scene)
                    except BaseException as exc:
                        exc.add_note(f"scenario {self.name!r}, {phase} step: {step}")
                        raise


def step(what: str) -> Callable[[Callable[[Scene], None]], Step]:
    """Decorator: turn ``def run(scene)`` into a ``Step`` described by ``what``."""
    return lambda run: Step(what, run)


def wait_for_engines(n: int, deadline: float) -> str:
    """Client code: wait (at most ``deadline`` s) until ``n`` engines are registered."""
    return f"rc.wait_for_engines({n}, timeout={deadline:.0f})\n"


def spread(hosts: Mapping[str, int]) -> list[str]:
    """``{"controller": 1, "engine-1": 2}`` -> the sorted hostnames of those engines."""
    return sorted(h for h, count in hosts.items() for _ in range(count))


# -- nodes and faults ---------------------------------------------------------------------

Config = str | Callable[[Scene], str]


def join(hostname: str, config: Config, secret: str = "cluster", start: bool = True) -> Step:
    """A card booted (``start``) or just written: ``config`` is its cluster.toml, and
    ``secret`` names the secret on it ("cluster" unless the scenario wants another)."""

    @step(f"{hostname} joins with the {secret!r} secret" + ("" if start else " (not started)"))
    def run(scene: Scene) -> None:
        key = scene.secret(secret)
        text = config(scene) if callable(config) else config
        scene.cluster.add(hostname, text, key, start=start)
        scene.secret_of[hostname] = key

    return run


UNNAMED = "raspberrypi"
"""The image's own hostname (``./config`` TARGET_HOSTNAME): a card nobody named."""


def unnamed(card: str, mac: str, config: Config = "", secret: str = "cluster") -> Step:
    """A card flashed with the image alone boots (hostname ``raspberrypi``); its wired
    port has ``mac`` and it has no board serial, like a QEMU VM. ``card`` only keys it
    in the scenario: it names itself."""

    @step(f"an unnamed card ({card}, MAC {mac}) boots")
    def run(scene: Scene) -> None:
        key = scene.secret(secret)
        text = config(scene) if callable(config) else config
        scene.cluster.add(card, text, key, boot_name=UNNAMED, mac=mac)
        scene.secret_of[card] = key

    return run


def self_named(cards: Mapping[str, str], engines: int, via: str = "controller") -> Step:
    """The unnamed ``cards`` (card -> MAC) named themselves ``engine-<last 6 MAC
    digits>``, or ``engine-<whole MAC>`` when another card took that first: every name
    different, kept in the card's /etc/hostname and /etc/hosts, and ``engines`` engines
    of each answer under it through ``via`` (with ``via``'s own engines)."""

    @step(f"the unnamed cards {sorted(cards)} named themselves apart and joined")
    def run(scene: Scene) -> None:
        nodes = {card: scene.node(card) for card in cards}
        scene.wait_for(
            lambda: all((n.etc / "hostname").exists() for n in nodes.values()),
            f"every unnamed card writing its /etc/hostname ({sorted(cards)})",
        )
        names = {card: n.current_name() for card, n in nodes.items()}
        for card, name in names.items():
            digits = cards[card].replace(":", "")
            assert name in (f"engine-{digits[-6:]}", f"engine-{digits}"), (card, name)
            hosts = (nodes[card].etc / "hosts").read_text()
            assert f"127.0.1.1\t{name}\n" in hosts, f"{card}'s /etc/hosts: {hosts!r}"
        assert len(set(names.values())) == len(names), f"two cards share a name: {names}"
        scene.saved["self-named"] = names
        own = scene.node(via).status().get("engines", 0)
        expected = {via: own, **{name: engines for name in names.values()}}
        engine_hosts(expected, via=via, why=f"names {names}").run(scene)

    return run


def keeps_name(card: str) -> Step:
    """After a reboot, ``card`` has the name it gave itself the first time."""

    @step(f"{card} keeps the name it gave itself")
    def run(scene: Scene) -> None:
        want = scene.saved["self-named"][card]
        scene.wait_for(
            lambda: scene.node(card).status().get("host") == want,
            f"{card}'s agent running as {want} again",
        )

    return run


NOBODY = 65534


def laptop_connects(engines: int, controller: str = "controller") -> Step:
    """On the client host (on the LAN, not a node), an unprivileged user with only the
    secret file runs ``picluster connect``; then ``ipp.Client(profile="picluster")``
    reaches ``engines`` engines, and the printed JupyterLab address carries the token."""

    @step(f"a laptop runs picluster connect as nobody, then reaches {engines} engines")
    def run(scene: Scene) -> None:
        home = Path(tempfile.mkdtemp(prefix="picluster-laptop-"))
        scene.cleanup.callback(shutil.rmtree, home, True)
        key = scene.secret("cluster")
        secret_mod.write(home / "cluster.secret", key)
        for path in (home, home / "cluster.secret"):
            os.chown(path, NOBODY, NOBODY)
        as_nobody = (
            "setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
            "env", f"HOME={home}", "PYTHONDONTWRITEBYTECODE=1", sys.executable,
        )  # fmt: skip
        host = scene.cluster.client_host
        if host.run(*as_nobody, "-c", "", check=False).returncode != 0:
            # The test's Python lives where nobody may not go (a pyenv under /root):
            # then the laptop is root, which proves less, but no less than before.
            as_nobody = ("env", f"HOME={home}", sys.executable)
            os.chown(home / "cluster.secret", os.geteuid(), os.getegid())
        out = host.run(
            *as_nobody, "-m", "picluster", "connect", "--secret", str(home / "cluster.secret"),
            "--ipython-dir", str(home / "ipython"), check=False,
        )  # fmt: skip
        said = f"picluster connect said:\n{out.stdout}{out.stderr}"
        assert out.returncode == 0, said + scene.cluster.logs()
        address = scene.node(controller).host.address
        token = secret_mod.Keys.derive(key).jupyter_token
        assert f"JupyterLab: http://{address}:8888/lab?token={token}" in out.stdout, said
        made = home / "ipython/profile_picluster/security/ipcontroller-client.json"
        assert stat.S_IMODE(made.stat().st_mode) == 0o600
        dask = home / ".config/dask/picluster.yaml"
        assert f"wrote {dask}" in out.stdout, said
        # Dask from the laptop too: the scheduler in the hub, TLS from the files
        # connect wrote, the dashboard link through the controller's JupyterLab.
        code = (
            "import json, socket, ipyparallel as ipp, dask.array as da\n"
            f"rc = ipp.Client(profile='picluster', ipython_dir={str(home / 'ipython')!r})\n"
            f"rc.wait_for_engines({engines}, timeout={scene.deadline:.0f})\n"
            "hosts = rc[:].apply_sync(socket.gethostname)\n"
            "dc = rc.become_dask()\n"
            "try:\n"
            f"    dc.wait_for_workers({engines}, timeout={scene.deadline:.0f})\n"
            "    total = int(da.arange(1000, chunks=100).sum().compute())\n"
            "    print(json.dumps([hosts, dc.scheduler.address, dc.dashboard_link, total]))\n"
            "finally:\n"
            "    dc.close(); rc.stop_dask()\n"
        )
        ran = host.run(*as_nobody, "-c", code, check=False)
        assert ran.returncode == 0, f"{ran.stdout}{ran.stderr}"
        hosts, scheduler, link, total = json.loads(ran.stdout.splitlines()[-1])
        assert len(hosts) == engines, ran.stdout
        base = ClusterSection().base_port
        assert scheduler == f"tls://{address}:{base + DASK_PORTS['scheduler']}", ran.stdout
        dashboard = base + DASK_PORTS["dashboard"]
        assert link == f"http://{address}:8888/proxy/{dashboard}/status", link
        assert total == 499500, ran.stdout

    return run


def static_controller(config: str, controller: str = "controller") -> Config:
    """``config`` plus ``[cluster] controller = <address of controller>`` (no mDNS needed)."""
    return lambda scene: (
        f'[cluster]\ncontroller = "{scene.node(controller).host.address}"\n' + config
    )


def start(hostname: str) -> Step:
    return Step(f"{hostname}'s agent starts", lambda scene: scene.node(hostname).start())


def power_cut(hostname: str) -> Step:
    """The Pi loses power: SIGKILL everything on the host, no goodbye."""
    return Step(f"{hostname} loses power", lambda scene: scene.node(hostname).kill())


def stop_agent(hostname: str) -> Step:
    """``systemctl stop picluster``: SIGTERM, and the agent must exit cleanly in time."""

    @step(f"{hostname}'s agent is stopped (SIGTERM)")
    def run(scene: Scene) -> None:
        node = scene.node(hostname)
        code = node.stop(deadline=30)
        assert code == 0, f"{hostname}'s agent exited with {code} on SIGTERM{scene.cluster.logs()}"

    return run


def drop_multicast(hostname: str) -> Step:
    """Multicast dropped in and out of the host, as on some Wi-Fi networks."""
    return Step(
        f"multicast is dropped on {hostname}",
        lambda scene: scene.node(hostname).host.block_multicast(),
    )


# A stranger on the LAN, without the secret, subscribes to a port of the
# controller and listens while the cluster works.
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


def stranger_listens(port: int, via: str = "controller", seconds: float = 150) -> Step:
    """A host without the secret subscribes to ``via``'s ``port`` (from the client host)."""

    @step(f"a stranger subscribes to {via}'s port {port}")
    def run(scene: Scene) -> None:
        address = f"tcp://{scene.node(via).host.address}:{port}"
        stranger = subprocess.Popen(
            ["ip", "netns", "exec", scene.cluster.client_host.ns, sys.executable, "-c",
             EAVESDROPPER, address, str(seconds)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        scene.cleanup.callback(_reap, stranger)
        scene.saved["stranger"] = stranger

    return run


def _reap(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.communicate()


def start_map(
    key: str, n_engines: int, tasks: int, started: int = 10, deadline: float = 180
) -> Step:
    """A slow load-balanced map (with retries) that has finished ``started`` chunks."""

    @step(f"a load-balanced map of {tasks} tasks on {n_engines} engines is under way")
    def run(scene: Scene) -> None:
        marker = scene.cluster.workdir / f"{key}-started"
        scene.saved[key] = run_ = scene.start_client(
            wait_for_engines(n_engines, scene.deadline)
            + f"""
def slow_square(x):
    import time
    time.sleep(0.25)
    return x * x
view = rc.load_balanced_view()
view.set_flags(retries=5)
ar = view.map_async(slow_square, range({tasks}), chunksize=2)
while ar.progress < {started}:
    time.sleep(0.05)
Path({str(marker)!r}).write_text(str(ar.progress))
result = ar.get(timeout={deadline + 60:.0f})
""",
            "controller",
        )
        scene.cleanup.callback(_reap, run_.proc)
        scene.wait_for(
            lambda: marker.exists() or run_.proc.poll() is not None,
            f"the load-balanced map reaching {started} finished chunks",
            deadline,
        )
        if not marker.exists():
            run_.result()  # the client died first: fail with its own error
        scene.saved[f"{key} started"] = time.monotonic()

    return run


# -- remembering --------------------------------------------------------------------------

UUIDS = "result = sorted(rc._engines.values())"


def remember_engines(key: str, n: int, via: str = "controller") -> Step:
    """Wait for ``n`` engines and note their uuids (``<host>:<pid>...``) as ``key``."""

    @step(f"{n} engines register and their uuids are noted")
    def run(scene: Scene) -> None:
        scene.saved[key] = scene.client(wait_for_engines(n, scene.deadline) + UUIDS, via)

    return run


def remember_engine_pids(*hostnames: str) -> Step:
    @step(f"the engine processes on {', '.join(hostnames)} are noted")
    def run(scene: Scene) -> None:
        pids = {h: scene.node(h).host.pids("picluster.ipengine") for h in hostnames}
        assert all(pids.values()), f"no engine process found on some host: {pids}"
        scene.saved["engine pids"] = pids

    return run


# -- expectations: engines and work ---------------------------------------------------------


def engine_hosts(hosts: Mapping[str, int], via: str = "controller", why: str = "") -> Step:
    """Exactly these engines (hostname -> count) answer through controller ``via``."""
    return each_controller_sees({via: hosts}, settle=0, why=why)


def each_controller_sees(
    hosts: Mapping[str, Mapping[str, int]], settle: float = 3, why: str = ""
) -> Step:
    """Every controller in ``hosts`` sees exactly its engines, also after ``settle``
    seconds: the pause lets a stray engine arrive, because we assert it did NOT."""

    @step("the engines by host are " + "; ".join(f"{v}: {dict(h)}" for v, h in hosts.items()))
    def run(scene: Scene) -> None:
        pause = f"time.sleep({settle})  # let any stray engine arrive\n" if settle else ""
        runs = {
            via: scene.start_client(
                wait_for_engines(sum(expected.values()), scene.deadline)
                + pause
                + 'result = sorted(rc[:].apply_sync(__import__("socket").gethostname))',
                via,
            )
            for via, expected in hosts.items()
        }
        for r in runs.values():
            scene.cleanup.callback(_reap, r.proc)
        for via, expected in hosts.items():
            got = runs[via].result(scene.deadline + 60 + settle)
            assert got == spread(expected), f"{why}\nthrough {via}: {got}".lstrip()

    return run


def same_engines_as(key: str, n: int, except_on: str, via: str = "controller") -> Step:
    """The ``n`` engines are back with the uuids noted as ``key`` (new processes would
    have new uuids); engines on ``except_on`` died with it and may be new."""

    @step(f"the engines noted as {key!r} are back, except {except_on}'s")
    def run(scene: Scene) -> None:
        after = scene.client(wait_for_engines(n, scene.deadline) + UUIDS, via)
        own = f":{except_on}:"
        remote_before = [u for u in scene.saved[key] if own not in u]
        remote_after = [u for u in after if own not in u]
        assert remote_after == remote_before, (
            f"the restarted controller should have restored the other hosts' engines, "
            f"not new ones: before {remote_before}, after {remote_after}"
        )

    return run


def engine_pids_unchanged() -> Step:
    @step("no engine host restarted its engines")
    def run(scene: Scene) -> None:
        for hostname, pids in scene.saved["engine pids"].items():
            now = scene.node(hostname).host.pids("picluster.ipengine")
            assert now == pids, f"{hostname} restarted its engines ({pids} -> {now})"

    return run


def hello_world(n: int, via: str = "controller") -> Step:
    @step(f"all {n} engines say Hello World")
    def run(scene: Scene) -> None:
        code = (
            wait_for_engines(n, scene.deadline) + "result = rc[:].apply_sync(lambda: 'Hello World')"
        )
        assert scene.client(code, via) == ["Hello World"] * n

    return run


def scatter_gather(n_items: int, n: int, via: str = "controller") -> Step:
    @step(f"{n_items} numbers scattered to {n} engines gather back in order")
    def run(scene: Scene) -> None:
        code = wait_for_engines(n, scene.deadline) + (
            f"dv = rc[:]\ndv.scatter('x', [10**i for i in range({n_items})], block=True)\n"
            "result = dv.gather('x', block=True)"
        )
        assert scene.client(code, via) == [10**i for i in range(n_items)]

    return run


def load_balanced_map(n_tasks: int, n: int, via: str = "controller") -> Step:
    @step(f"a load-balanced map of {n_tasks} squares on {n} engines")
    def run(scene: Scene) -> None:
        code = wait_for_engines(n, scene.deadline) + (
            "lview = rc.load_balanced_view()\n"
            f"result = lview.map(lambda v: v * v, range({n_tasks}), chunksize=10, block=True)"
        )
        assert scene.client(code, via) == [v * v for v in range(n_tasks)]

    return run


def map_completes(key: str, tasks: int, deadline: float = 300) -> Step:
    """The map started by ``start_map(key)`` returns every result, in order."""

    @step(f"the map {key!r} returns all {tasks} results")
    def run(scene: Scene) -> None:
        squares = scene.saved[key].result(timeout=deadline)
        assert squares == [x * x for x in range(tasks)], "the map lost or corrupted results"
        took = time.monotonic() - scene.saved[f"{key} started"]
        print(f"map {key!r} finished {took:.1f} s after it reached its fault")

    return run


def engine_output_reaches_client(n: int, text: str, via: str = "controller") -> Step:
    """The legitimate client sees what ``n`` engines print."""

    @step(f"the client sees {text!r} printed by {n} engines")
    def run(scene: Scene) -> None:
        code = wait_for_engines(n, scene.deadline) + (
            f"ar = rc[:].apply_async(lambda: print({text!r}, flush=True))\n"
            "ar.get(timeout=60)\nar.wait_for_output(timeout=30)\n"
            "result = [s.strip() for s in ar.stdout]"
        )
        printed = scene.client(code, via)
        assert printed == [text] * n, "the legitimate client must see the output"

    return run


def stranger_heard_nothing() -> Step:
    @step("the stranger read nothing of the cluster's traffic")
    def run(scene: Scene) -> None:
        stranger = scene.saved["stranger"]
        stranger.terminate()
        out, err = stranger.communicate(timeout=30)
        assert out.startswith(("HEARD", "NOTHING")), f"the eavesdropper did not report: {err}"
        assert "HEARD" not in out, f"a stranger read engine output off the LAN: {out}"

    return run


# -- expectations: a node's state, processes, logs and files ------------------------------


def status_is(hostname: str, state: str, why: str = "") -> Step:
    """The agent's status file says ``state`` (within the scenario's deadline)."""

    @step(f"{hostname} reports {state}")
    def run(scene: Scene) -> None:
        node = scene.node(hostname)
        scene.wait_for(
            lambda: node.status().get("state") == state,
            f"{hostname}{f' ({why})' if why else ''} reporting {state}",
        )

    return run


def no_process(hostname: str, cmdline_part: str, why: str) -> Step:
    @step(f"no {cmdline_part} runs on {hostname}")
    def run(scene: Scene) -> None:
        assert not scene.node(hostname).host.pids(cmdline_part), why

    return run


def log_says(hostname: str, text: str) -> Step:
    @step(f"{hostname}'s agent log says {text!r}")
    def run(scene: Scene) -> None:
        log = scene.node(hostname).log.read_text()
        assert text in log, log

    return run


def log_matches(hostname: str, pattern: str) -> Step:
    @step(f"{hostname}'s agent log matches {pattern!r}")
    def run(scene: Scene) -> None:
        log = scene.node(hostname).log.read_text()
        assert re.search(pattern, log), log

    return run


def no_secret_in_log(hostname: str) -> Step:
    @step(f"no secret appears in {hostname}'s agent log")
    def run(scene: Scene) -> None:
        _assert_no_secret(scene, scene.node(hostname).log.read_text())

    return run


def _assert_no_secret(scene: Scene, text: str) -> None:
    for name, key in scene.secrets.items():
        assert secret_mod.encode(key).strip() not in text, f"the {name!r} secret leaked"


def status_cli_reports(on: str, about: str, problem: str, exit_code: int | None = None) -> Step:
    """``picluster status --json`` run as root on ``on`` lists ``problem`` for host
    ``about``, exits ``exit_code`` (when given), and prints no secret."""

    @step(f"`picluster status` on {on} reports {problem!r} for {about}")
    def run(scene: Scene) -> None:
        status = scene.node(on).cli("status", "--json", check=False)
        row = next(h for h in json.loads(status.stdout)["hosts"] if h["host"] == about)
        assert any(problem in p for p in row["problems"]), row
        if exit_code is not None:
            assert status.returncode == exit_code, (
                f"status must exit {exit_code} when there is a problem, not {status.returncode}"
            )
        _assert_no_secret(scene, status.stdout)

    return run


def agent_exits(hostname: str, code: int, meaning: str) -> Step:
    @step(f"{hostname}'s agent exits with {code} ({meaning})")
    def run(scene: Scene) -> None:
        node = scene.node(hostname)
        assert node.proc is not None
        scene.wait_for(lambda: node.proc.poll() is not None, f"{hostname}'s agent exiting")
        got = node.proc.returncode
        assert got == code, f"agent exit status {got}, expected {code} ({meaning})\n{node.tail()}"

    return run


def nothing_left_running(hostname: str) -> Step:
    @step(f"no process is left on {hostname}")
    def run(scene: Scene) -> None:
        left = pids_in(scene.node(hostname).host.ns)
        assert left == [], f"processes were left running on {hostname}: {left}"

    return run


def no_engine_state(hostname: str) -> Step:
    @step(f"{hostname} created no engine state")
    def run(scene: Scene) -> None:
        assert not (scene.node(hostname).state_dir / "ipython").exists(), "engine state was created"

    return run


def client_file_connects(hostname: str, n: int) -> Step:
    """``picluster client-file`` (the unit's root ExecStartPre) lets the first user call
    ``ipp.Client()`` with no arguments on ``hostname``, and reach ``n`` engines."""

    @step(f"`ipp.Client()` with no arguments on {hostname} reaches {n} engines")
    def run(scene: Scene) -> None:
        node = scene.node(hostname)
        ipython_dir = scene.cluster.workdir / "home" / ".ipython"
        out = node.cli("client-file", "--user", "root", "--ipython-dir", str(ipython_dir))
        client_file = ipython_dir / "profile_default" / "security" / "ipcontroller-client.json"
        assert str(client_file) in out.stdout
        assert stat.S_IMODE(client_file.stat().st_mode) == 0o600
        code = (
            "import ipyparallel as ipp; rc = ipp.Client(); "
            f"rc.wait_for_engines({n}, timeout={scene.deadline:.0f}); "
            "print(rc[:].apply_sync(lambda: 'Hello World'))"
        )
        env_run = node.host.run("env", f"IPYTHONDIR={ipython_dir}", sys.executable, "-c", code)
        assert env_run.stdout.strip() == repr(["Hello World"] * n)

    return run


# -- healing (issue 14): address changes, ghosts, the doctor ---------------------------------


def readdress(hostname: str, last_octet: int) -> Step:
    """A DHCP renewal gives ``hostname`` another address: the new one is added, the
    old one removed (``ip addr`` in its namespace); the moment is noted."""

    @step(f"{hostname}'s address changes to .{last_octet}")
    def run(scene: Scene) -> None:
        host = scene.node(hostname).host
        new = host.address.rsplit(".", 1)[0] + f".{last_octet}"
        # Keep the new address when the old (primary) one goes, as NetworkManager does.
        host.run("sysctl", "-qw", "net.ipv4.conf.eth0.promote_secondaries=1")
        host.run("ip", "addr", "add", f"{new}/24", "dev", "eth0")
        host.run("ip", "addr", "del", f"{host.address}/24", "dev", "eth0")
        host.address = new
        scene.saved[f"{hostname} readdressed"] = time.time()

    return run


def restart_agent(hostname: str) -> Step:
    """``hostname``'s agent starts (again); the moment is noted."""

    @step(f"{hostname}'s agent starts again")
    def run(scene: Scene) -> None:
        scene.node(hostname).start()
        scene.saved[f"{hostname} started"] = time.time()

    return run


def engines_started_long_before(hostname: str, seconds: float) -> Step:
    """The engine hosts' agents have been up ``seconds`` when ``hostname`` boots.

    The wait is the fault itself (time passing without a controller), not a way
    to let something finish."""

    @step(f"{seconds:.0f} s pass before {hostname} starts")
    def run(scene: Scene) -> None:
        time.sleep(seconds)
        scene.node(hostname).start()
        scene.saved[f"{hostname} started"] = time.time()

    return run


ENGINES_BACK = """
import socket, time
t0, deadline, want = {t0!r}, {deadline!r}, {want!r}
got = None
while time.time() - t0 < deadline:
    ids = rc.ids
    if len(ids) == len(want):
        ar = rc[ids].apply_async(socket.gethostname)
        try:
            got = sorted(ar.get(timeout=max(0.5, deadline - (time.time() - t0))))
        except Exception as exc:
            got = repr(exc)
        if got == want:
            break
    time.sleep(0.05)
took = time.time() - t0
result = {{"took": took, "got": got if isinstance(got, list) else [got], "ids": rc.ids}}
"""


def engines_back(hosts: Mapping[str, int], within: float, since: str, via: str = "controller"):
    """Exactly these engines answer through ``via`` at most ``within`` seconds after
    the moment noted as ``since`` (an address change, an agent start)."""

    @step(f"the engines {dict(hosts)} answer within {within:.0f} s of {since}")
    def run(scene: Scene) -> None:
        t0 = scene.saved[since]
        code = ENGINES_BACK.format(t0=t0, deadline=within, want=spread(hosts))
        out = scene.client(code, via, timeout=within + 90)
        print(f"engines back {out['took']:.1f} s after {since}")
        assert out["got"] == spread(hosts) and out["took"] <= within, (
            f"within {within:.0f} s of {since} the engines {spread(hosts)} did not all answer "
            f"(after {out['took']:.1f} s: {out['got']}, ids {out['ids']}){scene.cluster.logs()}"
        )

    return run


def remember_engine_ids(key: str, hostname: str, n: int, via: str = "controller") -> Step:
    """Wait for ``n`` engines in all and note the ids of ``hostname``'s as ``key``."""

    @step(f"the engine ids of {hostname} are noted")
    def run(scene: Scene) -> None:
        code = wait_for_engines(n, scene.deadline) + (
            f"result = sorted(int(i) for i, u in rc._engines.items() if ':{hostname}:' in u)"
        )
        scene.saved[key] = ids = scene.client(code, via)
        assert ids, f"{hostname} had no engine registered"

    return run


GHOSTS_GONE = """
import time
t0, deadline, old = {t0!r}, {deadline!r}, set({old!r})
while old & set(rc.ids) and time.time() - t0 < deadline:
    time.sleep(0.05)
result = {{"took": time.time() - t0, "left": sorted(old & set(rc.ids))}}
"""


def ghosts_gone(key: str, within: float, since: str, via: str = "controller") -> Step:
    """None of the engine ids noted as ``key`` is listed ``within`` s after ``since``."""

    @step(f"the engine ids noted as {key!r} are gone within {within:.0f} s of {since}")
    def run(scene: Scene) -> None:
        code = GHOSTS_GONE.format(t0=scene.saved[since], deadline=within, old=scene.saved[key])
        out = scene.client(code, via, timeout=within + 90)
        print(f"ghosts gone {out['took']:.1f} s after {since}")
        assert not out["left"], (
            f"engines {out['left']} of a host that is gone were still listed {within:.0f} s "
            f"after {since}{scene.cluster.logs()}"
        )

    return run


def map_without_retries(n_tasks: int, n: int, deadline: float = 120, via: str = "controller"):
    """A load-balanced map with no retries: one task sent to a ghost never comes back."""

    @step(f"a load-balanced map of {n_tasks} tasks without retries on {n} engines completes")
    def run(scene: Scene) -> None:
        code = wait_for_engines(n, scene.deadline) + (
            "view = rc.load_balanced_view()\nview.set_flags(retries=0)\n"
            f"ar = view.map_async(lambda v: v * v, range({n_tasks}))\n"
            f"try:\n    result = ar.get(timeout={deadline:.0f})\n"
            "except Exception as exc:\n"
            "    result = f'{ar.progress}/' + str(len(ar)) + f' done, then {exc!r}'\n"
        )
        got = scene.client(code, via, timeout=scene.deadline + deadline + 60)
        assert got == [v * v for v in range(n_tasks)], (
            f"the map did not complete: {got if isinstance(got, str) else 'wrong results'}"
            f"{scene.cluster.logs()}"
        )

    return run


def doctor_fails_with(hostname: str, *fixes: str) -> Step:
    """``picluster doctor`` on ``hostname`` exits 1 and its report names every fix."""

    @step(f"`picluster doctor` on {hostname} fails and names {', '.join(map(repr, fixes))}")
    def run(scene: Scene) -> None:
        node = scene.node(hostname)
        # As on the card: its hostname, its state dir, and a terminal wide enough
        # that the report's lines are not folded.
        out = node.host.run(
            "env", f"PICLUSTER_HOSTNAME={hostname}", "COLUMNS=1000",
            sys.executable, "-m", "picluster", "doctor", "--config", str(node.config),
            "--secret", str(node.secret), "--state-dir", str(node.state_dir), check=False,
        )  # fmt: skip
        text = " ".join((out.stdout + out.stderr).split())
        assert out.returncode == 1, f"doctor exited {out.returncode}:\n{out.stdout}{out.stderr}"
        for fix in fixes:
            assert fix in text, f"doctor's report does not name {fix!r}:\n{out.stdout}"
        assert "Traceback" not in out.stderr, out.stderr

    return run


def no_agent_traceback(hostname: str, why: str) -> Step:
    """The agent itself logged no traceback (its children's output is prefixed)."""

    @step(f"{hostname}'s agent logged no traceback")
    def run(scene: Scene) -> None:
        log = scene.node(hostname).log.read_text()
        assert "\nTraceback (most recent call last):" not in log, f"{why}:\n{log[-3000:]}"

    return run


# -- authenticated records (issue 14): a stranger announcing on the LAN ----------------------

# A host without the secret publishes mDNS records with python-zeroconf, as anyone on
# the LAN can. ``copy`` first reads a real record and republishes its TXT (public)
# under the stranger's own address. Registered as cooperating responders: a stranger
# does not probe or yield a name another host owns.
STRANGER_RECORDS = r"""
import json, signal, sys, time
from zeroconf import InterfaceChoice, IPVersion, ServiceInfo, Zeroconf
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
spec, address = json.loads(sys.argv[1]), sys.argv[2]
zc = Zeroconf(interfaces=InterfaceChoice.All, ip_version=IPVersion.V4Only)

def copy_of(type_, name):
    end = time.monotonic() + 60
    while time.monotonic() < end:
        info = zc.get_service_info(type_, name, timeout=3000)
        if info is not None and info.properties:
            return {k.decode(): (v or b"").decode() for k, v in info.properties.items()}
    sys.exit(f"within 60 s: could not resolve {name} to copy it")

try:
    for r in spec:
        props = (copy_of(r["type"], r["copy"]) if r.get("copy") else {}) | r.get("props", {})
        zc.register_service(
            ServiceInfo(r["type"], r["name"], port=r.get("port", 47000), properties=props,
                        server="stranger.picluster.local.", parsed_addresses=[address]),
            cooperating_responders=True, strict=False,
        )
    print("ANNOUNCED", flush=True)
    signal.pause()
finally:
    zc.close()
"""

CONTROLLER_NAME = "picluster._ipyparallel._tcp.local."
"""The controller record's name for the default cluster name."""


def stranger_announces(what: str, *records: dict[str, Any], deadline: float = 90) -> Step:
    """A stranger on the LAN (the client host, no secret) announces ``records``: dicts
    with ``type``, ``name``, ``props`` and optionally ``copy`` (the name of a real
    record whose TXT to copy first) and ``port``. Its address is saved as "stranger"."""

    @step(f"a stranger on the LAN announces {what}")
    def run(scene: Scene) -> None:
        host = scene.cluster.client_host
        proc = subprocess.Popen(
            ["ip", "netns", "exec", host.ns, sys.executable, "-c", STRANGER_RECORDS,
             json.dumps(list(records)), host.address],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        scene.cleanup.callback(_reap, proc)
        scene.saved["stranger"] = host.address
        assert proc.stdout is not None
        line = proc.stdout.readline()  # "ANNOUNCED", or EOF if it failed
        if "ANNOUNCED" not in line:
            _reap(proc)
            raise AssertionError(f"the stranger could not announce {what}: {proc.stderr.read()}")

    return run


def status_cli_problem(
    on: str, problem: str, exit_code: int = 1, hosts: Sequence[str] = ()
) -> Step:
    """``picluster status --json`` on ``on`` lists ``problem`` (``{stranger}`` is the
    stranger's address) among the cluster's problems and exactly ``hosts`` as hosts
    (when given); ``picluster status`` (the table) exits the same, without a traceback."""

    @step(f"`picluster status` on {on} reports {problem!r}")
    def run(scene: Scene) -> None:
        wanted = problem.format(stranger=scene.saved.get("stranger", "?"))
        node = scene.node(on)
        got = node.cli("status", "--json", check=False)
        view = json.loads(got.stdout)
        assert any(wanted in p for p in view["problems"]), (wanted, view["problems"])
        if hosts:
            assert sorted(h["host"] for h in view["hosts"]) == sorted(hosts), view["hosts"]
        assert got.returncode == exit_code, f"status exited {got.returncode}, not {exit_code}"
        table = node.cli("status", check=False)
        assert "Traceback" not in table.stderr, table.stderr
        assert table.returncode == exit_code and wanted in " ".join(table.stdout.split()), (
            table.stdout
        )
        _assert_no_secret(scene, got.stdout + table.stdout)

    return run


def hostfile_lists(hosts: Mapping[str, int], via: str = "controller") -> Step:
    """``picluster hostfile`` on ``via`` (issue 16) lists exactly ``hosts`` (hostname ->
    engines), the controller first, one line each: with ``--slots engines`` their
    engines, by default their cores (this machine's, every agent runs here), and with
    ``--address`` their addresses. A stranger's node record is never a line."""

    @step(f"`picluster hostfile` on {via} lists {dict(hosts)} and nothing else")
    def run(scene: Scene) -> None:
        order = sorted(hosts, key=lambda h: (h != "controller", h))
        node = scene.node(via)
        got = node.cli("hostfile", "--slots", "engines", check=False)
        assert got.returncode == 0, got.stderr
        assert got.stdout.splitlines() == [f"{h}.local slots={hosts[h]}" for h in order], got
        got = node.cli("hostfile", "--address", check=False)
        cores = os.cpu_count()
        wanted = [f"{scene.node(h).host.address} slots={cores}" for h in order]
        assert got.returncode == 0 and got.stdout.splitlines() == wanted, got
        _assert_no_secret(scene, got.stdout + got.stderr)

    return run


def log_says_stranger(hostname: str) -> Step:
    """The agent's log says, once, that the stranger's record was ignored."""

    @step(f"{hostname}'s agent log reports the stranger's record once")
    def run(scene: Scene) -> None:
        text = f"unauthenticated record from {scene.saved['stranger']}"
        node = scene.node(hostname)
        scene.wait_for(lambda: text in node.log.read_text(), f"{hostname} logging {text!r}", 30)
        log = node.log.read_text()
        names = re.findall(re.escape(text) + r" \((\w+ '[^']*')", log)
        assert len(names) == len(set(names)), f"reported more than once:\n{log[-3000:]}"

    return run


def status_flags_ghost(on: str, lost: str) -> Step:
    """``picluster status --json`` as root on ``on``: a row for ``lost`` flagged as a
    ghost, and the rows' registered engines add up to the total it prints."""

    @step(f"`picluster status` on {on} flags {lost}'s engines as ghosts and adds up")
    def run(scene: Scene) -> None:
        node = scene.node(on)
        out = node.host.run(
            "env", f"PICLUSTER_HOSTNAME={on}", sys.executable, "-m", "picluster", "status",
            "--json", "--config", str(node.config), "--secret", str(node.secret), check=False,
        )  # fmt: skip
        view = json.loads(out.stdout)
        rows = {h["host"]: h for h in view["hosts"]}
        assert lost in rows and any("ghost" in p for p in rows[lost]["problems"]), view
        total = sum(h["registered"] or 0 for h in view["hosts"])
        assert view["registered_total"] == total, f"rows add up to {total}: {view}"
        assert out.returncode == 1, "status must exit 1 when it flags a problem"

    return run
