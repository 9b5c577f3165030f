"""Subcommands ``picluster jupyter`` (what the unit runs) and ``picluster url``."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from picluster import config, jupyter, secret, users
from picluster.errors import EX_CONFIG, ConfigurationError
from picluster.node_cli import _logging, _path_options, _paths
from picluster.paths import hostname

log = logging.getLogger("picluster.jupyter")


def cmd_jupyter(args: argparse.Namespace) -> int:
    _logging()
    paths = _paths(args)
    try:
        layered = config.load_layered(paths.config)
        cfg = layered.config
        if not cfg.jupyter.enabled:
            log.info("JupyterLab is disabled ([jupyter] enabled = false in %s)", paths.config)
            return 0
        keys = secret.Keys.derive(secret.load(secret.credential_path(paths.secret)))
        if os.geteuid() == 0:
            # The unit starts as root only to read the secret: [jupyter] user is the
            # one place that names who runs the server, so no User= repeats it.
            user = users.jupyter_user(layered)
            runtime = jupyter.unit_runtime_dir()
            if runtime is not None:
                os.chown(runtime, user.pw_uid, user.pw_gid)
            users.become(user)
        launch = jupyter.prepare(cfg, keys, Path.home())
    except ConfigurationError as exc:
        log.error("%s", exc)
        return EX_CONFIG
    login = "the password from the card seed" if cfg.jupyter.password_hash else "the token"
    log.info(
        "starting JupyterLab on %s:%d as %s, log in with %s ('picluster url' prints the address)",
        cfg.jupyter.ip,
        cfg.jupyter.port,
        os.environ.get("USER") or os.getuid(),
        login,
    )
    sys.stdout.flush()
    sys.stderr.flush()
    # Become JupyterLab: systemd then supervises and signals the server itself.
    os.execve(launch.argv[0], launch.argv, launch.env)  # noqa: S606
    return 1  # not reached


def cmd_url(args: argparse.Namespace) -> int:
    paths = _paths(args)
    cfg = config.load(paths.config)
    if args.port:
        cfg = cfg.model_copy(update={"jupyter": cfg.jupyter.model_copy(update={"port": args.port})})
    host = args.host or (
        cfg.jupyter.ip if cfg.jupyter.ip not in jupyter.ANY_ADDRESS else f"{hostname()}.local"
    )
    if cfg.jupyter.password_hash:
        print(jupyter.url(cfg.jupyter, None, host, token=""))
        print("log in with the password set in the card seed", file=sys.stderr)
        return 0
    try:
        keys = secret.Keys.derive(secret.load(secret.credential_path(paths.secret)))
    except secret.SecretError as exc:
        # The first user cannot read the root-only secret, but the running
        # server's private config holds the token it needs.
        token = None if args.secret else jupyter.running_token()
        if token is None:
            raise ConfigurationError(
                f"{exc}\n(or run this as root, or on the build host with "
                "--secret deploy/<name>.secret --host <controller>.local)"
            ) from exc
        print(jupyter.url(cfg.jupyter, None, host, token=token))
        return 0
    print(jupyter.url(cfg.jupyter, keys, host))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "jupyter",
        help="start JupyterLab for this user (what picluster-jupyter.service runs)",
        description="Write the client file, the cluster file, the example notebooks and a "
        "private server config, then become JupyterLab. Never runs as root.",
    )
    _path_options(p)
    p.set_defaults(func=cmd_jupyter)

    p = subparsers.add_parser(
        "url",
        help="print JupyterLab's address with its login token",
        description="On the controller: the full URL of its JupyterLab. On the build host: "
        "picluster url --secret deploy/<name>.secret --host controller.local",
    )
    p.add_argument("--host", help="host name in the URL (default: <this hostname>.local)")
    p.add_argument(
        "--port", type=int, help="port in the URL, e.g. a forwarded one (default: [jupyter] port)"
    )
    _path_options(p)
    p.set_defaults(func=cmd_url)
