"""The controller side: ipcontroller on fixed ports with a persistent profile.

The profile survives restarts so that ``restore_engines`` brings back every
engine that is still heartbeating (DESIGN.md, "Healing"); the instance id
lives inside the profile, so losing the profile is exactly what changes it and
tells the engine hosts to restart their engines.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import sys
import time
from pathlib import Path

from picluster import dasktls
from picluster.config import PORTS_USED, Config
from picluster.connection import ports_argument
from picluster.engines import host_of, port_answers
from picluster.files import atomic_write_text
from picluster.paths import Paths
from picluster.process import Child
from picluster.secret import Keys

log = logging.getLogger(__name__)

INSTANCE_FILE = "picluster-instance"
CONNECTION_FILES = ("ipcontroller-engine.json", "ipcontroller-client.json")
ENGINE_STATE = "engines.json"
HEARTBEAT_MS = 500
REGISTRATION_TIMEOUT_S = 300
HEARTBEAT_MISSES = 60


def instance_id(profile_dir: Path) -> str:
    """The controller instance id, created with the profile and lost with it."""
    path = profile_dir / INSTANCE_FILE
    try:
        value = path.read_text().strip()
        if value:
            return value
    except FileNotFoundError:
        pass
    value = secrets.token_hex(6)
    atomic_write_text(path, value + "\n")
    return value


def controller_env(keys: Keys, config: Config, paths: Paths) -> dict[str, str]:
    # Nothing ipyparallel reads from the environment may leak in from our own.
    env = {k: v for k, v in os.environ.items() if not k.startswith("IPP_")}
    env["IPYTHONDIR"] = str(paths.ipython_dir)
    env.update(dasktls.environment(paths.dask_tls_dir))  # become_dask's scheduler
    if config.cluster.curve:
        pair = keys.curve()
        env["IPP_ENABLE_CURVE"] = "1"
        env["IPP_CURVE_SECRETKEY"] = pair.server_secret.decode("ascii")
        env["IPP_CURVE_PUBLICKEY"] = pair.server_public.decode("ascii")
    else:
        # The key goes by environment, never on a command line (ps shows those).
        env["IPP_SESSION_KEY"] = keys.ipp_key
    return env


def controller_argv(config: Config, paths: Paths) -> list[str]:
    return [
        sys.executable,
        "-m",
        "picluster.ipcontroller",  # ipcontroller whose restored engines must beat
        f"--profile-dir={paths.profile_dir}",
        f"--ip={config.controller.listen}",
        f"--ports={ports_argument(config.cluster.base_port)}",
        # Not --restore: that also reuses old connection files, whose key and
        # ports may be stale after a secret or config change. Engine state is
        # what has to survive; the files are rebuilt from config every start.
        "--IPController.restore_engines=True",
        "--IPController.reuse_files=False",
        # The hub lists a new engine one or two heartbeat ticks after it
        # registers: 0.5 s ticks instead of 3 s make a joining Pi usable in about
        # a second. 60 misses keep the time to declare an engine dead at
        # ipyparallel's default 30 s: 10 s (20 misses) declared every engine of
        # a busy emulated cluster dead in the QEMU boot test, and a loaded Pi 3
        # on Wi-Fi stalls as long. The cost is a few bytes per engine per tick.
        f"--HeartMonitor.period={HEARTBEAT_MS}",
        f"--HeartMonitor.max_heartmonitor_misses={HEARTBEAT_MISSES}",
        # A registering engine must send its first heartbeat within this time
        # or the hub purges it and then ignores its heart for good. ipyparallel's
        # 30 s is too short for a busy Pi 3 (or an emulated one: 32 s seen in
        # the QEMU boot test); waiting longer costs nothing.
        f"--IPController.registration_timeout={REGISTRATION_TIMEOUT_S}",
    ]


def prune_own_engines(profile_dir: Path, host: str) -> list[str]:
    """Forget this host's engines in the saved engine state.

    ``restore_engines`` re-creates every saved engine; ``picluster.ipcontroller``
    lists one only from its first heartbeat and purges it after a grace period.
    Engines on the controller's own host certainly died with it (same process
    tree): they are not even given the grace period.
    """
    state_file = profile_dir / "log" / ENGINE_STATE
    try:
        state = json.loads(state_file.read_text())
    except (OSError, ValueError):
        return []
    engines = state.get("engines", {})
    mine = [eid for eid, uuid in engines.items() if host_of(uuid) == host]
    if mine:
        for eid in mine:
            del engines[eid]
        atomic_write_text(state_file, json.dumps(state), mode=0o600)
    return mine


RESERVED_PORTS = Path("/proc/sys/net/ipv4/ip_local_reserved_ports")


def reserve_ports(base_port: int, sysctl: Path = RESERVED_PORTS) -> str:
    """Keep the cluster's ports out of the kernel's ephemeral range (32768-60999 holds
    the default range): otherwise any outgoing connection, even the agent's own probe
    of the registration port, may hold one as its local port when ipcontroller's
    heart monitor binds it ("Address already in use"). Other reservations are kept.
    Returns the new setting. Needs root (``picluster reserve-ports``, the unit's
    ExecStartPre)."""
    span = f"{base_port}-{base_port + PORTS_USED - 1}"
    current = [item for item in sysctl.read_text().strip().split(",") if item]
    if span not in current:
        sysctl.write_text(",".join([*current, span]) + "\n")
    return sysctl.read_text().strip()


def prepare_profile(paths: Paths, host: str) -> None:
    security = paths.profile_dir / "security"
    security.mkdir(parents=True, exist_ok=True, mode=0o700)
    paths.ipython_dir.mkdir(parents=True, exist_ok=True)
    for name in CONNECTION_FILES:
        (security / name).unlink(missing_ok=True)
    pruned = prune_own_engines(paths.profile_dir, host)
    if pruned:
        log.info("not restoring engine(s) %s: they ran on this host and died with it", pruned)


async def wait_listening(host: str, port: int, deadline: float) -> bool:
    while time.monotonic() < deadline:
        if await port_answers(host, port):
            return True
        await asyncio.sleep(0.2)
    return False


class ControllerProcess:
    def __init__(self, config: Config, keys: Keys, paths: Paths, host: str) -> None:
        self.host = host
        self.config = config
        self.keys = keys
        self.paths = paths
        self.child: Child | None = None

    async def start(self, ready_timeout: float = 300.0) -> None:
        """Start ipcontroller and return once its registration port answers."""
        prepare_profile(self.paths, self.host)
        self.child = Child(
            "ipcontroller",
            controller_argv(self.config, self.paths),
            controller_env(self.keys, self.config, self.paths),
        )
        await self.child.start()
        listen = self.config.controller.listen
        probe = "127.0.0.1" if listen == "0.0.0.0" else listen
        deadline = time.monotonic() + ready_timeout
        waiter = asyncio.ensure_future(
            wait_listening(probe, self.config.cluster.base_port, deadline)
        )
        exited = asyncio.ensure_future(self.child.wait())
        done, _ = await asyncio.wait({waiter, exited}, return_when=asyncio.FIRST_COMPLETED)
        if exited in done:
            waiter.cancel()
            raise RuntimeError(
                f"ipcontroller exited with status {exited.result()} before listening on "
                f"port {self.config.cluster.base_port} (see the lines above; is another "
                "program using that port range? Fix: [cluster] base_port)"
            )
        exited.cancel()
        if not waiter.result():
            await self.child.stop()
            raise RuntimeError(
                f"ipcontroller did not listen on {probe}:{self.config.cluster.base_port} "
                f"within {ready_timeout:.0f} s"
            )
        log.info(
            "ipcontroller listening on ports %s", ports_argument(self.config.cluster.base_port)
        )

    async def wait(self) -> int:
        assert self.child is not None
        return await self.child.wait()

    async def stop(self) -> None:
        if self.child:
            await self.child.stop()
