"""The engine side: N ipengines joined to one controller, restarted as needed.

An engine gets the full connection dict through ``IPP_CONNECTION_INFO`` (a URL
alone is not enough), so nothing is read from disk. Each engine's uuid names
its host (``picluster:<host>:<index>:<random>``): a client can then tell which
Pi runs which engine id, and ``picluster status`` counts them per host.
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
from collections.abc import Callable
from typing import Any

from picluster.config import Config
from picluster.connection import client_environment
from picluster.paths import Paths
from picluster.process import Child
from picluster.secret import Keys

log = logging.getLogger(__name__)

UUID_PREFIX = "picluster"
REGISTERED = re.compile(r"Completed registration with id (\d+)")
BACKOFF_START = 1.0
BACKOFF_MAX = 30.0


def engine_uuid(host: str, index: int) -> str:
    return f"{UUID_PREFIX}:{host}:{index}:{secrets.token_hex(4)}"


def host_of(uuid: str) -> str | None:
    """The host an engine uuid names, or None for engines not started by us."""
    parts = uuid.split(":")
    if len(parts) == 4 and parts[0] == UUID_PREFIX:
        return parts[1]
    return None


def resolve_count(value: int | str) -> int:
    return (os.cpu_count() or 1) if value == "auto" else int(value)


def engine_env(info: dict[str, Any], keys: Keys, config: Config, paths: Paths) -> dict[str, str]:
    # Nothing ipyparallel reads from the environment may leak in from our own.
    env = {k: v for k, v in os.environ.items() if not k.startswith("IPP_")}
    # User code runs in the engines: it gets derived keys, never the way to the secret.
    env.pop("CREDENTIALS_DIRECTORY", None)
    env["IPYTHONDIR"] = str(paths.ipython_dir)
    env["IPP_CONNECTION_INFO"] = json.dumps(info)
    env.update(client_environment(keys, config.cluster.curve))
    if config.cluster.curve:
        env["IPP_CURVE_SERVERKEY"] = keys.curve().server_public.decode("ascii")
    return env


def engine_argv(uuid: str, config: Config) -> list[str]:
    argv = [
        sys.executable,
        "-m",
        "ipyparallel.engine",
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
        self._tasks: list[asyncio.Task[None]] = []
        self._children: dict[int, Child] = {}
        self.info: dict[str, Any] | None = None

    @property
    def running(self) -> bool:
        return bool(self._tasks)

    async def start(self, info: dict[str, Any]) -> None:
        await self.stop()
        self.info = info
        paths = self.paths
        paths.ipython_dir.mkdir(parents=True, exist_ok=True)
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
            child = Child(
                f"engine-{index}",
                engine_argv(engine_uuid(self.host, index), self.config),
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

    def _line(self, index: int, line: str) -> None:
        match = REGISTERED.search(line)
        if match:
            self.registered[index] = int(match.group(1))
            self.on_change()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        children = list(self._children.values())
        self._children.clear()
        await asyncio.gather(*(c.stop() for c in children))
        if self.registered:
            self.registered.clear()
            self.on_change()
