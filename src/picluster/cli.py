"""The ``picluster`` command: one subcommand per job, each with ``--help``.

Feature modules own their subcommands: each exposes ``register(subparsers)``
and sets ``func`` on its parser; ``func(args) -> int`` is the exit status.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from picluster import __version__

SUBCOMMAND_MODULES: tuple[str, ...] = (
    "picluster.node_cli",
    "picluster.jupyter_cli",
    "picluster.cards.cli",
)

EX_CONFIG = 78
"""sysexits' EX_CONFIG: the unit does not restart on it (RestartPreventExitStatus)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="picluster",
        description="A drawer of Raspberry Pis as one ipyparallel cluster.",
    )
    parser.add_argument("--version", action="version", version=f"picluster {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
