"""Every example notebook shipped to ``~/notebooks/examples`` runs green against a
real cluster (controller + engine host in network namespaces), executed with
nbclient in the controller's namespace with the client file ``picluster`` writes,
as a kernel under JupyterLab on the Pi would run it. Deterministic outputs are
checked; timing outputs only for sanity."""

import re
import sys
from pathlib import Path

import nbformat
import pytest

from picluster.jupyter import example_notebooks
from tests.jupyter.conftest import ENGINES

NBRUN = Path(__file__).with_name("nbrun.py")

EXPECTED = {
    "01-hello-world.ipynb": [
        f"{ENGINES} engines said: {{'Hello World'}}",
        "controller: 2 engine(s)",
        "engine-1: 2 engine(s)",
    ],
    "02-scatter-gather.ipynb": [
        "gathered == numbers: True",
        "10**63 has 64 digits",
        "digits of 10**0 .. 10**63: True",
        "16 numbers, from 10**48",
        "I hold 16 of the numbers",
    ],
    "03-push-pull.ipynb": [
        "pull a, b: [3, 4]",
        "on every engine: {5.0}",
        "{'hello from the notebook'}",
        "first engine: 42",
        "engines that have it: 1",
    ],
    "04-load-balanced-map.ipynb": ["squares ok: True", "chunksize=100:   4 tasks"],
    "05-map-async-progress.ipynb": [
        "submitted 24 tasks",
        "sum of squares: 4324",
        "24/24 tasks done; results ok: True",
    ],
    "06-speedup.ipynb": ["1 engine(s): pi ~ 3.1", f"{ENGINES} engine(s): pi ~ 3.1"],
    "07-engine-failure.ipynb": [
        "all 16 results, correct: True",
        f"{ENGINES} engines again; the crashed engine is gone: True",
    ],
}


def outputs(nb) -> str:
    text = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.output_type == "stream":
                text.append(out.text)
            elif "data" in out:
                text.append(out.data.get("text/plain", ""))
    return "\n".join(text)


def test_every_shipped_notebook_is_checked():
    assert sorted(EXPECTED) == [f.name for f in example_notebooks()]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_notebook_runs(jcluster, name):
    source = next(f for f in example_notebooks() if f.name == name)
    executed = jcluster.workdir / "executed"
    executed.mkdir(exist_ok=True)
    dest = executed / name
    ctl = jcluster.nodes["controller"]
    run = ctl.host.run(
        "env", f"IPYTHONDIR={jcluster.ipython_dir}", sys.executable, str(NBRUN),
        str(source), str(dest), check=False,
    )  # fmt: skip
    assert run.returncode == 0, (
        f"{name} failed:\n{run.stdout[-3000:]}\n{run.stderr[-6000:]}{jcluster.logs()}"
    )
    nb = nbformat.read(dest, as_version=4)
    text = outputs(nb)
    for expected in EXPECTED[name]:
        assert expected in text, f"{name}: {expected!r} not in the outputs:\n{text[-3000:]}"
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors, f"{name}: error outputs {errors}"
    if name == "06-speedup.ipynb":
        svg = [
            o
            for c in nb.cells
            for o in c.get("outputs", [])
            if "image/svg+xml" in o.get("data", {})
        ]
        assert svg, "the speed-up plot is missing"
        for match in re.finditer(r"pi ~ (\d\.\d+)", text):
            assert abs(float(match.group(1)) - 3.14159) < 0.01, text
