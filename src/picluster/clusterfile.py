"""Make the systemd-run cluster visible to ipyparallel's own tools.

ipyparallel finds clusters through ``cluster-<id>.json`` files in a profile's
``security`` directory: the JupyterLab Clusters panel lists them and
``ipp.Cluster.from_file()`` loads one. Those files normally describe processes
that ipyparallel itself launched (a pid to signal, log files to read). Ours are
launched by ``picluster-agent.service`` as another user, possibly on other Pis,
so the file names launcher classes defined here: they report the cluster as
running, count its engines by asking the controller, and refuse start/stop with
a message that names the systemd unit instead of signalling a pid they do not own.

The cluster id is "" (what ``ipcluster start`` uses), so the file is
``cluster-.json`` and ``ipp.Cluster.from_file()`` finds it with no arguments.
"""

from __future__ import annotations

import contextlib
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

from ipyparallel.cluster.launcher import BaseLauncher, ControllerLauncher, EngineLauncher
from traitlets import Unicode

from picluster.errors import PiclusterError
from picluster.files import atomic_write_text

CLUSTER_ID = ""
CLIENT_FILE = "ipcontroller-client.json"
AGENT_UNIT = "picluster-agent.service"

_MANAGED = (
    "this cluster is run by {unit} on the controller, not by JupyterLab: "
    "it starts at boot and heals by itself. To restart it: sudo systemctl restart {unit}; "
    "to add engines: power on more Pis (or set [engines] in /etc/picluster/cluster.toml)."
)


def security_dir(ipython_dir: Path) -> Path:
    return ipython_dir / "profile_default" / "security"


def cluster_file(ipython_dir: Path) -> Path:
    return security_dir(ipython_dir) / f"cluster-{CLUSTER_ID}.json"


class ManagedByAgent(PiclusterError, RuntimeError):
    """Start/stop was asked of a cluster that systemd runs."""


class _Managed(BaseLauncher):
    """Shared behaviour: always running while the file exists, never signalled."""

    unit = Unicode(AGENT_UNIT).tag(to_dict=True)

    def _refuse(self) -> None:
        raise ManagedByAgent(_MANAGED.format(unit=self.unit))

    async def start(self, *args: Any, **kwargs: Any) -> None:
        self._refuse()

    async def stop(self) -> None:
        self._refuse()

    def signal(self, sig: int | str) -> None:
        self._refuse()

    def poll(self) -> None:
        return None  # never "exited": the agent restarts it

    def get_output(self, remove: bool = False) -> str:
        return f"see: journalctl -u {self.unit}"


class AgentControllerLauncher(_Managed, ControllerLauncher):  # type: ignore[misc]
    """The ipcontroller that ``picluster agent`` runs on the controller."""

    # ipyparallel serialises a launcher class that has no entry point as
    # "module:Class", which its own loader cannot import: name it ourselves.
    entrypoint_name = "picluster.clusterfile.AgentControllerLauncher"

    state = Unicode("running").tag(to_dict=True)

    async def get_connection_info(self, timeout: float | None = None) -> dict[str, Any]:
        # ``Cluster.connect_client`` needs only the client dict, which
        # ``picluster jupyter`` wrote for this user; no engine file exists here.
        path = Path(self.profile_dir) / "security" / CLIENT_FILE
        info = json.loads(path.read_text())
        return {"client": info, "engine": info}


class EngineCounter:
    """The number of registered engines, kept current by a background thread.

    The hub has no quiet query for it: ``queue_request`` also counts engines
    that died (the hub never forgets an id) and ``connection_request`` logs a
    line in the controller's journal per call, while the Clusters panel asks
    every 5 s. So one ``ipp.Client`` follows the hub's (un)registration
    notifications; it is renewed every few minutes so that a restarted
    controller cannot leave it stale for long. Runs only inside the Jupyter
    server, never in kernels that load the cluster file.
    """

    INTERVAL = 2.0
    RENEW = 300.0
    CONNECT_TIMEOUT = 10.0

    def __init__(self, client_file: Path) -> None:
        self.client_file = client_file
        self.count: int | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="picluster-engine-count", daemon=True
            )
            self._thread.start()

    def _run(self) -> None:
        import ipyparallel as ipp

        while True:
            try:
                client = ipp.Client(str(self.client_file), timeout=self.CONNECT_TIMEOUT)
            except Exception:  # controller away or file missing: try again later
                self.count = None
                time.sleep(self.INTERVAL * 5)
                continue
            try:
                renew_at = time.monotonic() + self.RENEW
                while time.monotonic() < renew_at:
                    self.count = len(client.ids)  # processes pending notifications
                    time.sleep(self.INTERVAL)
            except Exception:
                self.count = None
            finally:
                with contextlib.suppress(Exception):
                    client.close()


_counters: dict[Path, EngineCounter] = {}


def in_jupyter_server() -> bool:
    if "jupyter_server.serverapp" not in sys.modules:
        return False
    from jupyter_server.serverapp import ServerApp

    return ServerApp.initialized()


class AgentEngineSetLauncher(_Managed, EngineLauncher):  # type: ignore[misc]
    """All engines of the cluster, on every Pi; ``n`` is counted live."""

    entrypoint_name = "picluster.clusterfile.AgentEngineSetLauncher"

    state = Unicode("running").tag(to_dict=True)

    def _live_count(self) -> int:
        if in_jupyter_server():
            path = Path(self.profile_dir) / "security" / CLIENT_FILE
            counter = _counters.setdefault(path, EngineCounter(path))
            counter.start()
            if counter.count is not None:
                self.n = counter.count
        return self.n

    def to_dict(self) -> dict[str, Any]:
        # The Clusters panel builds its listing from to_dict(): count here.
        self._live_count()
        return super().to_dict()


def cluster_dict(ipython_dir: Path) -> dict[str, Any]:
    """Our cluster as ``Cluster.to_dict()`` serialises it: built by ipyparallel
    itself, so the file keeps matching what its ``from_dict`` expects."""
    from ipyparallel import Cluster

    profile_dir = str((ipython_dir / "profile_default").absolute())
    cluster = Cluster(
        cluster_id=CLUSTER_ID,
        profile_dir=profile_dir,
        controller_launcher_class=AgentControllerLauncher,
        engine_launcher_class=AgentEngineSetLauncher,
        shutdown_atexit=False,
        cluster_file="",  # we write the file ourselves, atomically
    )
    common = {"parent": cluster, "profile_dir": profile_dir, "cluster_id": CLUSTER_ID}
    cluster.controller = AgentControllerLauncher(**common)
    cluster.engines["agents"] = AgentEngineSetLauncher(engine_set_id="agents", n=0, **common)
    return cluster.to_dict()


def write(ipython_dir: Path) -> Path:
    """Write ``cluster-.json`` (0600: it sits next to the client key)."""
    path = cluster_file(ipython_dir)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(cluster_dict(ipython_dir)) + "\n", mode=0o600)
    return path
