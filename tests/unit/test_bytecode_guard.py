"""The engines refuse bytecode from another Python (issue 17), without the native twin.

The rules of ``picluster.ipengine`` are checked against every code object this
Python compiles (no false alarm) and against crafted foreign streams; a real
``python -m picluster.ipengine`` behind a real ipcontroller on loopback then gets
a function with foreign bytecode from a stock client, answers with the clear
error, and serves the next request. The real 3.13 client is the image tier's
``tests/image/test_foreign_python.py``.
"""

from __future__ import annotations

import json
import opcode
import os
import socket
import subprocess
import sys
import sysconfig
import textwrap
import time
import types
from collections.abc import Iterator
from pathlib import Path

import pytest

from picluster import config, secret
from picluster.connection import client_info, engine_info
from picluster.controller import controller_argv, controller_env
from picluster.engines import engine_argv, engine_env
from picluster.ipengine import PYTHON, foreign_reason
from picluster.paths import Paths

MESSAGE = (
    f"this function was compiled by another Python than the engines' ({PYTHON}): run the "
    f"client on the controller's JupyterLab, or use Python {PYTHON} on this machine"
)
OP = opcode.opmap
_ENTRIES = opcode._inline_cache_entries  # by opcode until 3.12, by name since 3.13
CACHES = (
    {OP[name]: n for name, n in _ENTRIES.items() if name in OP}
    if isinstance(_ENTRIES, dict)
    else dict(enumerate(_ENTRIES))
)
RETURN_NONE = (
    bytes([OP["RETURN_CONST"], 0])
    if "RETURN_CONST" in OP
    else bytes([OP["LOAD_CONST"], 0, OP["RETURN_VALUE"], 0])
)
RESUME = bytes([OP["RESUME"], 0])
UNKNOWN = next(i for i in range(1, 256) if opcode.opname[i].startswith("<"))
WITH_CACHES = OP["BINARY_OP"]  # one inline cache entry in 3.11-3.13


def walk(code: types.CodeType) -> Iterator[types.CodeType]:
    yield code
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from walk(const)


def compiled(*roots: Path) -> Iterator[types.CodeType]:
    for root in roots:
        for path in sorted(root.rglob("*.py")):
            try:
                top = compile(path.read_bytes(), str(path), "exec")
            except (SyntaxError, ValueError):
                continue
            yield from walk(top)


def test_every_code_object_this_python_compiles_is_accepted():
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    roots = [stdlib / p for p in ("asyncio", "email", "json", "importlib", "concurrent")]
    roots.append(Path(__file__).resolve().parents[2] / "src" / "picluster")
    codes = list(compiled(*roots))
    assert len(codes) > 3000
    refused = [(c.co_filename, c.co_name, r) for c in codes if (r := foreign_reason(c.co_code))]
    assert refused == []


def test_code_that_has_run_hot_is_still_accepted():
    """``co_code`` of a specialized, quickened function is its generic form."""

    def hot(xs: list) -> float:
        total = 0.0
        for x in xs:
            total += x.real
        return total

    for _ in range(3000):
        hot([1, 2.0, 3])
    assert foreign_reason(hot.__code__.co_code) is None


FOREIGN = {
    "an opcode this Python does not have": (
        RESUME + bytes([UNKNOWN, 0]) + RETURN_NONE,
        f"opcode {UNKNOWN} at byte 2 is not a Python {PYTHON} instruction",
    ),
    "no RESUME first": (bytes([OP["NOP"], 0]) + RESUME + RETURN_NONE, "comes before RESUME"),
    "its inline caches missing at the end": (
        RESUME + bytes([WITH_CACHES, 0]),
        "is not followed by its",
    ),
    "its inline caches not zeroed": (
        RESUME + bytes([WITH_CACHES, 0]) + b"\x01\x00" * CACHES[WITH_CACHES] + RETURN_NONE,
        "is not followed by its",
    ),
    "running off its end": (RESUME + bytes([OP["NOP"], 0]), "it runs off its end"),
    "a jump out of the stream": (
        RESUME + bytes([OP["JUMP_FORWARD"], 200]) + RETURN_NONE,
        "jumps 200 units in a stream of",
    ),
    "an odd length": (RESUME + RETURN_NONE + b"\x00", "bytes long"),
    "3.13's `lambda: 'Hello World'`": (
        # (lambda: "Hello World").__code__.co_code on CPython 3.13 (the image's)
        bytes.fromhex("95006701"),
        "",
    ),
}


SENT = (
    FOREIGN["3.13's `lambda: 'Hello World'`"][0]
    if PYTHON != "3.13"
    else FOREIGN["no RESUME first"][0]
)
"""What the stock client below sends: a stream its own Python's ``co_code`` gives back
unchanged (an unknown opcode would not survive: ``co_code`` maps it to another)."""


@pytest.mark.parametrize("name", FOREIGN)
def test_foreign_streams_are_refused(name):
    stream, why = FOREIGN[name]
    if name.startswith("3.13") and PYTHON == "3.13":
        pytest.skip("the image's own bytecode")
    reason = foreign_reason(stream)
    assert reason is not None and why in reason


# -- in an engine process: the hook, without and with ipyparallel's engine -------------


GUARDED = textwrap.dedent(
    """
    import json, pickle, sys, types
    from ipyparallel.serialize import can, codeutil, deserialize_object, serialize_object
    from picluster import ipengine

    ipengine.install()
    foreign = bytes.fromhex(sys.argv[1])
    template = (lambda: "Hello World").__code__
    parts = [foreign if n == "code" else getattr(template, "co_" + n)
             for n in codeutil._code_attr_names]
    payload = sys.stdin.buffer.read()
    out = {}
    for how, build in {
        "types.CodeType": lambda: types.CodeType(*parts),
        "code.replace": lambda: template.replace(co_code=foreign),
        "ipyparallel pickle": lambda: deserialize_object([payload]),
        "code_ctor, 3.10's 16 arguments": lambda: codeutil.code_ctor(*parts[:16]),
    }.items():
        try:
            build()
            out[how] = None
        except ipengine.ForeignBytecodeError as e:
            out[how] = str(e)
    f, _ = deserialize_object(serialize_object(lambda: 6 * 7))
    out["own lambda"] = f()
    # A function the engine sends back still names ipyparallel's code_ctor.
    out["sent back"] = pickle.dumps(can(lambda: 5)).hex()
    print(json.dumps(out))
    """
)


def test_the_hook_refuses_every_way_of_building_it():
    from ipyparallel.serialize import deserialize_object, serialize_object

    stream = SENT
    sent = (lambda: "Hello World").__code__.replace(co_code=stream)
    assert sent.co_code == stream
    reason = foreign_reason(stream)
    assert reason is not None
    payload = serialize_object(types.FunctionType(sent, {}))[0]
    proc = subprocess.run(
        [sys.executable, "-c", GUARDED, stream.hex()],
        input=payload, capture_output=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    out = json.loads(proc.stdout)
    for how in ("types.CodeType", "code.replace", "ipyparallel pickle"):
        assert out[how] is not None and out[how].startswith(MESSAGE), how
        assert out[how].endswith(f"(code object '<lambda>': {reason})")
    assert out["code_ctor, 3.10's 16 arguments"].startswith(MESSAGE)
    assert "16 code() arguments" in out["code_ctor, 3.10's 16 arguments"]
    assert out["own lambda"] == 42
    back, _ = deserialize_object([bytes.fromhex(out["sent back"])])
    assert back() == 5
    assert b"ipyparallel.serialize.codeutil" in bytes.fromhex(out["sent back"])


# -- a real engine behind a real controller, a stock client ------------------------------


def free_base_port() -> int:
    for base in range(53000, 61000, 40):
        try:
            socks = []
            for port in range(base, base + 30):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    pytest.fail("no free range of 30 ports on loopback")


def test_engine_refuses_foreign_bytecode_and_keeps_serving(tmp_path):
    import ipyparallel as ipp

    cfg = config.parse(
        f"[cluster]\nbase_port = {free_base_port()}\ncurve = false\n"
        '[controller]\nlisten = "127.0.0.1"\n'
    )
    keys = secret.Keys.derive(secret.generate())
    paths = Paths(tmp_path / "cfg", tmp_path / "secret", tmp_path / "state")
    paths.ipython_dir.mkdir(parents=True)
    base = cfg.cluster.base_port
    log = (tmp_path / "processes.log").open("wb")
    procs = [
        subprocess.Popen(controller_argv(cfg, paths), env=controller_env(keys, cfg, paths),
                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    ]  # fmt: skip
    env = engine_env(engine_info("127.0.0.1", base, keys, curve=False), keys, cfg, paths)
    for i in range(2):
        procs.append(
            subprocess.Popen(engine_argv(f"picluster:unit:{i}:guard", cfg), env=env,
                             stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        )  # fmt: skip
    rc = None
    try:
        rc = ipp.Client(client_info("127.0.0.1", base, keys, curve=False), timeout=60)
        rc.wait_for_engines(2, timeout=90)
        before = dict(rc._engines)
        foreign = types.FunctionType((lambda: "Hello World").__code__.replace(co_code=SENT), {})
        assert foreign.__code__.co_code == SENT
        t0 = time.monotonic()
        with pytest.raises(ipp.error.CompositeError) as raised:
            rc[:].apply_sync(foreign)
        errors = {
            info.get("engine_id"): (ename, evalue) for ename, evalue, _, info in raised.value.elist
        }
        assert sorted(errors) == sorted(before), f"not every engine answered: {errors}"
        for ename, evalue in errors.values():
            assert ename == "ForeignBytecodeError" and evalue.startswith(MESSAGE), errors
        assert rc[:].apply_sync(lambda: 6 * 7) == [42, 42]
        assert dict(rc._engines) == before, "an engine died (new ids or uuids)"
        assert [p.poll() for p in procs] == [None, None, None]
        print(f"refused and served again in {time.monotonic() - t0:.2f} s")
    finally:
        if rc is not None:
            rc.close()
        for p in procs:
            os.killpg(p.pid, 9)
            p.wait()
        log.close()
