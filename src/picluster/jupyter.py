"""JupyterLab on the controller: its configuration, its login and its workspace.

``picluster jupyter`` (what ``picluster-jupyter.service`` runs, as the first
user) prepares everything a browser user needs and then becomes JupyterLab:

- the ipyparallel client file, so ``ipp.Client()`` works with no arguments;
- ``cluster-.json``, so the Clusters panel and ``ipp.Cluster.from_file()``
  show the cluster the agent runs (see ``picluster.clusterfile``);
- the example notebooks in ``~/notebooks/examples`` (never overwriting edits);
- a server config file, mode 0600 in a private runtime directory, that holds
  the login token or password hash. The token never appears on a command line:
  ``/proc/<pid>/cmdline`` is world-readable, which is how the 2018 notebook
  advisory leaked tokens. The command line names only the config file.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from picluster import clusterfile, dasktls
from picluster.config import Config, JupyterSection
from picluster.connection import client_info, dumps
from picluster.daskcluster import DASHBOARD_LINK
from picluster.errors import ConfigurationError
from picluster.files import atomic_write_text
from picluster.secret import Keys

log = logging.getLogger(__name__)

SERVER_CONFIG_NAME = "jupyter_picluster_config.json"
UNIT_RUNTIME_DIR = Path("/run/picluster-jupyter")
"""``RuntimeDirectory=picluster-jupyter`` of the unit (tmpfs, owned by the user, 0700)."""
EXAMPLES_DIR = "examples"
ANY_ADDRESS = ("", "0.0.0.0", "::", "*")


class JupyterError(ConfigurationError):
    """Something a person must fix before JupyterLab can start (exit status 78)."""


def token_for(section: JupyterSection, keys: Keys) -> str:
    """The login token: none when a password hash is configured (password login only)."""
    return "" if section.password_hash else keys.jupyter_token


def server_config(section: JupyterSection, keys: Keys, root_dir: Path) -> dict[str, Any]:
    """The complete server configuration, as JupyterLab reads it from JSON."""
    return {
        "ServerApp": {
            "ip": section.ip,
            "port": section.port,
            # A busy port is an error to see in the journal, not a reason to
            # serve on 8889 where nobody looks.
            "port_retries": 0,
            "open_browser": False,
            "root_dir": str(root_dir),
            # Users reach it as controller.local or by LAN address; login is
            # always required, so remote access is the point, not a risk.
            "allow_remote_access": True,
            "allow_root": False,
        },
        "IdentityProvider": {"token": token_for(section, keys)},
        "PasswordIdentityProvider": {
            "hashed_password": section.password_hash,
            # A password set in the browser would land in a config file this
            # server never reads (it reads only this one): the card seed is the
            # one place for it.
            "allow_password_change": False,
        },
        "LabApp": {
            # The Pi may be offline: no update checks or news fetches.
            "check_for_updates_class": "jupyterlab.NeverCheckForUpdate",
            "news_url": None,
            # ...and no extension manager that queries PyPI from the browser.
            "extension_manager": "readonly",
        },
    }


def expand_root(section: JupyterSection, home: Path) -> Path:
    raw = section.root_dir
    if raw == "~" or raw.startswith("~/"):
        return home / raw[2:]
    path = Path(raw)
    return path if path.is_absolute() else home / path


def unit_runtime_dir() -> Path | None:
    """The unit's ``RuntimeDirectory=`` (systemd passes it in the environment), if any."""
    unit_dir = os.environ.get("RUNTIME_DIRECTORY")
    return Path(unit_dir.split(":")[0]) if unit_dir else None


def runtime_dir() -> Path:
    """Where the server config goes: the unit's private tmpfs directory, else
    Jupyter's own runtime directory (0700, where it keeps its token files too)."""
    unit_dir = unit_runtime_dir()
    if unit_dir is not None:
        return unit_dir
    from jupyter_core.paths import jupyter_runtime_dir

    return Path(jupyter_runtime_dir())


def ipython_dir(home: Path) -> Path:
    value = os.environ.get("IPYTHONDIR")
    return Path(value) if value else home / ".ipython"


def write_client_file(ipdir: Path, config: Config, keys: Keys) -> Path:
    """``ipcontroller-client.json`` for this user (the controller is on this host)."""
    security = clusterfile.security_dir(ipdir)
    security.mkdir(mode=0o700, parents=True, exist_ok=True)
    target = security / clusterfile.CLIENT_FILE
    info = client_info(
        "127.0.0.1",
        config.cluster.base_port,
        keys,
        location="127.0.0.1",
        curve=config.cluster.curve,
    )
    atomic_write_text(target, dumps(info), mode=0o600)
    return target


def example_notebooks() -> list[Any]:
    folder = resources.files("picluster") / "notebooks"
    return sorted((f for f in folder.iterdir() if f.name.endswith(".ipynb")), key=lambda f: f.name)


def install_examples(root_dir: Path) -> list[Path]:
    """Copy the shipped notebooks into ``<root_dir>/examples``; keep existing files,
    which may hold the user's own edits and outputs."""
    target = root_dir / EXAMPLES_DIR
    target.mkdir(parents=True, exist_ok=True)
    added = []
    for source in example_notebooks():
        dest = target / source.name
        if dest.exists():
            continue
        with resources.as_file(source) as src:
            shutil.copyfile(src, dest)
        dest.chmod(0o644)
        added.append(dest)
    return added


NOTIFICATION_SETTINGS = Path(
    ".jupyter/lab/user-settings/@jupyterlab/apputils-extension/notification.jupyterlab-settings"
)


def default_user_settings(home: Path) -> bool:
    """Answer JupyterLab's "fetch Jupyter news?" prompt with "never" for the
    user, once: the cluster may have no internet, and a first-time user should
    see the notebooks, not a privacy question. A file already there (the
    user's own choice) is left alone. Returns whether it was written."""
    path = home / NOTIFICATION_SETTINGS
    if path.exists():
        return False
    settings = {"fetchNews": "false", "checkForUpdates": False}
    atomic_write_text(path, json.dumps(settings, indent=2) + "\n")
    return True


@dataclass(frozen=True)
class Launch:
    argv: list[str]
    env: dict[str, str]
    config_file: Path


def write_dask_config(home: Path, keys: Keys) -> Path:
    """``rc.become_dask()`` for this user in notebooks, JupyterLab terminals and SSH
    sessions alike, its dashboard link this server's proxy to the scheduler's
    loopback-only dashboard (``picluster.daskcluster``)."""
    return dasktls.write_user_config(dasktls.user_config_dir(home), keys, DASHBOARD_LINK)


def prepare(config: Config, keys: Keys, home: Path) -> Launch:
    """Write everything JupyterLab needs for this user; return how to start it."""
    if os.geteuid() == 0:
        raise JupyterError(
            "refusing to run JupyterLab as root: notebooks run arbitrary code. "
            "Fix: run `picluster jupyter`, which drops to [jupyter] user (in "
            "/etc/picluster/cluster.toml) before it starts the server"
        )
    section = config.jupyter
    root_dir = expand_root(section, home)
    root_dir.mkdir(parents=True, exist_ok=True)
    added = install_examples(root_dir)
    if added:
        log.info("added %d example notebook(s) to %s", len(added), root_dir / EXAMPLES_DIR)

    default_user_settings(home)
    ipdir = ipython_dir(home)
    write_client_file(ipdir, config, keys)
    clusterfile.write(ipdir)
    write_dask_config(home, keys)

    rundir = runtime_dir()
    rundir.mkdir(mode=0o700, parents=True, exist_ok=True)
    config_file = rundir / SERVER_CONFIG_NAME
    atomic_write_text(
        config_file, json.dumps(server_config(section, keys, root_dir), indent=2), mode=0o600
    )

    env = dict(os.environ)
    # Kernels inherit this environment: the path to the raw cluster secret
    # has no business there once the derived values are written.
    env.pop("CREDENTIALS_DIRECTORY", None)
    env["IPYTHONDIR"] = str(ipdir)
    argv = [sys.executable, "-m", "jupyterlab", f"--config={config_file}"]
    return Launch(argv, env, config_file)


def url(section: JupyterSection, keys: Keys | None, host: str, token: str | None = None) -> str:
    """The address to open, with the token when token login is in use."""
    if token is None:
        token = token_for(section, keys) if keys is not None else ""
    base = f"http://{host}:{section.port}/lab"
    return f"{base}?token={token}" if token else base


def running_token() -> str | None:
    """The token of the server running for this user, read from its 0600 config
    (how ``picluster url`` works for the first user without access to the secret)."""
    candidates = [UNIT_RUNTIME_DIR / SERVER_CONFIG_NAME]
    with contextlib.suppress(ImportError):  # no jupyter_core: only the unit's dir counts
        candidates.append(runtime_dir() / SERVER_CONFIG_NAME)
    for path in candidates:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        return str(data.get("IdentityProvider", {}).get("token", ""))
    return None
