"""``picluster connect``: use the cluster from your own computer on the same LAN.

``pip install picluster`` on a laptop (Linux or macOS, no root), then
``picluster connect --secret deploy/<name>.secret``: it finds the controller
by its sealed mDNS record (``--controller <address>`` where multicast does
not pass), writes ipyparallel's client file into the profile ``picluster``
so that ``ipp.Client(profile="picluster")`` works, connects once to check,
and prints the JupyterLab address with its token (for a browser, or VS Code's
"Existing Jupyter Server").

It refuses a local Python whose minor version is not the engines': ipyparallel
sends functions as pickled bytecode, which only the same CPython minor version
can run (a 3.11 client's lambda made every 3.13 engine crash). The
controller's record says which Python the engines run; with ``--controller``
the engines are asked, by source text only (``execute``), never bytecode.
The engines refuse foreign bytecode themselves as well (``picluster.ipengine``):
this check just says so before anything is sent, with the fix.

Holding the secret is holding the cluster; nothing here is installed, started
or listening.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from picluster import dasktls, secret
from picluster.config import ClusterSection, JupyterSection
from picluster.connection import client_info, dumps
from picluster.daskcluster import DASHBOARD_LINK
from picluster.discovery import scan_lan
from picluster.engines import python_minor
from picluster.errors import PiclusterError
from picluster.files import atomic_write_text

PROFILE = "picluster"
CHECK_TIMEOUT_S = 20.0


class ConnectError(PiclusterError):
    """The cluster cannot be used from here; ``str()`` says why and what to do."""


@dataclass(frozen=True)
class Target:
    """The controller to connect to, and what its record (if any) says."""

    address: str
    base_port: int
    curve: bool
    python: str
    """The engines' Python ("3.13"), "" when unknown until asked."""
    lab: int
    login: str
    found_by: str


def discover(cluster: str, keys: secret.Keys, seconds: float) -> Target:
    """The freshest controller record of ``cluster`` that the secret vouches for."""

    view = scan_lan(seconds, cluster, keys.record_key)
    if not view.controllers and view.strangers:
        raise ConnectError(
            f"no controller of cluster {cluster!r} that this secret vouches for; "
            f"heard instead: {view.strangers[0]}. Fix: use the secret of the build "
            "that made the cards (deploy/<name>.secret)"
        )
    found = view.controllers
    if not found:
        raise ConnectError(
            f"no controller of cluster {cluster!r} answered over mDNS within {seconds:.0f} s. "
            "Fix: be on the cluster's LAN (same Wi-Fi or switch), check the cluster name "
            "(--cluster), or give its address: --controller <address>"
        )
    best = max(found, key=lambda f: (f.fresh is not None, f.fresh or 0))
    rec = best.record
    return Target(
        best.address, rec.base_port, rec.curve, rec.py, rec.lab, rec.login, "found by mDNS"
    )


def refuse_other_python(engines: str, lab_url: str) -> None:
    local = python_minor()
    if engines and engines != local:
        raise ConnectError(
            f"the engines run Python {engines} and this is Python {local}: ipyparallel sends "
            "functions as bytecode, which another Python version cannot run (the engines "
            f"refuse it). Fix: use the controller's JupyterLab ({lab_url}), or run "
            f"'picluster connect' again from Python {engines} (e.g. a venv made with "
            f"python{engines})"
        )


def lab_url(target: Target, keys: secret.Keys) -> str:
    if not target.lab:
        return "none: JupyterLab is off on the controller ([jupyter] enabled = false)"
    from picluster import jupyter

    token = keys.jupyter_token if target.login == "token" else ""
    url = jupyter.url(JupyterSection(port=target.lab), None, target.address, token=token)
    return url if token else f"{url} (log in with the JupyterLab password)"


def dashboard_link(target: Target) -> str:
    """dask's dashboard link template: JupyterLab's proxy on the controller (the
    dashboard itself listens on the controller's loopback only)."""
    if not target.lab:
        return ""
    return f"http://{target.address}:{target.lab}{DASHBOARD_LINK}"


def ipython_dir(given: Path | None) -> Path:
    if given is not None:
        return given
    env = os.environ.get("IPYTHONDIR")
    return Path(env) if env else Path.home() / ".ipython"


def client_file(ipdir: Path, profile: str) -> Path:
    return ipdir / f"profile_{profile}" / "security" / "ipcontroller-client.json"


def write_client_file(path: Path, info: dict[str, Any]) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    atomic_write_text(path, dumps(info), mode=0o600)


def check(info: dict[str, Any], timeout: float) -> tuple[int, set[str]]:
    """Connect with what the file will hold, as ``ipp.Client`` will: how many engines
    answer, and the Pythons they run (asked by source text, which any version compiles)."""
    import ipyparallel as ipp

    try:
        rc = ipp.Client(dict(info), timeout=timeout)
    except Exception as exc:  # ipyparallel raises TimeoutError, OSError, zmq errors
        raise ConnectError(
            f"the controller did not answer at {info['location']} "
            f"({type(exc).__name__}: {exc}). "
            "Fix: check that the controller is up ('picluster status' on a node) and "
            "that this is its cluster's secret"
        ) from None
    try:
        if not rc.ids:
            return 0, set()
        # Source text, printed: a function (even ipyparallel's own ``pull``) would be
        # bytecode, which engines on another Python refuse.
        asked = rc[:].execute("import sys as _s; print('%d.%d' % _s.version_info[:2]); del _s")
        try:
            asked.get(timeout=timeout)
            asked.wait_for_output(timeout=timeout)
        except Exception as exc:  # a remote error, or ipyparallel's TimeoutError
            raise ConnectError(
                f"the engines did not say which Python they run ({type(exc).__name__}: "
                f"{exc}). Fix: try again once 'picluster status' shows them registered"
            ) from None
        return len(rc.ids), {out.strip() for out in asked.stdout if out.strip()}
    finally:
        rc.close()


def run(args: argparse.Namespace) -> int:
    secret_path: Path = args.secret
    secret.check_private(secret_path, own=True)
    keys = secret.Keys.derive(secret.load(secret_path))
    defaults = ClusterSection()
    if args.controller:
        try:
            ipaddress.IPv4Address(args.controller)
        except ValueError:
            raise ConnectError(
                f"--controller {args.controller!r}: not an IPv4 address, e.g. 192.168.1.10"
            ) from None
        target = Target(
            args.controller, args.base_port or defaults.base_port, not args.no_curve, "",
            JupyterSection().port, "token", "given with --controller",
        )  # fmt: skip
    else:
        print(f"looking for cluster {args.cluster!r} over mDNS ({args.wait:.0f} s)...")
        target = discover(args.cluster, keys, args.wait)
    url = lab_url(target, keys)
    refuse_other_python(target.python, url)
    engines_py = f", engines on Python {target.python}" if target.python else ""
    print(f"controller: {target.address}:{target.base_port} ({target.found_by}{engines_py})")

    info = client_info(
        target.address, target.base_port, keys, curve=target.curve, location=target.address
    )
    if not args.no_check:
        # Before anything is written: a file that cannot work is not left behind.
        count, pythons = check(info, args.timeout)
        if len(pythons) > 1:
            raise ConnectError(f"the engines run several Pythons: {sorted(pythons)}")
        if pythons:
            refuse_other_python(pythons.pop(), url)
        print(f"{count} engine{'s' if count != 1 else ''} answer")
    path = client_file(ipython_dir(args.ipython_dir), args.profile)
    write_client_file(path, info)
    print(f"wrote {path} (mode 0600)")
    dask = dasktls.write_user_config(dasktls.user_config_dir(), keys, dashboard_link(target))
    print(f"wrote {dask} (rc.become_dask(): TLS with certificates from the secret)")
    where = f', ipython_dir="{args.ipython_dir}"' if args.ipython_dir else ""
    client = f'ipp.Client(profile="{args.profile}"{where})'
    print(f"in Python:  import ipyparallel as ipp; rc = {client}")
    print(f"JupyterLab: {url}")
    return 0


def register(subparsers: Any) -> None:
    defaults = ClusterSection()
    p = subparsers.add_parser(
        "connect",
        help="use the cluster from this computer: ipp.Client(profile='picluster') + Lab URL",
        description=(
            "Find the controller by mDNS (or --controller), write ipyparallel's client "
            f"file into the IPython profile '{PROFILE}', check that the engines answer, "
            "write dask's configuration for rc.become_dask() (TLS files derived from the "
            "secret, in $DASK_CONFIG or ~/.config/dask) and print JupyterLab's address "
            "with its token. No root needed. Refuses a Python "
            "whose minor version differs from the engines' (they could not run what it "
            "sends)."
        ),
    )
    p.add_argument(
        "--secret",
        type=Path,
        default=os.environ.get("PICLUSTER_SECRET") or None,
        required="PICLUSTER_SECRET" not in os.environ,
        help="the cluster secret file, mode 0600 (the build's deploy/<name>.secret); "
        "also $PICLUSTER_SECRET",
    )
    p.add_argument("--controller", help="the controller's IPv4 address: no mDNS")
    p.add_argument(
        "--cluster", default=defaults.name, help=f"cluster name (default {defaults.name})"
    )
    p.add_argument(
        "--base-port",
        type=int,
        help=f"with --controller: the cluster's base_port (default {defaults.base_port})",
    )
    p.add_argument(
        "--no-curve",
        action="store_true",
        help="with --controller: the cluster has [cluster] curve = false",
    )
    p.add_argument("--profile", default=PROFILE, help=f"IPython profile (default {PROFILE})")
    p.add_argument("--ipython-dir", type=Path, help="instead of $IPYTHONDIR or ~/.ipython")
    p.add_argument("--wait", type=float, default=5.0, metavar="SECONDS", help="mDNS listening time")
    p.add_argument(
        "--timeout",
        type=float,
        default=CHECK_TIMEOUT_S,
        metavar="SECONDS",
        help="how long the check waits for the controller",
    )
    p.add_argument("--no-check", action="store_true", help="write the file without connecting")
    p.set_defaults(func=run, interrupted="interrupted: nothing written")
