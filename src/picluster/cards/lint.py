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
import stat
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml

from picluster import config as runtime_config
from picluster import roles
from picluster import secret as cluster_secret
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
    def role(self) -> tuple[str, int, roles.Decision | roles.RoleError] | None:
        """The role of a valid hostname under the last cluster.toml that parses (or defaults)."""
        if self.hostname is None or not _valid_hostname(self.hostname[2]):
            return None
        name, line, hostname = self.hostname
        parsed = [c for _, c in self.configs if isinstance(c, runtime_config.Config)]
        cfg = parsed[-1] if parsed else runtime_config.Config()
        try:
            return name, line, roles.decide(hostname, cfg)
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
    if seed.role and isinstance(seed.role[2], roles.Decision):
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


def _network_install(seed: _Seed) -> Iterator[_Hit]:
    for key in _top_level_keys(seed):
        if str(key.value) in NETWORK_INSTALL_KEYS:
            yield "user-data", _line(key), {"key": key.value}


def _does_nothing(seed: _Seed) -> Iterator[_Hit]:
    for key in _top_level_keys(seed):
        if why := DOES_NOTHING.get(str(key.value)):
            yield "user-data", _line(key), {"key": key.value, "why": why}


def _ssh_pwauth(seed: _Seed) -> Iterator[_Hit]:
    found = seed.user_key("ssh_pwauth")
    user = seed.mapping("user-data")
    if found and user and user[0].get("ssh_pwauth") not in (False, "false", "no", None):
        yield "user-data", _line(found[1]), {}


def _password_keys(seed: _Seed) -> Iterator[_Hit]:
    for key in ("password", "chpasswd"):
        if found := seed.user_key(key):
            yield "user-data", _line(found[0]), {"key": key}


def _user_passwords(seed: _Seed) -> Iterator[_Hit]:
    for user in seed.users:
        for key in PASSWORD_KEYS:
            if found := _get(user, key):
                yield "user-data", _line(found[0]), {"key": key}


def _lock_passwd_false(seed: _Seed) -> Iterator[_Hit]:
    for user in seed.users:
        lock = _get(user, "lock_passwd")
        if lock and _scalar(lock[1]) in ("false", "False", "no"):
            yield "user-data", _line(lock[1]), {}


def _bad_ssh_keys(seed: _Seed) -> Iterator[_Hit]:
    user = seed.mapping("user-data")
    for holder in [user[1], *seed.users] if user else []:
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
        id="no-effect",
        level=Level.WARNING,
        message="'{key}': installs from the network at first boot, which fails or hangs on a "
        "cluster without Internet and makes cards differ",
        fix="remove it; bake packages into the image (stage-cluster) instead",
        check=_network_install,
        example={"user-data": "#cloud-config\npackages: [htop]\n"},
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
        level=Level.ERROR,
        message="ssh_pwauth enables SSH password login on every card",
        fix="ssh_pwauth: false and log in with keys",
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
        message="users: '{key}' sets a password",
        fix="remove it, set lock_passwd: true and give ssh_authorized_keys",
        check=_user_passwords,
        example={"user-data": "#cloud-config\nusers:\n- name: pi\n  passwd: x\n"},
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
        example={"user-data": "#cloud-config\nhostname: raspberrypi\n"},
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
        message="no hostname: the card keeps the image's name and joins no cluster",
        fix="add 'hostname: engine-1' (or controller)",
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


def seed_dirs(path: Path) -> list[Path]:
    """``path`` itself when it is a seed, else its sub-directories that are seeds."""
    if any((path / name).exists() for name in SEED_FILES):
        return [path]
    return sorted(
        p for p in path.iterdir() if p.is_dir() and any((p / n).exists() for n in SEED_FILES)
    )
