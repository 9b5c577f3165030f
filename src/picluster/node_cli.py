"""Subcommands that run on a node: role, agent, status, hostfile, ssh-trust, doctor, secret,
client-file."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from picluster import config, roles, secret, users
from picluster.errors import ConfigurationError, PiclusterError
from picluster.paths import Paths, hostname


def _paths(args: argparse.Namespace) -> Paths:
    return Paths.resolve(args.config, args.secret, args.state_dir)


def _path_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("paths (also $PICLUSTER_CONFIG/_SECRET/_STATE_DIR)")
    group.add_argument(
        "--config", type=Path, help="cluster.toml (default /etc/picluster/cluster.toml)"
    )
    group.add_argument("--secret", type=Path, help="secret file (default /etc/picluster/secret)")
    group.add_argument(
        "--state-dir", type=Path, help="state directory (default /var/lib/picluster)"
    )


def _wait_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--wait",
        type=float,
        default=3.0,
        metavar="SECONDS",
        help="how long to listen for mDNS answers (default 3)",
    )


def _logging() -> None:
    # Under systemd the journal stamps every line; elsewhere we do.
    fmt = (
        "%(levelname)s %(message)s"
        if os.environ.get("JOURNAL_STREAM")
        else ("%(asctime)s %(levelname)s %(message)s")
    )
    logging.basicConfig(level=logging.INFO, format=fmt, stream=sys.stderr)


def cmd_role(args: argparse.Namespace) -> int:
    paths = _paths(args)
    layered = config.load_layered(paths.config)
    decision = roles.decide(hostname(), layered.config)
    if args.is_role:
        return 0 if decision.role == args.is_role else 1
    print(decision.explain(layered.decided(decision)))
    return 0


def cmd_reserve_ports(args: argparse.Namespace) -> int:
    from picluster.controller import RESERVED_PORTS, reserve_ports

    cfg = config.load(_paths(args).config)
    try:
        now = reserve_ports(cfg.cluster.base_port)
    except OSError as exc:
        raise PiclusterError(
            f"cannot write {RESERVED_PORTS} ({exc.strerror}). Fix: run it as root "
            "(the agent's unit does, in ExecStartPre=+)"
        ) from None
    print(f"reserved ports: {now}")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    if args.reference:
        print(config.reference(), end="")
        return 0
    paths = _paths(args)
    layered = config.load_layered(paths.config)
    read = ", ".join(map(str, layered.files)) or f"none ({paths.config} absent)"
    print(f"# files read, in order: {read}\n{layered.describe()}", end="")
    return 0


def cmd_name(args: argparse.Namespace) -> int:
    from picluster import naming
    from picluster.agent.core import next_epoch

    _logging()
    paths = _paths(args)
    cfg = config.load(paths.config)
    print(naming.ensure(paths, cfg, lambda: next_epoch(paths)))
    return 0


def cmd_agent(args: argparse.Namespace) -> int:
    from picluster import agent

    _logging()
    return agent.run(_paths(args))


def cmd_status(args: argparse.Namespace) -> int:
    from picluster import status

    return status.main(_paths(args), args.wait, args.json)


def cmd_hostfile(args: argparse.Namespace) -> int:
    from picluster import hostfile

    return hostfile.main(_paths(args), args.wait, args.slots, args.address)


def cmd_ssh_trust(args: argparse.Namespace) -> int:
    from picluster import sshtrust

    paths = _paths(args)
    layered = config.load_layered(paths.config)
    layout = sshtrust.Layout(args.root)
    try:
        if layered.config.ssh.cluster_login:
            key = secret.load(paths.secret)
            outcome = sshtrust.apply(key, hostname(), users.jupyter_user(layered), layout)
        else:
            try:
                user = users.jupyter_user(layered)
            except ConfigurationError:
                user = None  # no first user: nothing of theirs to remove
            outcome = sshtrust.remove(user, layout)
    except OSError as exc:
        raise PiclusterError(
            f"cannot write {exc.filename or layout.root}: {exc.strerror or exc}. Fix: run it "
            "as root (the agent's unit does, in ExecStartPre=+)"
        ) from None
    if outcome.sshd_changed and (reloaded := sshtrust.reload_sshd(layout)):
        outcome.said.append(reloaded)
    for line in outcome.said:
        print(f"ssh-trust: {line}")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from picluster import doctor

    return doctor.main(_paths(args))


def cmd_secret_new(args: argparse.Namespace) -> int:
    path: Path = args.path
    if path.exists() and not args.force:
        raise PiclusterError(
            f"{path} exists; it is the root of your cluster's trust. "
            "Use --force to replace it (every card then needs the new one)."
        )
    secret.write(path, secret.generate())
    print(f"wrote a new cluster secret to {path} (mode 0600)")
    return 0


def cmd_client_file(args: argparse.Namespace) -> int:
    """Write ipcontroller-client.json where ``ipp.Client()`` looks for it."""
    paths = _paths(args)
    layered = config.load_layered(paths.config)
    cfg = layered.config
    keys = secret.Keys.derive(secret.load(secret.credential_path(paths.secret)))
    if args.user is not None:
        user = users.first_user(args.user, "--user")
    else:
        user = users.jupyter_user(layered)
    from picluster import clusterfile, jupyter  # ipyparallel: only this command needs it

    ipdir = args.ipython_dir or Path(user.pw_dir) / ".ipython"
    target = clusterfile.security_dir(ipdir) / clusterfile.CLIENT_FILE
    try:
        # As the user, not as root: what is made in ~/.ipython is theirs.
        users.as_user(user, lambda: jupyter.write_client_file(ipdir, cfg, keys))
    except OSError as exc:
        raise ConfigurationError(
            f"cannot write {target} as {user.pw_name}: {exc.strerror or exc}. Fix: "
            f"make {ipdir} a directory {user.pw_name} owns (no symlink out of their home)"
        ) from exc
    print(f"wrote {target} for {user.pw_name}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("role", help="print this host's role and why")
    p.add_argument(
        "--is",
        dest="is_role",
        choices=[r.value for r in roles.Role],
        help="exit 0 if this host has that role, 1 if not (for ExecCondition=)",
    )
    _path_options(p)
    p.set_defaults(func=cmd_role)

    p = subparsers.add_parser(
        "name",
        help="give an unnamed card its name, engine-<serial digits> (the unit's ExecStartPre)",
        description=(
            "A card whose hostname is in [roles] unassigned (the image's own 'raspberrypi') "
            "names itself after [roles] self_name, from its board serial (its wired MAC "
            "where it has none), makes sure no other card on the LAN has that name, and "
            "keeps it in /etc/hostname. A card with a name is left alone. Needs root."
        ),
    )
    _path_options(p)
    p.set_defaults(func=cmd_name)

    p = subparsers.add_parser("agent", help="run the node service (what systemd starts)")
    _path_options(p)
    p.set_defaults(func=cmd_agent)

    p = subparsers.add_parser("status", help="show the cluster as seen from this node")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    _wait_option(p)
    _path_options(p)
    p.set_defaults(func=cmd_status)

    p = subparsers.add_parser(
        "hostfile",
        help="print an MPI hostfile of the cluster's hosts: <host>.local slots=<cores>",
        description=(
            "One line per host that runs engines (the controller first, then the engine "
            "hosts; a controller with on_controller = 0 is left out), from the node records "
            "sealed with the cluster's key, so it needs the secret: "
            "mpirun --hostfile <(sudo picluster hostfile) -n 8 python -m mpi4py.bench helloworld"
        ),
    )
    p.add_argument(
        "--slots",
        choices=["cores", "engines"],
        default="cores",
        help="slots per host: its CPU cores (default) or the engines it runs",
    )
    p.add_argument(
        "--address",
        action="store_true",
        help="IPv4 addresses instead of <host>.local names (for an MPI that resolves .local "
        "poorly; ssh then checks host keys by address, not with the cluster's certificates)",
    )
    _wait_option(p)
    _path_options(p)
    p.set_defaults(func=cmd_hostfile)

    p = subparsers.add_parser(
        "ssh-trust",
        help="SSH between the nodes from the cluster secret (the unit's ExecStartPre, root)",
        description=(
            "Signs this host's Ed25519 key with the cluster's SSH CA (derived from the "
            "secret; principals: hostname and hostname.local), gives the first user the "
            "cluster user key and certificate, and makes ssh and sshd trust the CA for the "
            "cluster's .local hosts and that user. Writes only what changed, and reloads "
            "sshd then. With [ssh] cluster_login = false it removes all of it instead. "
            "Needs root."
        ),
    )
    p.add_argument(
        "--root",
        type=Path,
        default=Path("/"),
        help="apply under this directory instead of / (a test's or an image's root)",
    )
    _path_options(p)
    p.set_defaults(func=cmd_ssh_trust)

    p = subparsers.add_parser(
        "reserve-ports",
        help="keep the cluster's ports out of the ephemeral range (the unit's ExecStartPre)",
    )
    _path_options(p)
    p.set_defaults(func=cmd_reserve_ports)

    p = subparsers.add_parser(
        "config", help="print the settings in effect and the file that set each one"
    )
    p.add_argument(
        "--reference",
        action="store_true",
        help="print every key with its default and meaning instead (the README's reference)",
    )
    _path_options(p)
    p.set_defaults(func=cmd_config)

    p = subparsers.add_parser("doctor", help="check this node and say what to fix")
    _path_options(p)
    p.set_defaults(func=cmd_doctor)

    p = subparsers.add_parser("secret", help="manage the cluster secret")
    sub = p.add_subparsers(dest="secret_command", required=True, metavar="ACTION")
    q = sub.add_parser("new", help="write a new random cluster secret (mode 0600)")
    q.add_argument("path", type=Path)
    q.add_argument("--force", action="store_true", help="replace an existing secret")
    q.set_defaults(func=cmd_secret_new)

    p = subparsers.add_parser(
        "client-file",
        help="write ipcontroller-client.json so ipp.Client() works with no arguments",
    )
    p.add_argument("--user", help="for this user (default: [jupyter] user, else the first user)")
    p.add_argument("--ipython-dir", type=Path, help="instead of ~user/.ipython")
    _path_options(p)
    p.set_defaults(func=cmd_client_file)
