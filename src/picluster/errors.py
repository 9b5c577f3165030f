"""The one error family of picluster and its exit statuses.

Every error a user can cause is a ``PiclusterError`` whose ``str()`` names the
file, the key and the fix; the command line prints it and exits with its
``exit_status``, never a traceback.
"""

from __future__ import annotations

EX_USAGE = 64
EX_CONFIG = 78
"""sysexits' EX_CONFIG: the agent's unit does not restart on it (RestartPreventExitStatus)."""


class PiclusterError(Exception):
    """Something the user can fix; ``str()`` says what and how."""

    exit_status: int = 1


class ConfigurationError(PiclusterError):
    """A file or setting the user wrote cannot be used (exit status EX_CONFIG)."""

    exit_status = EX_CONFIG
