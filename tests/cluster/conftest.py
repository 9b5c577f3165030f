import os
import shutil
from pathlib import Path

import pytest

from tests.harness.cluster import Cluster

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts" / "cluster"


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/cluster/" in str(item.fspath):
            item.add_marker(pytest.mark.root)
            item.add_marker(pytest.mark.cluster)


@pytest.fixture
def cluster(request, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("the cluster tier needs root (network namespaces)")
    for tool in ("ip", "unshare", "nft"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} not found: apt-get install iproute2 util-linux nftables")
    c = Cluster(tmp_path)
    failed = True
    try:
        yield c
        failed = False
    finally:
        try:
            c.close()
        finally:
            if failed or request.node.rep_call_failed:
                dest = ARTIFACTS / request.node.name
                shutil.rmtree(dest, ignore_errors=True)
                shutil.copytree(tmp_path, dest, ignore=shutil.ignore_patterns("secret*"))


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    rep = yield
    if rep.when == "call":
        item.rep_call_failed = rep.failed
    return rep
