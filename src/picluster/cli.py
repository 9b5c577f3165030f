"""The ``picluster`` command: one tree of subcommands, each with ``--help``.

Feature modules own their subcommands: each exposes ``register(subparsers)``,
which calls ``subparsers.add_parser`` (only that) and sets ``func`` on every
parser it adds; ``func(args) -> int`` is the exit status. A ``PiclusterError``
out of ``func`` is answered here, once: ``picluster: <message>`` on stderr and
its ``exit_status``. A parser may set ``interrupted``, the line Ctrl-C prints.
``./build.sh`` is this command with ``build`` as the default (see build.sh).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Any

from picluster import __version__, connect, jupyter_cli, node_cli
from picluster.cards import cli as cards_cli
from picluster.errors import PiclusterError
from picluster.imagebuild import cli as imagebuild_cli
from picluster.vm import cli as vm_cli

GROUPS: tuple[tuple[str, tuple[ModuleType, ...]], ...] = (
    ("node commands (on a Pi of the cluster)", (node_cli, jupyter_cli)),
    ("commands on your computer (cards; the cluster from a laptop)", (cards_cli, connect)),
    (
        "build and VM commands (sudo ./build.sh COMMAND; ./build.sh alone builds)",
        (imagebuild_cli, vm_cli),
    ),
)
"""Which module's subcommands ``picluster --help`` lists under which heading."""


class _Group:
    """The subparsers as one ``register`` sees them: each command goes into the one
    tree, and its help line into this group's part of the listing."""

    def __init__(self, subparsers: argparse._SubParsersAction) -> None:
        self.subparsers = subparsers
        self.commands: list[tuple[str, str]] = []

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        self.commands.append((name, kwargs.get("help", "")))
        return self.subparsers.add_parser(name, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="picluster",
        usage="%(prog)s [-h] [--version] COMMAND ...",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"picluster {__version__}")
    parser.set_defaults(interrupted="interrupted")
    # The listing is the description (grouped), so argparse's own flat one is off.
    subparsers = parser.add_subparsers(
        prog="picluster", dest="command", metavar="COMMAND", required=True, help=argparse.SUPPRESS
    )
    listing = []
    for title, modules in GROUPS:
        group = _Group(subparsers)
        for module in modules:
            module.register(group)
        listing.append((title, group.commands))
    width = max(len(name) for _, commands in listing for name, _ in commands) + 2
    parser.description = "\n\n".join(
        [
            "A drawer of Raspberry Pis as one ipyparallel cluster.",
            *(
                f"{title}:\n" + "\n".join(f"  {name:<{width}}{text}" for name, text in commands)
                for title, commands in listing
            ),
            "'picluster COMMAND --help' tells more about each.",
        ]
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except PiclusterError as exc:
        print(f"picluster: {exc}", file=sys.stderr)
        return exc.exit_status
    except KeyboardInterrupt:
        print(args.interrupted, file=sys.stderr)
        return 130
