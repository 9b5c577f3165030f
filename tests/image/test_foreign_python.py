"""Issue 17: a client on another Python than the engines' gets a clear error, and no
engine dies.

The client is a stock ipyparallel (the image's pins) on the image's own CPython 3.13,
run in the build's native twin (an amd64 trixie chroot: same bytecode as the arm64
image); the engines are real ``picluster agent`` engines on the host's Python in
network namespaces. The twin is used through an overlay (the build's cache is never
written to), and its venv is installed offline from wheels CI downloaded before the
tests (``python -m tests.image.foreign_client download``).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from picluster import secret
from picluster.connection import client_info
from picluster.imagebuild import cache as cache_mod
from picluster.imagebuild import mounts, native
from picluster.imagebuild.steps import StepLog
from tests.harness.cluster import REPO, Cluster
from tests.image import foreign_client

pytestmark = [pytest.mark.root, pytest.mark.image]

TWIN_PYTHON = "3.13"
BASE_PORT = 47000
ENV = {
    "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
    "LC_ALL": "C.UTF-8",
    "HOME": "/root",
    "IPYTHONDIR": "/tmp/ipython",
    "PIP_NO_INDEX": "1",
    "PIP_DISABLE_PIP_VERSION_CHECK": "1",
}
HERE = f"{sys.version_info.major}.{sys.version_info.minor}"


def in_twin(
    root: Path, *argv: str, ns: str = "", stdin: bytes = b"", ours: bool = False,
    timeout: float = 300,
) -> str:  # fmt: skip
    """``argv`` in the twin (in namespace ``ns``); ``ours``: with our src importable."""
    prefix = ["ip", "netns", "exec", ns] if ns else []
    env = {**ENV, "PYTHONPATH": "/picluster-src"} if ours else ENV
    proc = subprocess.run(
        [*prefix, "chroot", str(root), *argv],
        input=stdin, capture_output=True, env=env, timeout=timeout, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        raise AssertionError(
            f"in the twin, {' '.join(argv)[:200]} failed ({proc.returncode}):\n"
            f"{proc.stdout.decode(errors='replace')[-2000:]}\n"
            f"{proc.stderr.decode(errors='replace')[-4000:]}"
        )
    return proc.stdout.decode()


def result_of(out: str):
    lines = [line for line in out.splitlines() if line.startswith("RESULT ")]
    assert lines, f"no RESULT line in:\n{out[-2000:]}"
    return json.loads(lines[-1][len("RESULT ") :])


@contextlib.contextmanager
def overlay(lower: Path, top: Path):
    """``lower`` seen through a throw-away writable layer under ``top``."""
    upper, work, merged = top / "upper", top / "work", top / "merged"
    for d in (upper, work, merged):
        d.mkdir(parents=True)
    opts = f"lowerdir={lower},upperdir={upper},workdir={work}"
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, str(merged)], check=True)
    try:
        yield merged
    finally:
        mounts.unmount_all(merged)


@pytest.fixture(scope="module")
def twin(built_image):
    """The twin's CPython 3.13 with a stock ipyparallel client in /client, and our
    ``src`` (read-only) at /picluster-src."""
    wheels = foreign_client.wheel_dir()
    if wheels is None:
        pytest.skip(
            "no 3.13 client wheels for the current pins: run "
            "`.venv/bin/python -m tests.image.foreign_client download` first (CI does)"
        )
    s = foreign_client.build_settings()
    top = Path(tempfile.mkdtemp(prefix="picluster-twin-"))
    log = StepLog(top / "twin.log")
    try:
        lower = native.ensure(cache_mod.Cache(Path(s.cache_dir)), log, s.release, s.debian_mirror)
    finally:
        log.close()
    t0 = time.monotonic()
    try:
        with (
            overlay(lower, top / "layers") as root,
            mounts.chroot_mounts(root),
            mounts.bind(wheels, root / "wheels", read_only=True),
            mounts.bind(REPO / "src", root / "picluster-src", read_only=True),
        ):
            in_twin(root, f"python{TWIN_PYTHON}", "-m", "venv", "/client")
            pin = next(p for p in foreign_client.pins() if p.startswith("ipyparallel=="))
            in_twin(root, "/client/bin/python", "-m", "pip", "install", "-q",
                    "--find-links", "/wheels", pin)  # fmt: skip
            print(f"twin client venv ready in {time.monotonic() - t0:.1f} s")
            yield root
    finally:
        shutil.rmtree(top, ignore_errors=True)


FOREIGN_CLIENT = textwrap.dedent(
    """
    import json, sys
    import ipyparallel as ipp

    info = json.load(sys.stdin)
    rc = ipp.Client(info, timeout=60)
    rc.wait_for_engines(int(sys.argv[1]), timeout=120)
    out = {
        "python": "%d.%d" % sys.version_info[:2],
        "engines": {str(k): v for k, v in rc._engines.items()},
        "hello": (lambda: "Hello World").__code__.co_code.hex(),
        "errors": None,
    }
    try:
        out["answers"] = rc[:].apply_async(lambda: "Hello World").get(timeout=120)
    except ipp.error.CompositeError as e:
        out["errors"] = {str(i.get("engine_id")): [n, v] for n, v, _, i in e.elist}
    rc.close()
    print("RESULT " + json.dumps(out))
    """
)


def test_a_313_client_is_refused_clearly_and_no_engine_dies(twin, tmp_path):
    t0 = time.monotonic()
    c = Cluster(tmp_path)
    s = secret.generate()
    try:
        ctl = c.add("controller", "[engines]\non_controller = 0\n", s)
        engines = c.add("engine-1", "[engines]\nper_node = 2\n", s)
        before = c.client(
            "rc.wait_for_engines(2, timeout=120)\n"
            "result = {str(k): v for k, v in rc._engines.items()}",
            s,
            ctl.host.address,
        )
        pids = engines.host.pids("picluster.ipengine")
        assert len(pids) == 2, f"engine processes by command line: {pids}"

        info = client_info(ctl.host.address, BASE_PORT, secret.Keys.derive(s),
                           location=ctl.host.address, curve=True)  # fmt: skip
        foreign = result_of(
            in_twin(
                twin,
                "/client/bin/python",
                "-c",
                FOREIGN_CLIENT,
                "2",
                ns=c.client_host.ns,
                stdin=json.dumps(info).encode(),
            )
        )
        assert foreign["python"] == TWIN_PYTHON
        # The bytes the unit tier's fixture says 3.13 makes of this lambda.
        assert foreign["hello"] == "95006701"
        assert foreign["engines"] == before
        assert foreign["errors"] is not None, f"the engines ran it: {foreign.get('answers')}"
        assert sorted(foreign["errors"]) == sorted(before), f"not every engine answered: {foreign}"
        for eid, (ename, evalue) in foreign["errors"].items():
            assert ename == "ForeignBytecodeError", (eid, ename, evalue)
            assert evalue.startswith(
                f"this function was compiled by another Python than the engines' ({HERE}): "
                f"run the client on the controller's JupyterLab, or use Python {HERE} on "
                "this machine"
            ), evalue

        after = c.client(
            "result = {'engines': {str(k): v for k, v in rc._engines.items()},\n"
            "          'answers': rc[:].apply_async(lambda: 'Hello World').get(timeout=60)}",
            s,
            ctl.host.address,
        )
        assert after["engines"] == before, "an engine died or was replaced"
        assert after["answers"] == ["Hello World"] * 2
        assert engines.host.pids("picluster.ipengine") == pids, "an engine process restarted"
        print(f"foreign client refused, engines still serving: {time.monotonic() - t0:.1f} s")
    finally:
        c.close()


GUARD_ON_313 = textwrap.dedent(
    """
    import json, os, sys, sysconfig, types
    from ipyparallel.serialize import deserialize_object
    from picluster import ipengine

    def walk(co):
        yield co
        for c in co.co_consts:
            if isinstance(c, types.CodeType):
                yield from walk(c)

    n, refused = 0, []
    for dirpath, _, files in os.walk(sysconfig.get_paths()["stdlib"]):
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(dirpath, name)
                try:
                    top = compile(open(path, "rb").read(), path, "exec")
                except (SyntaxError, ValueError):
                    continue
                for co in walk(top):
                    n += 1
                    if (why := ipengine.foreign_reason(co.co_code)) is not None:
                        refused.append([path, co.co_name, why])
    ipengine.install()
    try:
        deserialize_object([sys.stdin.buffer.read()])
        error = None
    except ipengine.ForeignBytecodeError as e:
        error = str(e)
    print("RESULT " + json.dumps({"compiled": n, "refused": refused[:5], "error": error}))
    """
)


def test_the_image_python_guard_refuses_this_python_and_accepts_its_own(twin):
    """The other direction, as on the cluster (engines 3.13): the guard under the
    image's Python accepts everything it compiles and refuses the host's lambda."""
    from ipyparallel.serialize import serialize_object

    payload = serialize_object(lambda: "Hello World")[0]
    out = result_of(
        in_twin(twin, "/client/bin/python", "-c", GUARD_ON_313, stdin=payload, ours=True)
    )
    assert out["compiled"] > 5000
    assert out["refused"] == []
    if HERE == TWIN_PYTHON:
        pytest.skip("the host runs the image's Python: nothing foreign to refuse")
    assert out["error"] is not None and out["error"].startswith(
        f"this function was compiled by another Python than the engines' ({TWIN_PYTHON}): "
    ), out["error"]
