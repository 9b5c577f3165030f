"""The engine side: N ipengines joined to one controller, restarted as needed.

An engine gets the full connection dict through ``IPP_CONNECTION_INFO`` (a URL
alone is not enough), so nothing is read from disk. Each engine's uuid names
its host (``picluster:<host>:<index>:<random>``): a client can then tell which
Pi runs which engine id, and ``picluster status`` counts them per host.

No ghosts: every engine id this host has registered is written to the state
dir (``engines.json``, with its uuid), and before the group starts engines it
asks the controller to unregister those that are still listed under the same
uuid: the engines of a host that rebooted, of an agent that crashed, or of a
controller address that changed are gone at once instead of being listed
(and sent work) until their missed heartbeats run out (30 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import secrets
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from picluster import dasktls, ipengine
from picluster.config import Config
from picluster.connection import client_environment
from picluster.files import atomic_write_text
from picluster.paths import Paths
from picluster.process import Child
from picluster.secret import Keys

log = logging.getLogger(__name__)

UUID_PREFIX = "picluster"
REGISTERED = re.compile(r"Completed registration with id (\d+)")
BACKOFF_START = 1.0
BACKOFF_MAX = 30.0
STATE_FILE = "engines.json"
"""In the state dir: engine id -> uuid of every engine this host registered."""
UNREGISTER_TIMEOUT_S = 3.0
"""How long the controller has to answer before engines start without the clean-up."""
PORT_POLL_S = 0.5
MOVED_STOP_GRACE_S = 0.5


def engine_uuid(host: str, index: int) -> str:
    return f"{UUID_PREFIX}:{host}:{index}:{secrets.token_hex(4)}"


def host_of(uuid: str) -> str | None:
    """The host an engine uuid names, or None for engines not started by us."""
    parts = uuid.split(":")
    if len(parts) == 4 and parts[0] == UUID_PREFIX:
        return parts[1]
    return None


def python_minor() -> str:
    """The engines' Python, e.g. "3.13": this one, which ``engine_argv`` starts."""
    return ipengine.PYTHON


def resolve_count(value: int | str) -> int:
    return (os.cpu_count() or 1) if value == "auto" else int(value)


def engine_env(info: dict[str, Any], keys: Keys, config: Config, paths: Paths) -> dict[str, str]:
    # Nothing ipyparallel reads from the environment may leak in from our own.
    env = {k: v for k, v in os.environ.items() if not k.startswith("IPP_")}
    # User code runs in the engines: it gets derived keys, never the way to the secret.
    env.pop("CREDENTIALS_DIRECTORY", None)
    env["IPYTHONDIR"] = str(paths.ipython_dir)
    env["IPP_CONNECTION_INFO"] = json.dumps(info)
    env.update(dasktls.environment(paths.dask_tls_dir))  # become_dask's workers
    env.update(client_environment(keys, config.cluster.curve))
    if config.cluster.curve:
        env["IPP_CURVE_SERVERKEY"] = keys.curve().server_public.decode("ascii")
    return env


def engine_argv(uuid: str, config: Config) -> list[str]:
    argv = [
        sys.executable,
        "-m",
        # ipyparallel's engine, refusing bytecode from another Python (issue 17).
        "picluster.ipengine",
        f"--Session.session={uuid}",
        f"--IPEngine.timeout={config.engines.timeout}",
        # Never give up on a silent controller: a restarted one restores this
        # engine (same uuid) when it comes back, and when the controller's state
        # is really lost the agent sees a new instance id and restarts us.
        "--IPEngine.max_heartbeat_misses=0",
        "--log-level=INFO",
    ]
    if config.engines.startup:
        argv.append(f"--IPEngine.startup_command={config.engines.startup}")
    return argv


def _controller_endpoint(info: dict[str, Any]) -> tuple[str, int]:
    host = urlsplit(info["interface"]).hostname or info["location"]
    if host == "0.0.0.0":
        host = info["location"]
    return host, int(info["registration"])


async def port_answers(host: str, port: int, timeout: float = 2.0) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


async def unregister(
    info: dict[str, Any], keys: Keys, curve: bool, engines: dict[int, str], timeout: float
) -> list[int] | None:
    """Ask the hub to unregister ``engines`` (id -> uuid) that it still lists as ours.

    Only an id listed under the very uuid we registered is unregistered (after a
    controller lost its state, the same id may be someone else's). Returns the
    ids unregistered, or None if the hub did not answer within ``timeout``.
    This is the hub's own ``unregistration_request`` on its query port, the
    message an engine sends when it leaves cleanly.
    """
    import zmq
    import zmq.asyncio
    from jupyter_client.session import Session

    # With CurveZMQ the key is empty by design (ipyparallel then does not sign):
    # jupyter_client's warning about it is not for the journal.
    logging.getLogger("traitlets").setLevel(logging.ERROR)
    session = Session(
        key=info["key"].encode("ascii"),
        signature_scheme=info["signature_scheme"],
        packer="json",
        unpacker="json",
        username="picluster-agent",
    )
    ctx = zmq.asyncio.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    if curve:
        pair = keys.curve()
        sock.curve_serverkey = info["curve_serverkey"].encode("ascii")
        sock.curve_publickey = pair.client_public
        sock.curve_secretkey = pair.client_secret
    host, port = _controller_endpoint(info)
    sock.connect(f"tcp://{host}:{port}")
    deadline = time.monotonic() + timeout

    async def listed() -> dict[int, str] | None:
        await sock.send_multipart(session.serialize(session.msg("connection_request", {})))
        while (left := deadline - time.monotonic()) > 0:
            if not await sock.poll(left * 1000):
                break
            _, frames = session.feed_identities(await sock.recv_multipart())
            reply = session.deserialize(frames)
            if reply["msg_type"] == "connection_reply":
                return {int(k): v for k, v in reply["content"].get("engines", {}).items()}
        return None

    try:
        now = await listed()
        if now is None:
            return None
        ours = [eid for eid, uuid in engines.items() if now.get(eid) == uuid]
        for eid in ours:
            msg = session.msg("unregistration_request", {"id": eid})
            await sock.send_multipart(session.serialize(msg))
        if ours:
            await listed()  # handled in order: once this answers, they are gone
        return ours
    finally:
        sock.close()


class EngineGroup:
    """``count`` engines for one controller; each restarts with backoff when it exits."""

    def __init__(
        self,
        host: str,
        count: int,
        config: Config,
        keys: Keys,
        paths: Paths,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self.host = host
        self.count = count
        self.config = config
        self.keys = keys
        self.paths = paths
        self.on_change = on_change
        self.registered: dict[int, int] = {}  # engine index -> ipyparallel engine id
        self._uuids: dict[int, str] = {}  # engine index -> uuid of its current process
        self._known: dict[int, str] = self._load_known()  # every id registered -> uuid
        self._tasks: list[asyncio.Task[None]] = []
        self._children: dict[int, Child] = {}
        self.info: dict[str, Any] | None = None

    @property
    def running(self) -> bool:
        return bool(self._tasks)

    # -- the ids this host registered, kept across restarts ---------------------------

    @property
    def _state_file(self) -> Path:
        return self.paths.state_dir / STATE_FILE

    def _load_known(self) -> dict[int, str]:
        try:
            saved = json.loads(self._state_file.read_text())
            return {int(eid): str(uuid) for eid, uuid in saved["engines"].items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return {}

    def _save_known(self) -> None:
        with contextlib.suppress(OSError):
            text = json.dumps({"engines": {str(k): v for k, v in self._known.items()}})
            atomic_write_text(self._state_file, text + "\n", mode=0o600)

    async def forget_previous(self, info: dict[str, Any]) -> None:
        """Unregister the engines this host ran before (they are not running now)."""
        if not self._known:
            return
        try:
            gone = await unregister(
                info, self.keys, self.config.cluster.curve, dict(self._known), UNREGISTER_TIMEOUT_S
            )
        except Exception as exc:  # a reply we cannot read: the heartbeat purge still works
            log.warning("could not ask the controller to unregister old engines: %s", exc)
            gone = None
        if gone is None:
            log.info(
                "the controller did not answer within %.0f s: engine(s) %s this host ran "
                "before stay listed until the controller drops them",
                UNREGISTER_TIMEOUT_S,
                sorted(self._known),
            )
            return
        if gone:
            log.info("unregistered engine(s) %s that this host ran before", gone)
        self._known.clear()
        self._save_known()

    async def start(self, info: dict[str, Any]) -> None:
        # Engines of a controller that moved or lost its state cannot leave it
        # cleanly (their nanny waits seconds for the old address): no grace.
        await self.stop(grace=MOVED_STOP_GRACE_S)
        self.info = info
        paths = self.paths
        paths.ipython_dir.mkdir(parents=True, exist_ok=True)
        await self.forget_previous(info)
        self._tasks = [asyncio.create_task(self._keep(i)) for i in range(self.count)]
        log.info(
            "starting %d engine(s) for the controller at %s",
            self.count,
            info["interface"].removeprefix("tcp://"),
        )

    async def _keep(self, index: int) -> None:
        assert self.info is not None
        backoff = BACKOFF_START
        while True:
            await self._wait_for_controller(index)
            uuid = self._uuids[index] = engine_uuid(self.host, index)
            child = Child(
                f"engine-{index}",
                engine_argv(uuid, self.config),
                engine_env(self.info, self.keys, self.config, self.paths),
                on_line=lambda line, i=index: self._line(i, line),
            )
            self._children[index] = child
            await child.start()
            code = await child.wait()
            if self.registered.pop(index, None) is not None:
                backoff = BACKOFF_START  # it had worked: retry quickly
                self.on_change()
            log.warning(
                "engine-%d exited with status %s; starting it again in %.0f s",
                index,
                code,
                backoff,
            )
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX)

    async def _wait_for_controller(self, index: int) -> None:
        """Start an engine only once the controller's registration port answers.

        ipengine gives up after ``[engines] timeout`` without a controller, and
        restarting it blindly with backoff would keep it away for up to
        ``BACKOFF_MAX`` seconds after the controller is finally up.
        """
        assert self.info is not None
        host, port = _controller_endpoint(self.info)
        said = False
        while not await port_answers(host, port):
            if not said and index == 0:
                log.info("waiting for the controller at %s:%d to listen", host, port)
                said = True
            await asyncio.sleep(PORT_POLL_S)

    def _line(self, index: int, line: str) -> None:
        match = REGISTERED.search(line)
        if match:
            eid = self.registered[index] = int(match.group(1))
            self._known[eid] = self._uuids[index]
            self._save_known()
            self.on_change()

    async def stop(self, grace: float = 5.0) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        children = list(self._children.values())
        self._children.clear()
        await asyncio.gather(*(c.stop(grace) for c in children))
        if self.registered:
            self.registered.clear()
            self.on_change()
