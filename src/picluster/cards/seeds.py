"""One card's NoCloud seed: ``user-data``, ``meta-data`` and ``network-config``.

The seed targets cloud-init 24/25 as shipped by Debian trixie and Raspberry Pi
OS trixie, reading the three files from the FAT partition. Nothing in it
installs packages (the image already holds everything, and a card may boot
without Internet), and nothing sets a password: login is by SSH key only.
"""

from __future__ import annotations

import hashlib
import secrets as pysecrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from picluster import roles
from picluster import secret as cluster_secret
from picluster.cards.manifest import Card, Loaded, Manifest, node_overrides
from picluster.config import Config, dropin_dir
from picluster.config import dumps as config_dumps
from picluster.files import atomic_write_text
from picluster.paths import DEFAULT_CONFIG, DEFAULT_SECRET

SEED_FILES = ("user-data", "meta-data", "network-config")
SECRET_PATH = str(DEFAULT_SECRET)
CONFIG_PATH = str(DEFAULT_CONFIG)
CONFIG_DROPIN = str(dropin_dir(DEFAULT_CONFIG) / "50-card.toml")
"""The card's layer over the image's ``cluster.toml`` (only what the manifest sets)."""
GROUPS = ("adm", "sudo", "users", "video", "plugdev")


class _Dumper(yaml.SafeDumper):
    """Block style for multi-line strings, so file contents stay readable."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def to_yaml(data: dict[str, Any]) -> str:
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=1000)


@dataclass(frozen=True)
class Seed:
    hostname: str
    role: roles.Role
    instance_id: str
    address: str
    files: dict[str, str]
    """File name -> content for the three seed files."""

    def write(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        for name, content in self.files.items():
            # user-data carries the cluster secret, network-config a Wi-Fi
            # password: private on the host too. meta-data holds no credential.
            atomic_write_text(
                directory / name, content, mode=0o644 if name == "meta-data" else 0o600
            )


def instance_id(cluster: str | None, hostname: str) -> str:
    """Unique per card and per run, so cloud-init runs again on a re-seeded card."""
    named = f"{cluster}-" if cluster else ""
    return f"picluster-{named}{hostname}-{pysecrets.token_hex(4)}"


def wpa_psk(ssid: str, passphrase: str) -> str:
    """The WPA2 pre-shared key (as wpa_passphrase prints): the passphrase never lands on a card."""
    return hashlib.pbkdf2_hmac("sha1", passphrase.encode(), ssid.encode(), 4096, 32).hex()


def card_layer(manifest: Manifest) -> str:
    """The ``cluster.toml.d/50-card.toml`` every card of the manifest gets ("" = none)."""
    overrides = node_overrides(manifest)
    if not overrides:
        return ""
    return config_dumps(
        overrides,
        f"cluster {manifest.title()}: written by `picluster cards` from the "
        "manifest;\nread over the image's /etc/picluster/cluster.toml",
    )


def user_data(
    manifest: Manifest, card: Card, ssh_keys: list[str], secret: bytes | None, layer: str
) -> str:
    """``layer`` is ``card_layer(manifest)``, the same for every card."""
    data: dict[str, Any] = {
        "hostname": card.hostname,
        "fqdn": f"{card.hostname}.local",
        # Let cloud-init set the name once, and make it resolve locally (sudo, avahi).
        "preserve_hostname": False,
        "manage_etc_hosts": True,
        "ssh_pwauth": False,
        "disable_root": True,
    }
    if manifest.user is None:
        # The image's own first user (cloud-init's default user, set by the build).
        data["users"] = ["default"]
        data["ssh_authorized_keys"] = list(ssh_keys)
    else:
        data["users"] = [
            {
                "name": manifest.user,
                "gecos": "picluster user",
                "groups": ", ".join(GROUPS),
                "shell": "/bin/bash",
                "lock_passwd": True,
                # No password exists, so sudo must not ask for one.
                "sudo": "ALL=(ALL) NOPASSWD:ALL",
                "ssh_authorized_keys": list(ssh_keys),
            }
        ]
    if manifest.timezone:
        data["timezone"] = manifest.timezone
    if manifest.locale:
        data["locale"] = manifest.locale
    if manifest.keyboard:
        data["keyboard"] = {"layout": manifest.keyboard}
    files: list[dict[str, Any]] = []
    if secret is not None:
        # Otherwise the card keeps the image's secret, like every card of that image.
        files.append(
            {
                "path": SECRET_PATH,
                "permissions": "0600",
                "owner": "root:root",
                "content": cluster_secret.encode(secret),
            }
        )
    if layer:
        files.append(
            {"path": CONFIG_DROPIN, "permissions": "0644", "owner": "root:root", "content": layer}
        )
    if files:
        data["write_files"] = files
    return "#cloud-config\n" + to_yaml(data)


def meta_data(iid: str, hostname: str) -> str:
    return to_yaml({"instance-id": iid, "local-hostname": hostname})


def network_config(manifest: Manifest, card: Card) -> str:
    # "eth0" by name: both bases boot with net.ifnames=0, and cloud-init's
    # networkd renderer (the debian base) ignores a glob in match/name (it
    # wrote Name=<the id> and left the port down in the first VM boot).
    wired: dict[str, Any] = (
        {"match": {"macaddress": card.mac}, "set-name": "eth0"} if card.mac else {}
    )
    if card.address:
        wired["dhcp4"] = False
        wired["addresses"] = [card.address]
        if card.gateway:
            wired["routes"] = [{"to": "default", "via": card.gateway}]
        dns = card.dns or ([card.gateway] if card.gateway else [])
        if dns:
            wired["nameservers"] = {"addresses": list(dns)}
    else:
        wired["dhcp4"] = True
    if manifest.wifi:
        # A card with Wi-Fi must not wait for a cable at boot.
        wired["optional"] = True
    network: dict[str, Any] = {"version": 2, "ethernets": {"eth0": wired}}
    if manifest.wifi:
        wifi = manifest.wifi
        network["wifis"] = {
            "wlan0": {
                "dhcp4": True,
                "optional": True,
                # Without a regulatory domain the Pi's radio stays blocked.
                "regulatory-domain": wifi.country,
                "access-points": {wifi.ssid: {"password": wpa_psk(wifi.ssid, wifi.password)}},
            }
        }
    return to_yaml({"network": network})


def render(loaded: Loaded, secret: bytes | None) -> list[Seed]:
    """One seed per card; ``secret`` None = the cards keep the image's own."""
    manifest = loaded.manifest
    config = Config.model_validate(node_overrides(manifest))
    layer = card_layer(manifest)
    seeds = []
    for card in manifest.cards():
        decision = roles.decide(card.hostname, config)
        iid = instance_id(manifest.cluster, card.hostname)
        files = {
            "user-data": user_data(manifest, card, loaded.ssh_keys, secret, layer),
            "meta-data": meta_data(iid, card.hostname),
            "network-config": network_config(manifest, card),
        }
        seeds.append(
            Seed(
                hostname=card.hostname,
                role=decision.role,
                instance_id=iid,
                address=card.address or ("DHCP" if not card.mac else f"DHCP ({card.mac})"),
                files=files,
            )
        )
    return seeds
