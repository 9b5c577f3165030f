"""Take docs/jupyterlab.png: JupyterLab on a test cluster with the Clusters
panel open and an executed example notebook, in headless Chromium.

Run as root (network namespaces): ``.venv/bin/python -m bench.jupyterlab_screenshot``.
Needs ``apt-get install -y chromium``. Everything stays inside the test
namespaces: the cluster (controller with 2 engines, one engine host with 2),
JupyterLab started as the unit starts it, and the browser on the client host.
Chromium is driven over the DevTools protocol (bench/cdp_screenshot.py), which
also keeps the token off its command line.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from picluster import secret
from picluster.jupyter import example_notebooks
from tests.harness.cluster import Cluster
from tests.jupyter.lab import python_as_user, running_lab

REPO = Path(__file__).resolve().parents[1]
NBRUN = REPO / "tests" / "jupyter" / "nbrun.py"
PORT = 18777
NOTEBOOK = "02-scatter-gather.ipynb"
PANEL = "ipp-cluster-launcher"  # the ipyparallel Clusters panel's widget id


def workspace(path: str) -> dict:
    widget = f"notebook:{path}"
    return {
        "data": {
            "layout-restorer:data": {
                "main": {
                    "dock": {"type": "tab-area", "currentIndex": 0, "widgets": [widget]},
                    "current": widget,
                },
                "left": {
                    "collapsed": False,
                    "visible": True,
                    "current": PANEL,
                    "widgets": ["filebrowser", "running-sessions", PANEL],
                    "widgetStates": {PANEL: {"sizes": [1.0], "expansionStates": [True]}},
                },
                "right": {"collapsed": True, "visible": True, "widgets": []},
                "relativeSizes": [0.26, 0.74, 0],
                "top": {"simpleVisibility": True},
            },
            widget: {"data": {"path": path, "factory": "Notebook"}},
        },
        "metadata": {"id": "screenshot"},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "jupyterlab.png")
    parser.add_argument("--size", default="1440,900")
    parser.add_argument("--notebook", default=NOTEBOOK, help=f"example to show ({NOTEBOOK})")
    parser.add_argument("--end", action="store_true", help="scroll to the last output")
    parser.add_argument(
        "--dump-workspace", action="store_true", help="print the workspace JupyterLab saved"
    )
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root: the test cluster lives in network namespaces")
    browser = shutil.which("chromium") or sys.exit("apt-get install -y chromium")
    workdir = Path(tempfile.mkdtemp(prefix="picluster-shot-"))
    key = secret.generate()
    cluster = Cluster(workdir)
    try:
        ctl = cluster.add("controller", "[engines]\non_controller = 2\n", key)
        cluster.add("engine-1", "[engines]\nper_node = 2\n", key)
        with running_lab(cluster, key, PORT) as lab:
            # the notebook with its outputs, executed by a kernel of the server's user
            examples = lab.home / "notebooks" / "examples"
            ipdir = lab.home / ".ipython"
            source = next(f for f in example_notebooks() if f.name == args.notebook)
            ctl.host.run(
                "env", f"IPYTHONDIR={ipdir}", sys.executable, "-c",
                "import ipyparallel as ipp; ipp.Client().wait_for_engines(4, timeout=120)",
            )  # fmt: skip
            ctl.host.run(
                "env", f"IPYTHONDIR={ipdir}", sys.executable, str(NBRUN),
                str(source), str(examples / args.notebook),
            )  # fmt: skip
            lab.chown(examples / args.notebook)
            # outputs computed elsewhere are untrusted, and JupyterLab shows no
            # SVG from an untrusted notebook: trust it as its user would
            subprocess.run(
                python_as_user(
                    lab.home, lab.creds, "-c",
                    "import sys; from nbformat.sign import TrustNotebookApp as T; "
                    "sys.exit(T.launch_instance())", str(examples / args.notebook),
                ),
                check=True, cwd="/",
            )  # fmt: skip
            code = lab.put_json(
                "/lab/api/workspaces/screenshot", json.dumps(workspace(f"examples/{args.notebook}"))
            )
            assert code in (200, 204), f"workspace PUT answered {code}"
            time.sleep(6)  # the Clusters panel lists engines counted at most 5 s ago
            url_file = workdir / "url"
            url_file.write_text(
                f"{lab.base}/lab/workspaces/screenshot/tree/examples/{args.notebook}?token={lab.token}"
            )
            url_file.chmod(0o600)
            shot = workdir / "shot.png"
            cluster.client_host.run(
                sys.executable, "-m", "bench.cdp_screenshot",
                browser, str(url_file), str(shot), args.size, *(["--end"] if args.end else []),
            )  # fmt: skip
            if args.dump_workspace:
                print(lab.get("/lab/api/workspaces/screenshot", token=lab.token)[1])
            args.out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(shot, args.out)
            print(f"wrote {args.out}")
    finally:
        cluster.close()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
