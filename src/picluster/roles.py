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


@dataclass(frozen=True)
class SelfNaming:
    """What becomes of a card whose hostname is unassigned: it names itself."""

    hostname: str
    pattern: str
    name: str
    """``[roles] self_name`` with ``{id}`` spelled out for people."""
    role: Role

    def explain(self, source: str) -> str:
        return (
            f"{self.role}: {self.hostname!r} matches {self.pattern!r} in [roles] unassigned "
            f"of {source}: the card names itself {self.name} at first boot"
        )


def self_naming(hostname: str, config: Config) -> SelfNaming | None:
    """How an unnamed card with ``hostname`` will name itself (None: it is named, or
    ``[roles] self_name`` is empty and it will not)."""
    pattern = unassigned_pattern(hostname, config)
    template = config.roles.self_name
    if pattern is None or not template:
        return None
    role = decide(template.replace("{id}", "0" * 6), config).role
    name = template.replace("{id}", "<last 6 hex digits of its board serial>")
    return SelfNaming(hostname.lower(), pattern, name, role)


def check_hostname(name: str) -> None:
    if not is_label(name):
        raise RoleError(
            f"hostname {name!r} is not a valid name for the network: use {LABEL_RULE}. "
            "Fix: set the card's hostname (seed 'hostname:' or Raspberry Pi Imager) "
            "to e.g. 'engine-3' or 'controller'"
        )


def unassigned_pattern(hostname: str, config: Config) -> str | None:
    """The ``[roles] unassigned`` pattern ``hostname`` matches: a card nobody named."""
    name = hostname.lower()
    for pattern in config.roles.unassigned:
        if fnmatch.fnmatchcase(name, pattern.lower()):
            return pattern
    return None


def is_unassigned(hostname: str, config: Config) -> bool:
    return unassigned_pattern(hostname, config) is not None


def decide(hostname: str, config: Config) -> Decision:
    name = hostname.lower()
    check_hostname(name)
    pattern = unassigned_pattern(name, config)
    if pattern is not None:
        if config.roles.self_name:
            why = (
                "it names itself before the agent starts, and that did not happen: "
                "'journalctl -u picluster-agent' says why ('picluster name')"
            )
        else:
            why = "[roles] self_name is empty, so it joins no cluster"
        raise RoleError(
            f"hostname {name!r} matches {pattern!r} in [roles] unassigned: this card was "
            f"never given its own name, and {why}. Fix: set its hostname to 'controller' "
            "or e.g. 'engine-1' (card seed or Raspberry Pi Imager), or run 'sudo picluster name'"
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
