"""Check a NoCloud seed directory before it goes onto a card.

A mistake in a seed shows up only minutes after a Pi boots, on a screen nobody
is looking at (cloud-init skips a broken ``user-data`` silently, a missing
``instance-id`` makes it ignore the whole seed). Every rule here reports
``file:line: severity: message. Fix: ...`` so the user can fix the seed on the
host. cloud-init's own JSON schema is used in addition when the ``cloudinit``
package is importable (``apt install cloud-init``, or put its source tree on
``PYTHONPATH``); without it our rules still run.
"""

from __future__ import annotations

import base64
import contextlib
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import yaml

from picluster import config as runtime_config
from picluster import roles
from picluster import secret as cluster_secret
from picluster.cards.manifest import key_problem
from picluster.cards.seeds import CONFIG_PATH, SECRET_PATH, SEED_FILES


class Severity(StrEnum):
    ERROR = "error"
    WARNING = "warning"
    INFO = "info"


@dataclass(frozen=True)
class Finding:
    file: Path
    line: int
    severity: Severity
    rule: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.severity}: {self.message} [{self.rule}]"


NETWORK_INSTALL = (
    "installs from the network at first boot, which fails or hangs on a cluster "
    "without Internet and makes cards differ. Fix: remove it; bake packages into the "
    "image (stage-cluster) instead"
)
NO_EFFECT: dict[str, str] = {
    "packages": NETWORK_INSTALL,
    "package_update": NETWORK_INSTALL,
    "package_upgrade": NETWORK_INSTALL,
    "package_reboot_if_required": NETWORK_INSTALL,
    "apt": (
        "apt mirror/source settings only matter for network installs, which picluster "
        "cards do not do, and they rewrite the image's sources. Fix: remove it"
    ),
    "snap": "Debian and Raspberry Pi OS have no snapd in the image: does nothing. Fix: remove it",
    "ubuntu_pro": "Ubuntu only: does nothing on Debian/Raspberry Pi OS. Fix: remove it",
    "ubuntu_advantage": "Ubuntu only: does nothing on Debian/Raspberry Pi OS. Fix: remove it",
    "landscape": "Ubuntu only: does nothing on Debian/Raspberry Pi OS. Fix: remove it",
    "rh_subscription": "Red Hat only: does nothing on Debian. Fix: remove it",
    "yum_repos": "yum/dnf only: does nothing on Debian. Fix: remove it",
    "zypper": "SUSE only: does nothing on Debian. Fix: remove it",
    "spacewalk": "Red Hat only: does nothing on Debian. Fix: remove it",
    "byobu_by_default": "byobu is not in the image: does nothing. Fix: remove it",
}
PASSWORD_KEYS = ("passwd", "hashed_passwd", "plain_text_passwd", "password")


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


# --- rules ------------------------------------------------------------------


class _Linter:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.findings: list[Finding] = []

    def add(self, name: str, line: int, severity: Severity, rule: str, message: str) -> None:
        self.findings.append(Finding(self.dir / name, line, severity, rule, message))

    def read(self, name: str) -> str | None:
        path = self.dir / name
        try:
            return path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except UnicodeDecodeError as exc:
            self.add(name, 1, Severity.ERROR, "encoding", f"not UTF-8 ({exc.reason})")
            return None

    def tabs(self, name: str, text: str) -> None:
        for number, line in enumerate(text.splitlines(), 1):
            if "\t" in line:
                self.add(
                    name,
                    number,
                    Severity.ERROR,
                    "tabs",
                    "tab character: YAML forbids tabs for indentation and cloud-init "
                    "then ignores the whole file. Fix: indent with spaces",
                )

    def parse(self, name: str, text: str) -> tuple[Any, yaml.Node | None] | None:
        try:
            return yaml.safe_load(text), _compose(text)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line = mark.line + 1 if mark else 1
            problem = exc.problem or str(exc)
            self.add(
                name,
                line,
                Severity.ERROR,
                "yaml",
                f"YAML does not parse: {problem}. Fix: check indentation and quoting on "
                "this line and the one before",
            )
        except yaml.YAMLError as exc:
            self.add(name, 1, Severity.ERROR, "yaml", f"YAML does not parse: {exc}")
        return None

    # meta-data ---------------------------------------------------------------

    def meta_data(self) -> str | None:
        name = "meta-data"
        text = self.read(name)
        if text is None:
            self.add(
                name,
                1,
                Severity.ERROR,
                "missing-file",
                "no meta-data: NoCloud ignores a seed without it. Fix: run "
                "'picluster cards' or write 'instance-id: <unique>' into meta-data",
            )
            return None
        self.tabs(name, text)
        parsed = self.parse(name, text)
        if parsed is None:
            return None
        data, node = parsed
        if not isinstance(data, dict):
            self.add(name, 1, Severity.ERROR, "yaml", "meta-data must be a YAML mapping")
            return None
        wrong = _get(node, "instance_id")
        if wrong:
            self.add(
                name,
                _line(wrong[0]),
                Severity.ERROR,
                "instance-id",
                "'instance_id' (underscore) is not read by NoCloud, which looks for "
                "'instance-id'. Fix: rename the key to instance-id",
            )
        if "instance-id" not in data:
            if not wrong:
                self.add(
                    name,
                    1,
                    Severity.ERROR,
                    "instance-id",
                    "no instance-id: cloud-init will not treat this card as new. "
                    "Fix: add 'instance-id: <unique per card and per seeding>'",
                )
        elif not str(data["instance-id"]).strip():
            self.add(
                name,
                _line(_get(node, "instance-id")[0]),  # type: ignore[index]
                Severity.ERROR,
                "instance-id",
                "instance-id is empty. Fix: give it a unique value",
            )
        hostname = data.get("local-hostname")
        if hostname is not None:
            line = _line(_get(node, "local-hostname")[0])  # type: ignore[index]
            self.hostname(name, line, str(hostname), None)
            return str(hostname)
        return None

    # user-data ---------------------------------------------------------------

    def hostname(
        self, name: str, line: int, hostname: str, cfg: runtime_config.Config | None
    ) -> None:
        try:
            roles.check_hostname(hostname)
        except roles.RoleError:
            self.add(
                name,
                line,
                Severity.ERROR,
                "hostname",
                f"hostname {hostname!r} is not a valid RFC 1123 label (1-63 lower-case "
                "letters, digits and '-', not starting or ending with '-'). Fix: e.g. "
                "'engine-3' or 'controller'",
            )
            return
        if cfg is None:
            return
        try:
            decision = roles.decide(hostname, cfg)
        except roles.RoleError as exc:
            self.add(name, line, Severity.ERROR, "role", str(exc))
            return
        self.add(name, line, Severity.INFO, "role", decision.explain(CONFIG_PATH))

    def user_data(self, meta_hostname: str | None) -> None:
        name = "user-data"
        text = self.read(name)
        if text is None:
            self.add(
                name,
                1,
                Severity.ERROR,
                "missing-file",
                "no user-data: NoCloud needs the file, even if empty. Fix: run "
                "'picluster cards' or create it starting with '#cloud-config'",
            )
            return
        first = text.splitlines()[0].rstrip() if text.strip() else ""
        if first != "#cloud-config":
            self.add(
                name,
                1,
                Severity.ERROR,
                "header",
                "first line is not '#cloud-config': cloud-init treats the file as something "
                "else and ignores every key. Fix: make '#cloud-config' the very first line",
            )
        self.tabs(name, text)
        parsed = self.parse(name, text)
        if parsed is None:
            return
        data, node = parsed
        if data is None:
            return
        if not isinstance(data, dict):
            self.add(name, 1, Severity.ERROR, "yaml", "user-data must be a YAML mapping")
            return
        self.no_effect(name, node)
        self.passwords(name, data, node)
        self.ssh_keys(name, node)
        cfg = self.write_files(name, node)
        host = _get(node, "hostname")
        if host and _scalar(host[1]) is not None:
            hostname = str(_scalar(host[1]))
            self.hostname(name, _line(host[1]), hostname, cfg or runtime_config.Config())
            if meta_hostname and meta_hostname != hostname:
                self.add(
                    name,
                    _line(host[1]),
                    Severity.WARNING,
                    "hostname",
                    f"hostname {hostname!r} differs from meta-data local-hostname "
                    f"{meta_hostname!r}. Fix: make them the same",
                )
        elif meta_hostname:
            self.hostname("meta-data", 1, meta_hostname, cfg or runtime_config.Config())
        else:
            self.add(
                name,
                1,
                Severity.WARNING,
                "hostname",
                "no hostname: the card keeps the image's name and joins no cluster. "
                "Fix: add 'hostname: engine-1' (or controller)",
            )
        self.schema(name, data, node)

    def no_effect(self, name: str, node: yaml.Node | None) -> None:
        if not isinstance(node, yaml.MappingNode):
            return
        for key, _ in node.value:
            message = NO_EFFECT.get(str(key.value))
            if message:
                self.add(
                    name, _line(key), Severity.WARNING, "no-effect", f"'{key.value}': {message}"
                )

    def passwords(self, name: str, data: dict[str, Any], node: yaml.Node | None) -> None:
        pw = _get(node, "ssh_pwauth")
        if pw and data.get("ssh_pwauth") not in (False, "false", "no", None):
            self.add(
                name,
                _line(pw[1]),
                Severity.ERROR,
                "password",
                "ssh_pwauth enables SSH password login on every card. Fix: ssh_pwauth: false "
                "and log in with keys",
            )
        for key in ("password", "chpasswd"):
            found = _get(node, key)
            if found:
                self.add(
                    name,
                    _line(found[0]),
                    Severity.ERROR,
                    "password",
                    f"'{key}' sets a password (the same on every card, readable on the FAT "
                    "partition). Fix: remove it; use ssh_authorized_keys",
                )
        users = _get(node, "users")
        for user in _items(users[1] if users else None):
            for key in PASSWORD_KEYS:
                found = _get(user, key)
                if found:
                    self.add(
                        name,
                        _line(found[0]),
                        Severity.ERROR,
                        "password",
                        f"users: '{key}' sets a password. Fix: remove it, set lock_passwd: "
                        "true and give ssh_authorized_keys",
                    )
            lock = _get(user, "lock_passwd")
            if lock and _scalar(lock[1]) in ("false", "False", "no"):
                self.add(
                    name,
                    _line(lock[1]),
                    Severity.WARNING,
                    "password",
                    "lock_passwd: false allows password logins. Fix: lock_passwd: true",
                )

    def ssh_keys(self, name: str, node: yaml.Node | None) -> None:
        users = _get(node, "users")
        holders = [node, *_items(users[1] if users else None)]
        for holder in holders:
            found = _get(holder, "ssh_authorized_keys")
            for item in _items(found[1] if found else None):
                key = _scalar(item)
                problem = key_problem(key) if key is not None else "is not a text line"
                if problem:
                    self.add(
                        name,
                        _line(item),
                        Severity.ERROR,
                        "ssh-key",
                        f"ssh_authorized_keys: the key {problem}: nobody can log in with it. "
                        "Fix: paste the whole line of your .pub file",
                    )

    def write_files(self, name: str, node: yaml.Node | None) -> runtime_config.Config | None:
        found = _get(node, "write_files")
        cfg = None
        for entry in _items(found[1] if found else None):
            path = _scalar((_get(entry, "path") or (None, None))[1])
            content_kv = _get(entry, "content")
            content = _scalar(content_kv[1]) if content_kv else ""
            encoding = _scalar((_get(entry, "encoding") or (None, None))[1]) or ""
            if content and encoding in ("b64", "base64"):
                with contextlib.suppress(ValueError):
                    content = base64.b64decode(content).decode("utf-8", "replace")
            line = _line(entry)
            if path == SECRET_PATH:
                self.secret_entry(name, entry, content or "", line)
            elif path == CONFIG_PATH:
                try:
                    cfg = runtime_config.parse(content or "", f"{name}: write_files {CONFIG_PATH}")
                except runtime_config.ConfigError as exc:
                    at = _line(content_kv[1]) if content_kv else line
                    self.add(name, at, Severity.ERROR, "config", str(exc))
        return cfg

    def secret_entry(self, name: str, entry: yaml.Node, content: str, line: int) -> None:
        perms = _get(entry, "permissions")
        value = _scalar(perms[1]) if perms else None
        if value is None or value.lstrip("0o") != "600":
            self.add(
                name,
                _line(perms[1]) if perms else line,
                Severity.ERROR,
                "secret-mode",
                f"{SECRET_PATH} is written with permissions {value or 'default (0644)'}: every "
                "user on the Pi could read the cluster secret. Fix: permissions: '0600'",
            )
        owner = _get(entry, "owner")
        if owner and _scalar(owner[1]) not in ("root:root", "root"):
            self.add(
                name,
                _line(owner[1]),
                Severity.ERROR,
                "secret-mode",
                f"{SECRET_PATH} must be owned by root. Fix: owner: root:root",
            )
        content_kv = _get(entry, "content")
        try:
            cluster_secret.parse(content, f"{SECRET_PATH} in {name}")
        except cluster_secret.SecretError as exc:
            self.add(
                name,
                _line(content_kv[1]) if content_kv else line,
                Severity.ERROR,
                "secret",
                str(exc),
            )
        mode = (self.dir / name).stat().st_mode
        if mode & (stat.S_IRGRP | stat.S_IROTH):
            self.add(
                name,
                1,
                Severity.WARNING,
                "secret-mode",
                f"this file holds the cluster secret and is readable by other users on this "
                f"host (mode {stat.S_IMODE(mode):04o}). Fix: chmod 600 {self.dir / name}",
            )

    def schema(self, name: str, data: dict[str, Any], node: yaml.Node | None) -> None:
        validate = cloudinit_validator()
        if validate is None:
            return
        for path, message in validate(data):
            self.add(
                name,
                _path_line(node, path),
                Severity.ERROR,
                "schema",
                f"cloud-init schema: {path}: {message}",
            )

    # network-config ----------------------------------------------------------

    def network_config(self) -> None:
        name = "network-config"
        text = self.read(name)
        if text is None:
            self.add(
                name,
                1,
                Severity.INFO,
                "network",
                "no network-config: the image's default (DHCP on Ethernet) applies",
            )
            return
        self.tabs(name, text)
        parsed = self.parse(name, text)
        if parsed is None:
            return
        data, node = parsed
        if not isinstance(data, dict):
            self.add(name, 1, Severity.ERROR, "yaml", "network-config must be a YAML mapping")
            return
        net = data.get("network", data)
        net_node = _get(node, "network")[1] if _get(node, "network") else node
        if not isinstance(net, dict) or net.get("version") not in (1, 2):
            self.add(
                name,
                1,
                Severity.ERROR,
                "network",
                "network-config needs 'version: 2' (netplan style). Fix: start with "
                "'network:' / '  version: 2'",
            )
            return
        wifis = _get(net_node, "wifis")
        if wifis and isinstance(wifis[1], yaml.MappingNode):
            for key, iface in wifis[1].value:
                if not _get(iface, "regulatory-domain"):
                    self.add(
                        name,
                        _line(key),
                        Severity.WARNING,
                        "wifi-country",
                        f"wifis.{key.value} has no regulatory-domain: a Raspberry Pi keeps "
                        "its radio blocked without a country. Fix: regulatory-domain: GB "
                        "(your two-letter country code)",
                    )


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


def lint_dir(directory: Path) -> list[Finding]:
    linter = _Linter(directory)
    hostname = linter.meta_data()
    linter.user_data(hostname)
    linter.network_config()
    return sorted(linter.findings, key=lambda f: (f.file.name, f.line))


def seed_dirs(path: Path) -> list[Path]:
    """``path`` itself when it is a seed, else its sub-directories that are seeds."""
    if any((path / name).exists() for name in SEED_FILES):
        return [path]
    return sorted(
        p for p in path.iterdir() if p.is_dir() and any((p / n).exists() for n in SEED_FILES)
    )


def has_errors(findings: list[Finding], strict: bool = False) -> bool:
    bad = {Severity.ERROR, Severity.WARNING} if strict else {Severity.ERROR}
    return any(f.severity in bad for f in findings)
