"""Every example notebook shipped to ``~/notebooks/examples`` runs green against a
real cluster (controller + engine host in network namespaces), executed with
nbclient in the controller's namespace with the client file ``picluster`` writes,
as a kernel under JupyterLab on the Pi would run it. Deterministic outputs are
checked; timing outputs only for sanity. The kernel reads dask's configuration from
the files ``picluster jupyter`` writes for its user (``write_dask_config``), as every
kernel under JupyterLab does."""

import re
import sys
from pathlib import Path

import nbformat
import pytest

from picluster.jupyter import example_notebooks, write_dask_config
from picluster.secret import Keys
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
    "08-dask-array.ipynb": [
        f"{ENGINES} Dask workers for {ENGINES} engines",
        "scheduler: tls://",
        "controller: 2 worker(s)",
        "engine-1: 2 worker(s)",
        "dashboard: /proxy/47029/status",
        "16 chunks of (250, 250)",
        "sum matches NumPy: True",
        "row means match NumPy: True",
        "mean of y + y.T: 1.00",
        "y + y.T is symmetric: True",
        "2000 rows, all near 1: True",
        f"Dask stopped; {ENGINES} engines still ready for ipyparallel",
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
    # dask's configuration as JupyterLab's user gets it (~/.config/dask), in a home of its own
    keys = Keys.derive(jcluster.secret)
    dask_config = write_dask_config(jcluster.workdir / "notebook-home", keys)
    run = ctl.host.run(
        "env", f"IPYTHONDIR={jcluster.ipython_dir}", f"DASK_CONFIG={dask_config.parent}",
        sys.executable, str(NBRUN), str(source), str(dest), check=False,
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
