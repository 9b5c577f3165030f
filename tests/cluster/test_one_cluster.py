"""One image, one cluster: a card customised with nothing but a hostname (what
Raspberry Pi Imager does) and cards seeded by ``picluster cards`` from the
example manifest end up in the same cluster, with the image's one secret."""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from picluster import config, secret
from picluster.cards import manifest, seeds
from picluster.imagebuild import overlay, settings

REPO = Path(__file__).resolve().parents[2]
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOnULl1FkcLuvLSZ1evLue8pNkcyzyzdRhIH/N5Lodkr me@laptop"


def image_cluster_toml() -> str:
    """What the stage writes into the image built from the repository's ./config."""
    built = settings.load(REPO / "config")
    return overlay.cluster_toml(settings.shell_exports(built))


def example_seeds(tmp_path: Path) -> dict[str, dict]:
    """user-data of every card, from examples/cluster-manifest.toml as shipped."""
    pub = tmp_path / "id.pub"
    pub.write_text(KEY + "\n")
    text = (REPO / "examples/cluster-manifest.toml").read_text()
    path = tmp_path / "cluster-manifest.toml"
    path.write_text(text.replace("~/.ssh/id_ed25519.pub", str(pub)))
    made = seeds.render(manifest.load(path), None)
    return {s.hostname: yaml.safe_load(s.files["user-data"]) for s in made}


def test_an_imager_card_and_manifest_cards_form_one_cluster(cluster, tmp_path):
    image_secret = secret.generate()
    image_toml = image_cluster_toml()
    cards = example_seeds(tmp_path)
    for name in ("controller", "engine-1"):
        node = cluster.add(name, image_toml, image_secret, start=False)
        for entry in cards[name].get("write_files", []):
            # Where cloud-init writes it on the card, relative to this node's /etc/picluster.
            target = Path(entry["path"]).relative_to(config_dir := Path("/etc/picluster"))
            assert config_dir / target != Path(seeds.SECRET_PATH), (
                "the example manifest's cards must keep the image's secret"
            )
            dest = node.root / target
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_text(entry["content"])
        node.start()
    # Named in Raspberry Pi Imager only: the image's cluster.toml and secret, untouched.
    cluster.add("engine-9", image_toml, image_secret)

    per_host = os.cpu_count() or 1
    expected = 3 * per_host  # engines on the controller too ("auto": one per core)
    result = cluster.client(
        f"""
        rc.wait_for_engines({expected}, timeout=150)
        result = sorted(rc[:].apply_sync(__import__("socket").gethostname))
        """,
        image_secret,
        cluster.nodes["controller"].host.address,
        base_port=config.ClusterSection().base_port,
    )
    assert result == sorted(["controller", "engine-1", "engine-9"] * per_host), cluster.logs()
