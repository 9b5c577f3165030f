"""One cluster (controller with 2 engines + one engine host with 2) shared by the
whole Jupyter tier: forming it is the slow part, and every test here only reads
from it (except the engine-failure notebook, which the agent heals)."""

import os
import shutil
import sys

import pytest

from picluster import secret
from tests.harness.cluster import Cluster

ENGINES = 4
# Preloading as a user would configure it for the notebooks (checked in test_server).
CONTROLLER = '[engines]\non_controller = 2\nstartup = "import numpy"\n'
ENGINE = '[engines]\nper_node = 2\nstartup = "import numpy"\n'


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/jupyter/" in str(item.fspath):
            item.add_marker(pytest.mark.root)
            item.add_marker(pytest.mark.cluster)


# Package scope: the cluster is stopped when the Jupyter tier ends, not when
# the whole session does (it used to stay up through the image build).
@pytest.fixture(scope="package")
def jcluster(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("the Jupyter tier needs root (network namespaces)")
    for tool in ("ip", "unshare", "setpriv", "curl"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} not found: apt-get install iproute2 util-linux curl")
    workdir = tmp_path_factory.mktemp("jupyter-cluster")
    key = secret.generate()
    c = Cluster(workdir)
    try:
        ctl = c.add("controller", CONTROLLER, key)
        c.add("engine-1", ENGINE, key)
        ipython_dir = workdir / "root-ipython"
        ctl.host.run(
            sys.executable, "-m", "picluster", "client-file", "--user", "root",
            "--ipython-dir", str(ipython_dir),
            "--config", str(ctl.config), "--secret", str(ctl.secret),
        )  # fmt: skip
        code = (
            "import ipyparallel as ipp; rc = ipp.Client(); "
            f"rc.wait_for_engines({ENGINES}, timeout=120); print(len(rc.ids))"
        )
        out = ctl.host.run("env", f"IPYTHONDIR={ipython_dir}", sys.executable, "-c", code)
        assert out.stdout.strip() == str(ENGINES), c.logs()
        c.secret = key
        c.ipython_dir = ipython_dir
        yield c
    finally:
        c.close()
