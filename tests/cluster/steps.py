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
import re
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from picluster import secret as secret_mod
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
        scene.saved["engine pids"] = {
            h: scene.node(h).host.pids("ipyparallel.engine") for h in hostnames
        }

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
            now = scene.node(hostname).host.pids("ipyparallel.engine")
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
