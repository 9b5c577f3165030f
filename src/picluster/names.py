"""The shapes of names a user writes: DNS labels (hostnames, the cluster) and login names.

Each is checked here once; the node config, the card manifest and the build
settings use these types, so a name means the same thing everywhere.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator

DNS_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
LOGIN_NAME = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")

LABEL_RULE = "1-63 lower-case letters, digits and '-', not starting or ending with '-'"


def is_label(value: str) -> bool:
    return bool(DNS_LABEL.match(value))


def _label(value: str) -> str:
    if not is_label(value):
        raise ValueError(f"must be a DNS label: {LABEL_RULE} (RFC 1123)")
    return value


def _login(value: str) -> str:
    if not LOGIN_NAME.match(value) or value == "root":
        raise ValueError(
            "must be a Linux user name (lower-case letters, digits, '_' and '-', "
            "starting with a letter; not root)"
        )
    return value


DnsLabel = Annotated[str, AfterValidator(_label)]
"""A hostname or cluster name as mDNS announces it."""
LoginName = Annotated[str, AfterValidator(_login)]
"""A first user's login name (never root)."""
