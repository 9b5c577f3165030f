"""Each setting is declared once: the node schema holds every node default, ``config``
every build default; nothing else repeats one (the base port once had two)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic_core import PydanticUndefined

from picluster import config
from picluster.cards import manifest
from picluster.imagebuild import settings
from picluster.vm.cluster import BootCluster

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"


def test_build_settings_have_no_defaults_of_their_own():
    """A build field is required (``config`` writes its value beside its help) or
    optional with "unset" as its default; it never carries a value of its own."""
    shipped = settings.read_shell([REPO / "config"])
    for name, field in settings.Settings.model_fields.items():
        var = settings.VAR_OF_FIELD[name]
        if field.default is PydanticUndefined:
            assert shipped.get(var), f"{var} is required but ./config does not set it"
        else:
            assert field.default in ("", None), f"{var} has its own default {field.default!r}"


def test_node_settings_in_the_build_are_the_node_schema():
    for name, (section, key) in settings.NODE_KEYS.items():
        assert key in config.Config.model_fields[section].annotation.model_fields, name
        assert settings.Settings.model_fields[name].default is None
    shipped = settings.read_shell([REPO / "config"])
    for name in settings.NODE_KEYS:
        var = settings.VAR_OF_FIELD[name]
        assert shipped.get(var, "") == "", f"./config repeats a node default in {var}"


@pytest.mark.parametrize(("field", "unset"), [("base_port", None), ("user", None), ("secret", "")])
def test_the_manifest_leaves_node_settings_to_the_image(field, unset):
    assert manifest.Manifest.model_fields[field].default == unset


def test_the_vm_cluster_takes_the_image_settings():
    fields = BootCluster.__dataclass_fields__
    assert fields["base_port"].default is None
    assert fields["cluster"].default_factory() == config.ClusterSection().name


SOURCES = [
    *(REPO / "src/picluster").rglob("*.py"),
    *(REPO / "stage-cluster").rglob("*.sh"),
    *(REPO / "files").rglob("*"),
    REPO / "config",
    REPO / "build.sh",
    REPO / "examples/cluster-manifest.toml",
]


def test_no_base_port_default_is_written_twice():
    """The node default appears in the schema only; 10100 was the build's twin of it."""
    default = str(config.ClusterSection().base_port)
    pattern = re.compile(rf"\b({default}|10100)\b")
    found = [
        f"{path.relative_to(REPO)}:{n}"
        for path in SOURCES
        if path.is_file() and path != REPO / "src/picluster/config.py"
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
        if pattern.search(line)
    ]
    assert found == []


def test_readme_reference_is_generated_from_the_schema():
    text = README.read_text()
    begin = "<!-- cluster.toml reference: generated, do not edit -->\n```toml\n"
    end = "```\n<!-- end of the generated reference -->"
    current = text[text.index(begin) + len(begin) : text.index(end)]
    assert current == config.reference(), (
        "README.md's cluster.toml reference drifted from picluster/config.py: paste the "
        "output of `picluster config --reference` between the markers"
    )


def test_config_command_prints_the_reference_and_the_sources(tmp_path, capsys):
    from picluster.cli import main

    assert main(["config", "--reference"]) == 0
    assert capsys.readouterr().out == config.reference()
    path = tmp_path / "cluster.toml"
    path.write_text('[cluster]\nname = "lab"\n')
    assert main(["config", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"# files read, in order: {path}" in out
    assert f'name = "lab"  # {path}' in out and "base_port = 47000  # the defaults" in out
