"""A node's role comes from its hostname alone (DESIGN.md, "Role")."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from enum import StrEnum

from picluster.config import Config
from picluster.errors import ConfigurationError
from picluster.names import LABEL_RULE, is_label


class Role(StrEnum):
    CONTROLLER = "controller"
    ENGINE = "engine"


class RoleError(ConfigurationError):
    """This hostname cannot be given a role; ``str()`` says why and what to do."""


@dataclass(frozen=True)
class Decision:
    role: Role
    hostname: str
    pattern: str
    key: str
    """The config key whose pattern decided, e.g. ``roles.controller``."""

    def explain(self, source: str) -> str:
        section, key = self.key.split(".", 1)
        return (
            f"{self.role}: {self.hostname!r} matches {self.pattern!r} "
            f"in [{section}] {key} of {source}"
        )


def check_hostname(name: str) -> None:
    if not is_label(name):
        raise RoleError(
            f"hostname {name!r} is not a valid name for the network: use {LABEL_RULE}. "
            "Fix: set the card's hostname (seed 'hostname:' or Raspberry Pi Imager) "
            "to e.g. 'engine-3' or 'controller'"
        )


def decide(hostname: str, config: Config) -> Decision:
    name = hostname.lower()
    check_hostname(name)
    for pattern in config.roles.unassigned:
        if fnmatch.fnmatchcase(name, pattern.lower()):
            raise RoleError(
                f"hostname {name!r} matches {pattern!r} in [roles] unassigned: this card "
                "was never given its own name, so it joins no cluster. Fix: set its hostname "
                "to 'controller' or e.g. 'engine-1' (card seed or Raspberry Pi Imager)"
            )
    for role, key, patterns in (
        (Role.CONTROLLER, "roles.controller", config.roles.controller),
        (Role.ENGINE, "roles.engine", config.roles.engine),
    ):
        for pattern in patterns:
            if fnmatch.fnmatchcase(name, pattern.lower()):
                return Decision(role, name, pattern, key)
    raise RoleError(
        f"hostname {name!r} matches no pattern in [roles] controller or [roles] engine. "
        'Fix: add a pattern, e.g. engine = ["*"]'
    )
