"""Where picluster keeps its files on a node, overridable for tests and
several nodes on one machine (CLI flag > environment > default)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_CONFIG = Path("/etc/picluster/cluster.toml")
DEFAULT_SECRET = Path("/etc/picluster/secret")
DEFAULT_STATE_DIR = Path("/var/lib/picluster")
DEFAULT_ETC_DIR = Path("/etc")

ENV_CONFIG = "PICLUSTER_CONFIG"
ENV_SECRET = "PICLUSTER_SECRET"
ENV_STATE_DIR = "PICLUSTER_STATE_DIR"
ENV_HOSTNAME = "PICLUSTER_HOSTNAME"
ENV_ETC_DIR = "PICLUSTER_ETC_DIR"


@dataclass(frozen=True)
class Paths:
    config: Path
    secret: Path
    state_dir: Path
    etc_dir: Path = DEFAULT_ETC_DIR
    """Where the system's ``hostname`` and ``hosts`` files are (``naming`` writes them);
    a test host on a shared machine points it at its own directory."""

    @classmethod
    def resolve(
        cls,
        config: Path | None = None,
        secret: Path | None = None,
        state_dir: Path | None = None,
    ) -> Paths:
        def pick(flag: Path | None, env: str, default: Path) -> Path:
            if flag is not None:
                return Path(flag)
            value = os.environ.get(env)
            return Path(value) if value else default

        return cls(
            config=pick(config, ENV_CONFIG, DEFAULT_CONFIG),
            secret=pick(secret, ENV_SECRET, DEFAULT_SECRET),
            state_dir=pick(state_dir, ENV_STATE_DIR, DEFAULT_STATE_DIR),
            etc_dir=pick(None, ENV_ETC_DIR, DEFAULT_ETC_DIR),
        )

    @property
    def profile_dir(self) -> Path:
        """The controller's persistent ipyparallel profile (``--restore`` reads it)."""
        return self.state_dir / "profile_picluster"

    @property
    def dask_tls_dir(self) -> Path:
        """Dask's TLS files for the hub's scheduler and the engines' workers (dasktls)."""
        return self.state_dir / "dask-tls"

    @property
    def ipython_dir(self) -> Path:
        """A writable IPYTHONDIR: ipengine writes under it even with --profile-dir."""
        return self.state_dir / "ipython"

    @property
    def instance_file(self) -> Path:
        return self.state_dir / "controller-instance"

    @property
    def record_epoch(self) -> Path:
        """The epoch of this node's last sealed mDNS records (``agent.core.next_epoch``)."""
        return self.state_dir / "record-epoch"

    @property
    def status_file(self) -> Path:
        """What the agent last saw and did, for ``picluster status`` on this node."""
        return self.state_dir / "agent-status.json"


def hostname() -> str:
    """This node's hostname (short form); PICLUSTER_HOSTNAME overrides for tests."""
    name = os.environ.get(ENV_HOSTNAME) or os.uname().nodename
    return name.split(".", 1)[0]
