"""The first user: who it is, and running code as that user when started as root.

``[jupyter] user`` in ``cluster.toml`` is the one place that names it; empty, it
is the lowest uid from 1000 (the user the image was built with, whatever a
first-boot rename made of its name). No unit file and no systemd drop-in repeats it.
"""

from __future__ import annotations

import os
import pwd
from collections.abc import Callable

from picluster.config import Layered
from picluster.errors import ConfigurationError


def first_user(name: str, where: str = "[jupyter] user") -> pwd.struct_passwd:
    """The user ``name`` names, or (``name`` empty) the first one with uid >= 1000.
    ``where`` says where the name came from, for the error."""
    if name:
        try:
            return pwd.getpwnam(name)
        except KeyError:
            raise ConfigurationError(
                f"{where}: no such user {name!r} on this host. Fix: name an existing user, "
                'or [jupyter] user = "" for the first one (uid 1000)'
            ) from None
    users = sorted((p for p in pwd.getpwall() if 1000 <= p.pw_uid < 60000), key=lambda p: p.pw_uid)
    if not users:
        raise ConfigurationError(
            f"{where}: empty, and this host has no user with a uid from 1000. Fix: create "
            "the user (the card seed's users:) or name one in [jupyter] user"
        )
    return users[0]


def jupyter_user(layered: Layered) -> pwd.struct_passwd:
    """Who ``[jupyter] user`` names on this host; an error names the file that set it."""
    where = f"{layered.source_of('jupyter', 'user')}: [jupyter] user"
    return first_user(layered.config.jupyter.user, where)


def _switch(user: pwd.struct_passwd) -> None:
    os.setgroups(os.getgrouplist(user.pw_name, user.pw_gid))
    os.setgid(user.pw_gid)
    os.setuid(user.pw_uid)


def become(user: pwd.struct_passwd) -> None:
    """Drop from root to ``user`` for good: groups, gid, uid, and the login environment."""
    _switch(user)
    os.environ.update(
        HOME=user.pw_dir, USER=user.pw_name, LOGNAME=user.pw_name, SHELL=user.pw_shell
    )
    os.chdir(user.pw_dir)


def as_user(user: pwd.struct_passwd, work: Callable[[], object]) -> None:
    """Run ``work`` as ``user``: when root works for someone else, in a child process
    with the user's uid, gid and groups (a symlink they planted in their home then leads
    only where they could write anyway), its OSError coming back as an OSError here;
    otherwise right here."""
    if os.geteuid() != 0 or user.pw_uid == 0:
        work()
        return
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into the caller's code
        os.close(read)
        code = 1  # anything but a clean return is a failure
        try:
            _switch(user)
            work()
            code = 0
        except OSError as exc:
            os.write(write, f"{exc.errno or 0} {exc.strerror or exc}".encode())
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read, "rb") as fh:
        report = fh.read().decode(errors="replace")
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        errno_text, _, text = report.partition(" ")
        raise OSError(int(errno_text or 0), text or "failed as that user")
