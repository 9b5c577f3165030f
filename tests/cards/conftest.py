from __future__ import annotations

from pathlib import Path

import pytest

from picluster import secret
from picluster.cards import manifest, seeds
from tests.cards import images

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOnULl1FkcLuvLSZ1evLue8pNkcyzyzdRhIH/N5Lodkr me@laptop"


@pytest.fixture(scope="session")
def test_image(tmp_path_factory) -> images.TestImage:
    return images.build(tmp_path_factory.mktemp("image"))


@pytest.fixture
def card(tmp_path) -> Path:
    """engine-1's seed folder, as 'picluster cards' writes it."""
    m = manifest.parse(f'cluster = "lab"\nssh_keys = ["{KEY}"]\nengines = 2\n', "m.toml")
    items = seeds.render(manifest.Loaded(m, tmp_path / "m.toml", [KEY]), secret.generate())
    for item in items:
        item.write(tmp_path / "cards" / item.hostname)
    return tmp_path / "cards" / "engine-1"
