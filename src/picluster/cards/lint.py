"""Check a NoCloud seed directory before it goes onto a card.

A mistake in a seed shows up only minutes after a Pi boots, on a screen nobody
is looking at (cloud-init skips a broken ``user-data`` silently, a missing
``instance-id`` makes it ignore the whole seed). Every rule here reports
``file:line: severity: message. Fix: ...`` so the user can fix the seed on the
host. cloud-init's own JSON schema is used in addition when the ``cloudinit``
package is importable (``apt install cloud-init``, or put its source tree on
``PYTHONPATH``); without it our rules still run.

The rules are the table :data:`RULES`: one :class:`Rule` a row, each with its
id, level, message, fix, the function that finds it and a seed that triggers
it. To add a rule, add a check function and a row.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import re
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml

from picluster import config as runtime_config
from picluster import roles
from picluster import secret as cluster_secret
from picluster.cards import bootfs
from picluster.cards.manifest import key_problem
from picluster.cards.seeds import CONFIG_PATH, SECRET_PATH, SEED_FILES
from picluster.findings import Finding, Level
from picluster.findings import has_errors as has_errors

Severity = Level
"""The levels under the name the ``lint`` callers use."""

NETWORK_INSTALL_KEYS = (
    "packages",
    "package_update",
    "package_upgrade",
    "package_reboot_if_required",
)
DOES_NOTHING: dict[str, str] = {
    "apt": (
        "apt mirror/source settings only matter for network installs, which picluster "
        "cards do not do, and they rewrite the image's sources"
    ),
    "snap": "Debian and Raspberry Pi OS have no snapd in the image: does nothing",
    "ubuntu_pro": "Ubuntu only: does nothing on Debian/Raspberry Pi OS",
    "ubuntu_advantage": "Ubuntu only: does nothing on Debian/Raspberry Pi OS",
    "landscape": "Ubuntu only: does nothing on Debian/Raspberry Pi OS",
    "rh_subscription": "Red Hat only: does nothing on Debian",
    "yum_repos": "yum/dnf only: does nothing on Debian",
    "zypper": "SUSE only: does nothing on Debian",
    "spacewalk": "Red Hat only: does nothing on Debian",
    "byobu_by_default": "byobu is not in the image: does nothing",
}
PASSWORD_KEYS = ("passwd", "hashed_passwd", "plain_text_passwd", "password")
HASH_KEYS = ("passwd", "hashed_passwd")
"""Keys cloud-init reads as a crypt(3) hash, never as the password itself."""
_CRYPT_HASH = re.compile(r"^\$[0-9a-z]+\$\S+\$\S+$")
"""'$y$j9T$salt$hash' (yescrypt, what Raspberry Pi Imager writes for trixie), '$6$...', ..."""

IMAGE_PACKAGES = frozenset({"avahi-daemon", "libnss-mdns", "openssh-server", "python3", "sudo"})
"""Packages every picluster image holds (Raspberry Pi OS stage2 and the debian base both
install them; stage-cluster adds python3, avahi-daemon, libnss-mdns): asking cloud-init
for them installs nothing."""
APT_LOCAL_KEYS = frozenset(
    {"conf", "preserve_sources_list", "proxy", "http_proxy", "https_proxy", "ftp_proxy"}
)
"""``apt:`` keys that only write apt.conf. With ``preserve_sources_list: true`` (cloud-init's
default is false, which regenerates sources.list) the image's sources stay as built."""

CMDLINE = "cmdline.txt"
"""The kernel command line on the boot partition: the firmware reads its first line only."""
_DS_NOCLOUD = re.compile(r"(?:^|\s)(ds=nocloud(?:-net)?(?:;\S*)?)(?=\s|$)")
_IMAGER_ID = re.compile(r"^rpi-imager-(\d{12,14})$")
"""Raspberry Pi Imager 2.x's instance-id: ``rpi-imager-<milliseconds since 1970>``."""

_FILES = ("meta-data", "user-data", "network-config")
"""The seed files lint reads, in the order it reads them."""


# --- YAML with line numbers -------------------------------------------------


def _compose(text: str) -> yaml.Node | None:
    return yaml.compose(text, Loader=yaml.SafeLoader)


def _get(node: yaml.Node | None, key: str) -> tuple[yaml.Node, yaml.Node] | None:
    """(key node, value node) of ``key`` in a mapping node."""
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            if isinstance(k, yaml.ScalarNode) and k.value == key:
                return k, v
    return None


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


def _scalar(node: yaml.Node | None) -> str | None:
    return node.value if isinstance(node, yaml.ScalarNode) else None


def _path_line(node: yaml.Node | None, path: str) -> int:
    """Line of the deepest node named by a dotted schema path such as ``users.0.name``."""
    line = 1
    for part in path.split(".") if path else []:
        if isinstance(node, yaml.SequenceNode) and part.isdigit() and int(part) < len(node.value):
            node = node.value[int(part)]
        elif (found := _get(node, part)) is not None:
            node = found[1]
            line = _line(found[0])
            continue
        else:
            break
        line = _line(node)
    return line


def _items(node: yaml.Node | None) -> Iterator[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        yield from node.value


# --- the seed, read once for all rules --------------------------------------


@dataclass(frozen=True)
class _Doc:
    """One seed file as read: ``text`` is None when it is missing or not UTF-8."""

    text: str | None = None
    not_utf8: str | None = None
    data: Any = None
    node: yaml.Node | None = None
    error: yaml.YAMLError | None = None

    @property
    def parsed(self) -> bool:
        return self.text is not None and self.error is None


def _read(path: Path) -> _Doc:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return _Doc()
    except UnicodeDecodeError as exc:
        return _Doc(not_utf8=exc.reason)
    try:
        return _Doc(text, data=yaml.safe_load(text), node=_compose(text))
    except yaml.YAMLError as exc:
        return _Doc(text, error=exc)


@dataclass(frozen=True)
class _WriteFile:
    """One ``write_files`` entry of user-data."""

    node: yaml.Node
    path: str | None
    content: str
    content_line: int
    """Line of ``content:``, or of the entry when it has none."""


def _write_file(entry: yaml.Node) -> _WriteFile:
    content_kv = _get(entry, "content")
    content = _scalar(content_kv[1]) if content_kv else ""
    encoding = _scalar((_get(entry, "encoding") or (None, None))[1]) or ""
    if content and encoding in ("b64", "base64"):
        with contextlib.suppress(ValueError):
            content = base64.b64decode(content).decode("utf-8", "replace")
    return _WriteFile(
        entry,
        _scalar((_get(entry, "path") or (None, None))[1]),
        content or "",
        _line(content_kv[1]) if content_kv else _line(entry),
    )


def _valid_hostname(hostname: str) -> bool:
    try:
        roles.check_hostname(hostname)
    except roles.RoleError:
        return False
    return True


_Place = tuple[str, int, str]
"""(seed file, line, hostname)."""


class _Seed:
    """A seed directory as the rules see it: each file read and parsed once."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self._docs: dict[str, _Doc] = {}

    def doc(self, name: str) -> _Doc:
        if name not in self._docs:
            self._docs[name] = _read(self.dir / name)
        return self._docs[name]

    def mapping(self, name: str) -> tuple[dict[str, Any], yaml.Node | None] | None:
        """The file's YAML when it is a mapping: all the content rules read."""
        doc = self.doc(name)
        return (doc.data, doc.node) if doc.parsed and isinstance(doc.data, dict) else None

    def user_key(self, key: str) -> tuple[yaml.Node, yaml.Node] | None:
        """(key node, value node) of a top-level key of user-data."""
        user = self.mapping("user-data")
        return _get(user[1], key) if user else None

    @cached_property
    def users(self) -> list[yaml.Node]:
        found = self.user_key("users")
        return list(_items(found[1] if found else None))

    @cached_property
    def default_user(self) -> yaml.Node | None:
        """The singular ``user:`` mapping (Raspberry Pi Imager's), laid over cloud-init's
        default user: the image's first user."""
        found = self.user_key("user")
        return found[1] if found and isinstance(found[1], yaml.MappingNode) else None

    @cached_property
    def accounts(self) -> list[tuple[str, yaml.Node]]:
        """Every user entry with the key it stands under: ``users`` items, then ``user``."""
        out = [("users", node) for node in self.users]
        if self.default_user is not None:
            out.append(("user", self.default_user))
        return out

    @cached_property
    def instance_id(self) -> tuple[int, str] | None:
        """meta-data's ``instance-id``, with its line."""
        meta = self.mapping("meta-data")
        found = _get(meta[1], "instance-id") if meta else None
        value = _scalar(found[1]) if found else None
        return (_line(found[0]), value) if found and value else None  # type: ignore[index]

    @cached_property
    def cmdline(self) -> list[str] | None:
        """cmdline.txt's lines, when the folder is a boot partition that has one."""
        try:
            text = (self.dir / CMDLINE).read_text(encoding="utf-8", errors="replace")
        except (FileNotFoundError, IsADirectoryError):
            return None
        return text.splitlines() or [""]

    @cached_property
    def nocloud(self) -> tuple[str, dict[str, str]] | None:
        """The ``ds=nocloud;...`` word of cmdline.txt's first line and its fields (i=, s=, h=)."""
        found = _DS_NOCLOUD.search(self.cmdline[0]) if self.cmdline else None
        if found is None:
            return None
        word = found.group(1)
        fields = dict(
            item.partition("=")[::2] for item in word.split(";")[1:] if item and "=" in item
        )
        return word, fields

    @cached_property
    def meta_hostname(self) -> tuple[int, str] | None:
        """meta-data's ``local-hostname``, with its line."""
        meta = self.mapping("meta-data")
        if meta is None or meta[0].get("local-hostname") is None:
            return None
        key = _get(meta[1], "local-hostname")[0]  # type: ignore[index]
        return _line(key), str(meta[0]["local-hostname"])

    @cached_property
    def hostname(self) -> _Place | None:
        """The name the card takes: user-data's ``hostname``, else meta-data's (at line 1)."""
        if self.mapping("user-data") is None:
            return None
        host = self.user_key("hostname")
        if host and _scalar(host[1]) is not None:
            return "user-data", _line(host[1]), str(_scalar(host[1]))
        if self.meta_hostname and self.meta_hostname[1]:
            return "meta-data", 1, self.meta_hostname[1]
        return None

    @cached_property
    def write_files(self) -> list[_WriteFile]:
        found = self.user_key("write_files")
        return [_write_file(entry) for entry in _items(found[1] if found else None)]

    @cached_property
    def secrets(self) -> list[_WriteFile]:
        return [f for f in self.write_files if f.path == SECRET_PATH]

    @cached_property
    def configs(self) -> list[tuple[int, runtime_config.Config | runtime_config.ConfigError]]:
        """Each cluster.toml that user-data writes, parsed, with the line of its content."""
        out: list[tuple[int, runtime_config.Config | runtime_config.ConfigError]] = []
        for f in self.write_files:
            if _is_config_layer(f.path):
                try:
                    cfg = runtime_config.parse(f.content, f"user-data: write_files {f.path}")
                except runtime_config.ConfigError as exc:
                    out.append((f.content_line, exc))
                else:
                    out.append((f.content_line, cfg))
        return out

    @cached_property
    def role(
        self,
    ) -> tuple[str, int, roles.Decision | roles.SelfNaming | roles.RoleError] | None:
        """The role of a valid hostname under the last cluster.toml that parses (or defaults)."""
        if self.hostname is None or not _valid_hostname(self.hostname[2]):
            return None
        name, line, hostname = self.hostname
        parsed = [c for _, c in self.configs if isinstance(c, runtime_config.Config)]
        cfg = parsed[-1] if parsed else runtime_config.Config()
        try:
            return name, line, roles.self_naming(hostname, cfg) or roles.decide(hostname, cfg)
        except roles.RoleError as exc:
            return name, line, exc

    @cached_property
    def netplan(self) -> yaml.Node | None:
        """network-config's ``network`` node when it is netplan version 1 or 2."""
        found = self.mapping("network-config")
        if found is None:
            return None
        data, node = found
        net = data.get("network", data)
        if not isinstance(net, dict) or net.get("version") not in (1, 2):
            return None
        network = _get(node, "network")
        return network[1] if network else node


# --- the rules' checks: each yields (seed file, line, fields for the text) ---

_Hit = tuple[str, int, dict[str, Any]]
_Check = Callable[[_Seed], Iterable[_Hit]]


def _not_utf8(seed: _Seed) -> Iterator[_Hit]:
    for name in _FILES:
        if (reason := seed.doc(name).not_utf8) is not None:
            yield name, 1, {"reason": reason}


def _absent(name: str) -> _Check:
    """The file is missing, or not UTF-8 (which ``encoding`` reports too)."""

    def check(seed: _Seed) -> Iterator[_Hit]:
        if seed.doc(name).text is None:
            yield name, 1, {}

    return check


def _no_header(seed: _Seed) -> Iterator[_Hit]:
    text = seed.doc("user-data").text
    if text is None:
        return
    first = text.splitlines()[0].rstrip() if text.strip() else ""
    if first != "#cloud-config":
        yield "user-data", 1, {}


def _tabs(seed: _Seed) -> Iterator[_Hit]:
    for name in _FILES:
        for number, line in enumerate((seed.doc(name).text or "").splitlines(), 1):
            if "\t" in line:
                yield name, number, {}


def _yaml_error(seed: _Seed) -> Iterator[_Hit]:
    for name in _FILES:
        exc = seed.doc(name).error
        if isinstance(exc, yaml.MarkedYAMLError):
            mark = exc.problem_mark or exc.context_mark
            yield name, mark.line + 1 if mark else 1, {"problem": exc.problem or str(exc)}


def _yaml_error_unplaced(seed: _Seed) -> Iterator[_Hit]:
    for name in _FILES:
        exc = seed.doc(name).error
        if exc is not None and not isinstance(exc, yaml.MarkedYAMLError):
            yield name, 1, {"error": exc}


def _not_mapping(seed: _Seed) -> Iterator[_Hit]:
    for name in _FILES:
        doc = seed.doc(name)
        empty_user_data = name == "user-data" and doc.data is None
        if doc.parsed and not isinstance(doc.data, dict) and not empty_user_data:
            yield name, 1, {"file": name}


def _instance_id_underscore(seed: _Seed) -> Iterator[_Hit]:
    meta = seed.mapping("meta-data")
    wrong = _get(meta[1], "instance_id") if meta else None
    if wrong:
        yield "meta-data", _line(wrong[0]), {}


def _instance_id_missing(seed: _Seed) -> Iterator[_Hit]:
    meta = seed.mapping("meta-data")
    if meta and "instance-id" not in meta[0] and not _get(meta[1], "instance_id"):
        yield "meta-data", 1, {}


def _instance_id_empty(seed: _Seed) -> Iterator[_Hit]:
    meta = seed.mapping("meta-data")
    if meta and "instance-id" in meta[0] and not str(meta[0]["instance-id"]).strip():
        yield "meta-data", _line(_get(meta[1], "instance-id")[0]), {}  # type: ignore[index]


def _invalid_hostname(seed: _Seed) -> Iterator[_Hit]:
    # meta-data's name is checked where it stands and, when user-data names none,
    # again as the card's name (at line 1), as lint always has.
    places: list[_Place] = []
    if seed.meta_hostname is not None:
        places.append(("meta-data", *seed.meta_hostname))
    if seed.hostname is not None:
        places.append(seed.hostname)
    for name, line, hostname in places:
        if not _valid_hostname(hostname):
            yield name, line, {"hostname": hostname}


def _role_error(seed: _Seed) -> Iterator[_Hit]:
    if seed.role and isinstance(seed.role[2], roles.RoleError):
        yield seed.role[0], seed.role[1], {"error": seed.role[2]}


def _is_config_layer(path: str) -> bool:
    """The image's cluster.toml or a layer in cluster.toml.d/ (what ``cards`` writes)."""
    return path == CONFIG_PATH or (
        path.startswith(f"{CONFIG_PATH}{runtime_config.DROPIN_SUFFIX}/") and path.endswith(".toml")
    )


def _role(seed: _Seed) -> Iterator[_Hit]:
    if seed.role and isinstance(seed.role[2], roles.Decision | roles.SelfNaming):
        yield seed.role[0], seed.role[1], {"role": seed.role[2].explain(CONFIG_PATH)}


def _hostname_mismatch(seed: _Seed) -> Iterator[_Hit]:
    if seed.hostname and seed.hostname[0] == "user-data" and seed.meta_hostname:
        _, line, hostname = seed.hostname
        meta = seed.meta_hostname[1]
        if meta and meta != hostname:
            yield "user-data", line, {"hostname": hostname, "meta": meta}


def _no_hostname(seed: _Seed) -> Iterator[_Hit]:
    if seed.mapping("user-data") is not None and seed.hostname is None:
        yield "user-data", 1, {}


def _top_level_keys(seed: _Seed) -> Iterator[yaml.Node]:
    user = seed.mapping("user-data")
    if user and isinstance(user[1], yaml.MappingNode):
        for key, _ in user[1].value:
            yield key


def _image_packages(seed: _Seed) -> list[str] | None:
    """``packages:`` when every entry is a plain name the image already holds, else None."""
    found = seed.user_key("packages")
    names = [_scalar(item) for item in _items(found[1] if found else None)]
    if not names or not all(name in IMAGE_PACKAGES for name in names):
        return None
    return [str(name) for name in names]


def _network_install(seed: _Seed) -> Iterator[_Hit]:
    for key in _top_level_keys(seed):
        if str(key.value) == "packages" and _image_packages(seed) is not None:
            continue  # the "packages" info says what that costs
        if str(key.value) in NETWORK_INSTALL_KEYS:
            yield "user-data", _line(key), {"key": key.value}


def _packages_in_image(seed: _Seed) -> Iterator[_Hit]:
    names = _image_packages(seed)
    if names is not None:
        key = seed.user_key("packages")[0]  # type: ignore[index]
        yield "user-data", _line(key), {"names": ", ".join(names)}


def _apt_conf_only(seed: _Seed) -> tuple[yaml.Node, dict[str, Any]] | None:
    """``apt:`` (key node, data) when it only writes apt.conf and keeps the image's sources."""
    found = seed.user_key("apt")
    user = seed.mapping("user-data")
    apt = user[0].get("apt") if user else None
    if found is None or not isinstance(apt, dict):
        return None
    if apt.get("preserve_sources_list") is not True or not set(apt) <= APT_LOCAL_KEYS:
        return None
    return found[0], apt


def _does_nothing(seed: _Seed) -> Iterator[_Hit]:
    for key in _top_level_keys(seed):
        if str(key.value) == "apt" and _apt_conf_only(seed) is not None:
            continue  # only apt.conf: the "apt" info says what it does
        if why := DOES_NOTHING.get(str(key.value)):
            yield "user-data", _line(key), {"key": key.value, "why": why}


def _apt_conf(seed: _Seed) -> Iterator[_Hit]:
    found = _apt_conf_only(seed)
    if found is None:
        return
    key, apt = found
    conf = str(apt.get("conf") or "")
    # Imager's one setting: a Pi has no clock, and until NTP has set it apt would
    # refuse package lists that look "not valid yet".
    what = (
        'Acquire::Check-Date "false" (apt accepts package lists while a Pi without a '
        "clock still has the wrong date)"
        if "check-date" in conf.lower()
        else "apt.conf settings"
    )
    yield "user-data", _line(key), {"what": what}


def _user_name(seed: _Seed) -> str | None:
    node = seed.default_user
    return _scalar((_get(node, "name") or (None, None))[1]) if node is not None else None


def _default_user(seed: _Seed) -> Iterator[_Hit]:
    found = seed.user_key("user")
    if found is None or seed.default_user is None:
        return
    name = _user_name(seed)
    keys = _get(seed.default_user, "ssh_authorized_keys")
    count = len(list(_items(keys[1] if keys else None)))
    login = f"{count} SSH key(s)" if count else "no SSH key (console login only)"
    if name is None:
        what = f"changes the image's first user (uid 1000), which keeps its name, with {login}"
        debian = ""
    else:
        what = (
            f"makes {name!r} the card's first user, with the image's groups and {login}: "
            f"Raspberry Pi OS renames the image's first user (uid 1000) to {name!r}"
        )
        # Debian's cloud-init has no rename: it adds the user beside uid 1000.
        debian = (
            f". On a Debian-base image cloud-init adds {name!r} as a new user instead; "
            f'set [jupyter] user = "{name}" there'
        )
    yield "user-data", _line(found[0]), {"what": what, "debian": debian}


_RUNCMD_KNOWN: tuple[tuple[re.Pattern[str], str], ...] = (
    (
        re.compile(r"^systemctl enable (--now )?(ssh|sshd)(\.service)?$"),
        "enables and starts sshd, which the picluster image already does: harmless",
    ),
    (re.compile(r"NOPASSWD"), "lets the user sudo without a password"),
    (re.compile(r"^(chmod 0?440 /etc/sudoers\.d/)"), ""),  # the line after the one above
    (re.compile(r"rfkill unblock wifi|:wlan"), "unblocks Wi-Fi"),
    (re.compile(r"rpi-connect"), "sets up Raspberry Pi Connect (it needs the Internet)"),
)


def _command(item: yaml.Node) -> str:
    if isinstance(item, yaml.SequenceNode):
        return " ".join(str(_scalar(word) or "") for word in item.value).strip()
    return str(_scalar(item) or "").strip()


def _runcmd(seed: _Seed) -> Iterator[_Hit]:
    found = seed.user_key("runcmd")
    if found is None:
        return
    commands = [_command(item) for item in _items(found[1])]
    said: list[str] = []
    other = 0
    for command in commands:
        what = next((w for pattern, w in _RUNCMD_KNOWN if pattern.search(command)), None)
        if what is None:
            other += 1
        elif what and what not in said:
            said.append(what)
    if other:
        said.append(f"{other} more that lint does not check")
    yield "user-data", _line(found[0]), {"count": len(commands), "what": "; ".join(said)}


def _ssh_pwauth(seed: _Seed) -> Iterator[_Hit]:
    found = seed.user_key("ssh_pwauth")
    user = seed.mapping("user-data")
    if found and user and user[0].get("ssh_pwauth") not in (False, "false", "no", None):
        yield "user-data", _line(found[1]), {}


def _password_keys(seed: _Seed) -> Iterator[_Hit]:
    for key in ("password", "chpasswd"):
        if found := seed.user_key(key):
            yield "user-data", _line(found[0]), {"key": key}


def _is_hash(node: yaml.Node | None) -> bool:
    value = _scalar(node)
    return value is not None and _CRYPT_HASH.match(value) is not None


def _hashed(user: yaml.Node) -> yaml.Node | None:
    """The key node of a ``passwd``/``hashed_passwd`` that holds a crypt hash."""
    for key in HASH_KEYS:
        found = _get(user, key)
        if found and _is_hash(found[1]):
            return found[0]
    return None


def _user_passwords(seed: _Seed) -> Iterator[_Hit]:
    for where, user in seed.accounts:
        for key in PASSWORD_KEYS:
            found = _get(user, key)
            if found is None or (key in HASH_KEYS and _is_hash(found[1])):
                continue
            problem = (
                "that is not a crypt hash ('$y$...', '$6$...'): cloud-init stores it as the "
                "hash, so no password ever matches"
                if key in HASH_KEYS
                else "in clear text, readable by anyone holding the card"
            )
            yield "user-data", _line(found[0]), {"where": where, "key": key, "problem": problem}


def _password_hash(seed: _Seed) -> Iterator[_Hit]:
    for where, user in seed.accounts:
        if (key := _hashed(user)) is not None:
            name = _scalar((_get(user, "name") or (None, None))[1])
            name = repr(name) if name else "the first user"
            yield "user-data", _line(key), {"where": where, "key": key.value, "name": name}


def _lock_passwd_false(seed: _Seed) -> Iterator[_Hit]:
    for _, user in seed.accounts:
        lock = _get(user, "lock_passwd")
        # Unlocked with a password hash is how a password is set (the "password" info).
        if lock and _scalar(lock[1]) in ("false", "False", "no") and _hashed(user) is None:
            yield "user-data", _line(lock[1]), {}


def _bad_ssh_keys(seed: _Seed) -> Iterator[_Hit]:
    user = seed.mapping("user-data")
    for holder in [user[1], *(node for _, node in seed.accounts)] if user else []:
        found = _get(holder, "ssh_authorized_keys")
        for item in _items(found[1] if found else None):
            key = _scalar(item)
            problem = key_problem(key) if key is not None else "is not a text line"
            if problem:
                yield "user-data", _line(item), {"problem": problem}


def _secret_permissions(seed: _Seed) -> Iterator[_Hit]:
    for f in seed.secrets:
        perms = _get(f.node, "permissions")
        value = _scalar(perms[1]) if perms else None
        if value is None or value.lstrip("0o") != "600":
            line = _line(perms[1]) if perms else _line(f.node)
            yield "user-data", line, {"permissions": value or "default (0644)"}


def _secret_owner(seed: _Seed) -> Iterator[_Hit]:
    for f in seed.secrets:
        owner = _get(f.node, "owner")
        if owner and _scalar(owner[1]) not in ("root:root", "root"):
            yield "user-data", _line(owner[1]), {}


def _bad_secret(seed: _Seed) -> Iterator[_Hit]:
    for f in seed.secrets:
        try:
            cluster_secret.parse(f.content, f"{SECRET_PATH} in user-data")
        except cluster_secret.SecretError as exc:
            yield "user-data", f.content_line, {"error": exc}


def _readable_on_host(seed: _Seed) -> Iterator[_Hit]:
    path = seed.dir / "user-data"
    for _ in seed.secrets:
        mode = path.stat().st_mode
        if mode & (stat.S_IRGRP | stat.S_IROTH):
            yield "user-data", 1, {"mode": f"{stat.S_IMODE(mode):04o}", "path": path}


def _bad_config(seed: _Seed) -> Iterator[_Hit]:
    for line, parsed in seed.configs:
        if isinstance(parsed, runtime_config.ConfigError):
            yield "user-data", line, {"error": parsed}


def _schema(seed: _Seed) -> Iterator[_Hit]:
    user = seed.mapping("user-data")
    validate = cloudinit_validator() if user else None
    if user is None or validate is None:
        return
    for path, message in validate(user[0]):
        yield "user-data", _path_line(user[1], path), {"path": path, "error": message}


def _imager_instance_id(seed: _Seed) -> Iterator[_Hit]:
    if seed.instance_id and (found := _IMAGER_ID.match(seed.instance_id[1])):
        when = datetime.fromtimestamp(int(found.group(1)) / 1000, UTC)
        yield (
            "meta-data",
            seed.instance_id[0],
            {
                "iid": seed.instance_id[1],
                "when": when.strftime("%Y-%m-%d %H:%M UTC"),
            },
        )


def _cmdline_split(seed: _Seed) -> Iterator[_Hit]:
    for number, line in enumerate(seed.cmdline or [], 1):
        if number > 1 and line.strip():
            yield CMDLINE, number, {"line": number}
            return


def _cmdline_no_root(seed: _Seed) -> Iterator[_Hit]:
    if seed.cmdline is not None and not any(
        word.startswith("root=") for word in seed.cmdline[0].split()
    ):
        yield CMDLINE, 1, {}


def _cmdline_nocloud(seed: _Seed) -> Iterator[_Hit]:
    if seed.nocloud is None:
        return
    word, fields = seed.nocloud
    said = []
    if "instance-id" in fields or "i" in fields:
        said.append(
            f"instance-id {fields.get('i') or fields['instance-id']!r}, which wins over "
            "meta-data's (Raspberry Pi Imager adds it)"
        )
    if seed_from := fields.get("s") or fields.get("seedfrom"):
        mine = seed_from.rstrip("/") in ("file:///boot/firmware", "/boot/firmware")
        said.append(
            f"the seed read from {seed_from}" + ("" if mine else ", not from this boot partition")
        )
    what = " and ".join(said) if said else "the seed on this boot partition"
    yield CMDLINE, 1, {"word": word, "what": what}


def _cmdline_id_differs(seed: _Seed) -> Iterator[_Hit]:
    if seed.nocloud is None or seed.instance_id is None:
        return
    word, fields = seed.nocloud
    kernel = fields.get("i") or fields.get("instance-id")
    if kernel and kernel != seed.instance_id[1]:
        yield CMDLINE, 1, {"word": word, "kernel": kernel, "meta": seed.instance_id[1]}


def _network_version(seed: _Seed) -> Iterator[_Hit]:
    if seed.mapping("network-config") is not None and seed.netplan is None:
        yield "network-config", 1, {}


def _wifi_without_country(seed: _Seed) -> Iterator[_Hit]:
    wifis = _get(seed.netplan, "wifis")
    if wifis and isinstance(wifis[1], yaml.MappingNode):
        for key, iface in wifis[1].value:
            if not _get(iface, "regulatory-domain"):
                yield "network-config", _line(key), {"iface": key.value}


# --- the table --------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    """One lint rule. Rules sharing an ``id`` are the variants of one check.

    ``message`` and ``fix`` are ``str.format`` templates filled with the fields
    ``check`` yields; the finding reads ``message. Fix: fix`` (just ``message``
    where ``fix`` is empty). ``example`` is a seed (file name: content, written
    with mode 0644) on which the rule fires.
    """

    id: str
    level: Level
    message: str
    fix: str
    check: _Check
    example: Mapping[str, str | bytes]

    def text(self, **fields: Any) -> str:
        message = self.message.format(**fields)
        return f"{message}. Fix: {self.fix.format(**fields)}" if self.fix else message

    def findings(self, seed: _Seed) -> Iterator[Finding]:
        for name, line, fields in self.check(seed):
            yield Finding(self.id, self.level, self.text(**fields), seed.dir / name, line)

    def run(self, directory: Path) -> list[Finding]:
        """This rule alone over a seed directory."""
        return list(self.findings(_Seed(directory)))


_HEX = "00112233445566778899aabbccddeeff" * 2


def _writes(path: str, **keys: str) -> dict[str, str]:
    """An example user-data that writes one file."""
    lines = "".join(f"  {key}: {value}\n" for key, value in keys.items())
    return {"user-data": f"#cloud-config\nwrite_files:\n- path: {path}\n{lines}"}


RULES: tuple[Rule, ...] = (
    # Findings on the same line of the same file print in this order.
    Rule(
        id="encoding",
        level=Level.ERROR,
        message="not UTF-8 ({reason})",
        fix="",
        check=_not_utf8,
        example={"meta-data": b"instance-id: caf\xe9\n"},
    ),
    Rule(
        id="missing-file",
        level=Level.ERROR,
        message="no meta-data: NoCloud ignores a seed without it",
        fix="run 'picluster cards' or write 'instance-id: <unique>' into meta-data",
        check=_absent("meta-data"),
        example={"user-data": "#cloud-config\n"},
    ),
    Rule(
        id="missing-file",
        level=Level.ERROR,
        message="no user-data: NoCloud needs the file, even if empty",
        fix="run 'picluster cards' or create it starting with '#cloud-config'",
        check=_absent("user-data"),
        example={"meta-data": "instance-id: i-1\n"},
    ),
    Rule(
        id="network",
        level=Level.INFO,
        message="no network-config: the image's default (DHCP on Ethernet) applies",
        fix="",
        check=_absent("network-config"),
        example={"user-data": "#cloud-config\n"},
    ),
    Rule(
        id="header",
        level=Level.ERROR,
        message="first line is not '#cloud-config': cloud-init treats the file as something "
        "else and ignores every key",
        fix="make '#cloud-config' the very first line",
        check=_no_header,
        example={"user-data": "# cloud-config\n"},
    ),
    Rule(
        id="tabs",
        level=Level.ERROR,
        message="tab character: YAML forbids tabs for indentation and cloud-init then ignores "
        "the whole file",
        fix="indent with spaces",
        check=_tabs,
        example={"user-data": "#cloud-config\nssh_pwauth:\tfalse\n"},
    ),
    Rule(
        id="yaml",
        level=Level.ERROR,
        message="YAML does not parse: {problem}",
        fix="check indentation and quoting on this line and the one before",
        check=_yaml_error,
        example={"user-data": "#cloud-config\nusers: [pi\n"},
    ),
    Rule(
        id="yaml",
        level=Level.ERROR,
        message="YAML does not parse: {error}",
        fix="",
        check=_yaml_error_unplaced,
        example={"user-data": "#cloud-config\nhostname: \x07\n"},
    ),
    Rule(
        id="yaml",
        level=Level.ERROR,
        message="{file} must be a YAML mapping",
        fix="",
        check=_not_mapping,
        example={"meta-data": "- instance-id: i-1\n"},
    ),
    Rule(
        id="instance-id",
        level=Level.ERROR,
        message="'instance_id' (underscore) is not read by NoCloud, which looks for 'instance-id'",
        fix="rename the key to instance-id",
        check=_instance_id_underscore,
        example={"meta-data": "instance_id: i-1\n"},
    ),
    Rule(
        id="instance-id",
        level=Level.ERROR,
        message="no instance-id: cloud-init will not treat this card as new",
        fix="add 'instance-id: <unique per card and per seeding>'",
        check=_instance_id_missing,
        example={"meta-data": "local-hostname: engine-1\n"},
    ),
    Rule(
        id="instance-id",
        level=Level.ERROR,
        message="instance-id is empty",
        fix="give it a unique value",
        check=_instance_id_empty,
        example={"meta-data": "instance-id: ''\n"},
    ),
    Rule(
        id="instance-id",
        level=Level.INFO,
        message="instance-id {iid!r} was written by Raspberry Pi Imager ({when}): cloud-init "
        "applies this seed once, on the first boot with that id",
        fix="",
        check=_imager_instance_id,
        example={"meta-data": "instance-id: rpi-imager-1766421912345\n"},
    ),
    Rule(
        id="cmdline",
        level=Level.ERROR,
        message="cmdline.txt continues on line {line}: the firmware reads only the first line, "
        "so the kernel never sees the rest",
        fix="join it into one line, words separated by spaces",
        check=_cmdline_split,
        example={"cmdline.txt": "console=tty1 root=LABEL=rootfs\nrootwait\n"},
    ),
    Rule(
        id="cmdline",
        level=Level.ERROR,
        message="cmdline.txt has no root= on its first line: the kernel cannot find the root "
        "file system and the Pi does not boot",
        fix="restore the line the image came with (e.g. 'console=tty1 root=PARTUUID=<id>-02 "
        "rootfstype=ext4 fsck.repair=yes rootwait'; a freshly flashed card has it)",
        check=_cmdline_no_root,
        example={"cmdline.txt": "console=tty1 rootwait\n"},
    ),
    Rule(
        id="cmdline",
        level=Level.INFO,
        message="cmdline.txt: '{word}' tells cloud-init to use NoCloud with {what}",
        fix="",
        check=_cmdline_nocloud,
        example={"cmdline.txt": "root=LABEL=rootfs rootwait ds=nocloud;i=rpi-imager-1766421912345"},
    ),
    Rule(
        id="cmdline",
        level=Level.WARNING,
        message="meta-data's instance-id {meta!r} is not the one cloud-init uses: cmdline.txt's "
        "'{word}' wins, so a card that already booted as {kernel!r} ignores this seed",
        fix="set i={meta} in cmdline.txt (or remove '{word}' from it)",
        check=_cmdline_id_differs,
        example={
            "meta-data": "instance-id: picluster-lab-controller-1\n",
            "cmdline.txt": "root=LABEL=rootfs ds=nocloud;i=rpi-imager-1766421912345",
        },
    ),
    Rule(
        id="no-effect",
        level=Level.WARNING,
        message="'{key}': installs from the network at first boot, which fails or hangs on a "
        "cluster without Internet and makes cards differ",
        fix="remove it; bake packages into the image (stage-cluster) instead",
        check=_network_install,
        example={"user-data": "#cloud-config\npackages: [htop]\n"},
    ),
    Rule(
        id="packages",
        level=Level.INFO,
        message="'packages': {names} is already in the picluster image, so nothing is "
        "installed; but cloud-init first runs 'apt-get update' late in the first boot, which "
        "needs the Internet then: without it cloud-init reports an error, and the card joins "
        "the cluster all the same",
        fix="",
        check=_packages_in_image,
        example={"user-data": "#cloud-config\npackages:\n- avahi-daemon\n"},
    ),
    Rule(
        id="apt",
        level=Level.INFO,
        message="'apt': only writes {what}; the image's package sources stay as built",
        fix="",
        check=_apt_conf,
        example={
            "user-data": "#cloud-config\napt:\n  preserve_sources_list: true\n  conf: |\n"
            '    Acquire { Check-Date "false"; };\n'
        },
    ),
    Rule(
        id="no-effect",
        level=Level.WARNING,
        message="'{key}': {why}",
        fix="remove it",
        check=_does_nothing,
        example={"user-data": "#cloud-config\nsnap:\n  commands: []\n"},
    ),
    Rule(
        id="password",
        level=Level.WARNING,
        # A warning, not an error: Raspberry Pi Imager writes it when you choose password
        # authentication for SSH, and such a card works; it is just not key-only.
        message="ssh_pwauth: true allows SSH logins with a password on this card, which "
        "anyone on the LAN can try; the picluster image is key-only otherwise",
        fix="ssh_pwauth: false (in Imager: 'Allow public-key authentication only') and log in "
        "with keys",
        check=_ssh_pwauth,
        example={"user-data": "#cloud-config\nssh_pwauth: true\n"},
    ),
    Rule(
        id="password",
        level=Level.ERROR,
        message="'{key}' sets a password (the same on every card, readable on the FAT partition)",
        fix="remove it; use ssh_authorized_keys",
        check=_password_keys,
        example={"user-data": "#cloud-config\nchpasswd:\n  expire: false\n"},
    ),
    Rule(
        id="password",
        level=Level.ERROR,
        message="{where}: '{key}' sets a password {problem}",
        fix="remove it, set lock_passwd: true and give ssh_authorized_keys",
        check=_user_passwords,
        example={"user-data": "#cloud-config\nusers:\n- name: pi\n  passwd: x\n"},
    ),
    Rule(
        id="password",
        level=Level.INFO,
        message="{where}: '{key}' is a password hash for {name} (Raspberry Pi Imager writes one "
        "when you type a password): it is for the console and sudo; SSH stays key-only unless "
        "ssh_pwauth is true. A key-only cluster needs none: leave the password empty in Imager",
        fix="",
        check=_password_hash,
        example={
            "user-data": "#cloud-config\nuser:\n  name: alice\n  lock_passwd: false\n"
            '  passwd: "$y$j9T$0123456789abcdef$0123456789abcdef0123456789abcdef01234567"\n'
        },
    ),
    Rule(
        id="user",
        level=Level.INFO,
        message="user: {what}; JupyterLab and ipp.Client() run as the first user "
        '([jupyter] user = "" means uid 1000){debian}',
        fix="",
        check=_default_user,
        example={"user-data": "#cloud-config\nuser:\n  name: alice\n"},
    ),
    Rule(
        id="runcmd",
        level=Level.INFO,
        message="runcmd: {count} command(s) run once, as root, at the end of the first boot "
        "(the picluster agent does not wait for them): {what}",
        fix="",
        check=_runcmd,
        example={"user-data": "#cloud-config\nruncmd:\n- [systemctl, enable, --now, ssh]\n"},
    ),
    Rule(
        id="password",
        level=Level.WARNING,
        message="lock_passwd: false allows password logins",
        fix="lock_passwd: true",
        check=_lock_passwd_false,
        example={"user-data": "#cloud-config\nusers:\n- name: pi\n  lock_passwd: false\n"},
    ),
    Rule(
        id="ssh-key",
        level=Level.ERROR,
        message="ssh_authorized_keys: the key {problem}: nobody can log in with it",
        fix="paste the whole line of your .pub file",
        check=_bad_ssh_keys,
        example={"user-data": "#cloud-config\nssh_authorized_keys:\n- ssh-rsa\n"},
    ),
    Rule(
        id="secret-mode",
        level=Level.ERROR,
        message=SECRET_PATH + " is written with permissions {permissions}: every user on "
        "the Pi could read the cluster secret",
        fix="permissions: '0600'",
        check=_secret_permissions,
        example=_writes(SECRET_PATH, permissions="'0644'", content=_HEX),
    ),
    Rule(
        id="secret-mode",
        level=Level.ERROR,
        message=SECRET_PATH + " must be owned by root",
        fix="owner: root:root",
        check=_secret_owner,
        example=_writes(SECRET_PATH, permissions="'0600'", owner="pi:pi", content=_HEX),
    ),
    Rule(
        id="secret",
        level=Level.ERROR,
        message="{error}",
        fix="",
        check=_bad_secret,
        example=_writes(SECRET_PATH, permissions="'0600'", content="abc"),
    ),
    Rule(
        id="secret-mode",
        level=Level.WARNING,
        message="this file holds the cluster secret and is readable by other users on this "
        "host (mode {mode})",
        fix="chmod 600 {path}",
        check=_readable_on_host,
        example=_writes(SECRET_PATH, permissions="'0600'", content=_HEX),
    ),
    Rule(
        id="config",
        level=Level.ERROR,
        message="{error}",
        fix="",
        check=_bad_config,
        example=_writes(CONFIG_PATH, content="'nmae = \"lab\"'"),
    ),
    Rule(
        id="hostname",
        level=Level.ERROR,
        message="hostname {hostname!r} is not a valid RFC 1123 label (1-63 lower-case "
        "letters, digits and '-', not starting or ending with '-')",
        fix="e.g. 'engine-3' or 'controller'",
        check=_invalid_hostname,
        example={"user-data": "#cloud-config\nhostname: Engine_1\n"},
    ),
    Rule(
        id="role",
        level=Level.ERROR,
        message="{error}",
        fix="",
        check=_role_error,
        example={
            "user-data": "#cloud-config\nhostname: raspberrypi\nwrite_files:\n"
            "- path: /etc/picluster/cluster.toml\n  content: |\n"
            '    [roles]\n    self_name = ""\n'
        },
    ),
    Rule(
        id="role",
        level=Level.INFO,
        message="{role}",
        fix="",
        check=_role,
        example={"user-data": "#cloud-config\nhostname: engine-1\n"},
    ),
    Rule(
        id="hostname",
        level=Level.WARNING,
        message="hostname {hostname!r} differs from meta-data local-hostname {meta!r}",
        fix="make them the same",
        check=_hostname_mismatch,
        example={
            "meta-data": "instance-id: i-1\nlocal-hostname: engine-2\n",
            "user-data": "#cloud-config\nhostname: engine-1\n",
        },
    ),
    Rule(
        id="hostname",
        level=Level.WARNING,
        message=(
            "no hostname: the card keeps the image's name, and names itself "
            "engine-<board serial digits> at first boot unless [roles] self_name is empty"
        ),
        fix="add 'hostname: controller' (or 'engine-1') to choose its name",
        check=_no_hostname,
        example={"user-data": "#cloud-config\nssh_pwauth: false\n"},
    ),
    Rule(
        id="schema",
        level=Level.ERROR,
        message="cloud-init schema: {path}: {error}",
        fix="",
        check=_schema,
        example={"user-data": "#cloud-config\nbogus_key: 1\n"},
    ),
    Rule(
        id="network",
        level=Level.ERROR,
        message="network-config needs 'version: 2' (netplan style)",
        fix="start with 'network:' / '  version: 2'",
        check=_network_version,
        example={"network-config": "network:\n  version: 3\n"},
    ),
    Rule(
        id="wifi-country",
        level=Level.WARNING,
        message="wifis.{iface} has no regulatory-domain: a Raspberry Pi keeps its radio "
        "blocked without a country",
        fix="regulatory-domain: GB (your two-letter country code)",
        check=_wifi_without_country,
        example={"network-config": "network:\n  version: 2\n  wifis:\n    wlan0: {}\n"},
    ),
)


# --- cloud-init's own schema ------------------------------------------------

_CLOUDINIT_SENTINEL: list[Any] = []


def cloudinit_validator() -> Any:
    """cloud-init's own schema check, or None when the module is not installed."""
    if _CLOUDINIT_SENTINEL:
        return _CLOUDINIT_SENTINEL[0]
    try:
        from cloudinit.config import schema as ci_schema  # type: ignore[import-not-found]
    except ImportError:
        _CLOUDINIT_SENTINEL.append(None)
        return None

    full = ci_schema.get_schema()

    def validate(data: dict[str, Any]) -> list[tuple[str, str]]:
        try:
            ci_schema.validate_cloudconfig_schema(data, schema=full, strict=True, log_details=False)
        except ci_schema.SchemaValidationError as exc:
            problems = getattr(exc, "schema_errors", None) or []
            return [(p.path, p.message) for p in problems] or [("", str(exc))]
        return []

    _CLOUDINIT_SENTINEL.append(validate)
    return validate


def schema_available() -> bool:
    return cloudinit_validator() is not None


def schema_version() -> str:
    if not schema_available():
        return ""
    try:
        from cloudinit import version  # type: ignore[import-not-found]

        return str(version.version_string())
    except (ImportError, AttributeError):
        return "unknown version"


# --- entry points -----------------------------------------------------------


def lint_dir(directory: Path) -> list[Finding]:
    seed = _Seed(directory)
    findings = [finding for rule in RULES for finding in rule.findings(seed)]
    return sorted(findings, key=lambda f: (f.file.name if f.file else "", f.line))


def lint_image(image: Path) -> list[Finding]:
    """Lint the seed and cmdline.txt in partition 1 (the FAT bootfs) of an image file or a
    card, read with mtools: no mounting, no root for a file. Findings name
    ``IMAGE::file``, the way mtools names a file inside an image."""
    if image.suffix == ".xz":
        raise bootfs.BootfsError(
            f"{image}: compressed. Fix: lint the card after flashing, the .img "
            f"('xz -dk {image}'), or the seed folder it was made from"
        )
    if shutil.which("mtype") is None:
        raise bootfs.BootfsError(f"{image}: reading it needs mtype. Fix: apt install mtools")
    try:
        part = bootfs.boot_partition(image)
        with tempfile.TemporaryDirectory(prefix="picluster-lint-") as tmp:
            folder = Path(tmp)
            present = []
            for name in (*SEED_FILES, CMDLINE):
                try:
                    data = bootfs.read_file(image, name, part)
                except bootfs.BootfsError:
                    continue  # mtype found no such file: the rules say what is missing
                (folder / name).write_bytes(data)
                (folder / name).chmod(0o600)  # as private as the card's own bootfs mount
                present.append(name)
            if not set(present) & set(SEED_FILES):
                raise bootfs.BootfsError(
                    f"{image}: its boot partition holds no user-data/meta-data. Fix: seed it "
                    "('picluster seed', or Raspberry Pi Imager's customisation) first"
                )
            findings = lint_dir(folder)
    except OSError as exc:
        raise bootfs.BootfsError(
            f"{image}: cannot read it ({exc.strerror or exc}). Fix: check the path; a card "
            "needs read access (sudo, or lint its mounted boot partition instead)"
        ) from None
    return [
        dataclasses.replace(f, file=Path(f"{image}::{f.file.name}")) if f.file else f
        for f in findings
    ]


def seed_dirs(path: Path) -> list[Path]:
    """``path`` itself when it is a seed, else its sub-directories that are seeds."""
    if any((path / name).exists() for name in SEED_FILES):
        return [path]
    return sorted(
        p for p in path.iterdir() if p.is_dir() and any((p / n).exists() for n in SEED_FILES)
    )
