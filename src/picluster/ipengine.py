"""``python -m picluster.ipengine``: ipyparallel's ipengine, refusing foreign bytecode.

ipyparallel ships a function to the engines as its code object, rebuilt from
its parts on the engine: ``ipyparallel.serialize.codeutil.code_ctor`` with
stdlib pickle, ``types.CodeType`` itself with cloudpickle, ``dill._dill._create_code``
with dill. Bytecode is private to one CPython minor version (3.13 renumbered
every opcode; 3.11, 3.12 and 3.13 each changed the inline caches), and CPython
checks nothing but its shape when it builds a code object: a 3.11 client's
lambda built on a 3.13 engine runs garbage, and the engine dies with SIGSEGV
(issue 17). Worse, 3.12+ "quickens" a code object as it is built, writing into
its inline caches where the local opcode table says they are: with foreign
bytecode that can already write past the end of the instruction array.

So the engine refuses, before it is built, any code object whose instruction
stream is not one this interpreter's compiler could have produced, and the
apply fails like any other remote exception, with a message that says what to
do; the engine stays up and serves the next request.

Where: an audit hook. Every code object built from parts in CPython 3.8+
(``types.CodeType(...)``, ``code.replace(...)``) raises the audit event
``code.__new__`` with the bytecode, the name and the counts *before* it is
built, and an exception raised by a hook aborts the construction. That covers
every reconstructor at once (ipyparallel's, cloudpickle's, dill's, a user's own
serializer) without knowing any of them, and nested code objects too: the
unpickler builds each one of ``co_consts`` through the same constructor before
the function that holds it, so each is checked on its own. Code the engine
compiles from source (``%px``, ``execute``, imports) raises ``compile``, not
``code.__new__``, and is never checked. The one place the hook cannot reach is
ipyparallel's own ``code_ctor`` called with the wrong number of arguments (a
3.10 client sends 16, 3.11+ sends 18): that is a ``TypeError`` before the
event, so ``code_ctor`` is wrapped to say the same thing instead.

How: a code object carries no version stamp, so the stream is validated
against this interpreter's own ``opcode`` tables, with rules every code object
this CPython compiles obeys (``tests/unit/test_bytecode_guard.py`` checks them
against the whole standard library, on the host's Python and on the image's
3.13):

- every opcode is one of this version's real instructions: not a gap in the
  table, not a specialized or instrumented variant (``co_code`` always gives
  the generic form), not a bare ``CACHE``;
- each instruction is followed by exactly as many zeroed inline-cache units as
  this version gives it, inside the stream;
- ``RESUME`` comes first, after nothing but the prologue (``MAKE_CELL``,
  ``COPY_FREE_VARS``, ``RETURN_GENERATOR`` + ``POP_TOP``);
- a jump never reaches further than the stream is long;
- the last instruction never falls through (a return, raise, re-raise or
  unconditional jump): CPython's compiler never lets a function run off its end.

Measured between the host's 3.11 and the image's 3.13: every code object of
either standard library (20,502 and 16,256) is refused by the other, almost
all within their first two instructions (``RESUME`` is 151 in 3.11/3.12 and
149 in 3.13, where 151 is no instruction at all), and none of its own is. Cost
(``bench/README.md``, "bytecode"): a few microseconds per code object shipped,
plus ~0.2 us per audit event of the process (~50 per apply): lost in the noise
of an apply's round trip.

What it cannot catch: a foreign stream that is also a valid stream here (two
versions sharing opcode numbers, e.g. a tiny 3.11 function on 3.12, could in
principle line up; different meanings behind the same numbers would then run,
though within the interpreter's own bounds checks far more often than not);
a code object made some other way than from its parts (``marshal.loads`` of a
foreign ``.pyc``, which no serializer ipyparallel uses does); and a pre-release
of the same minor version with other bytecode. It refuses, wrongly, hand-made
bytecode without a ``RESUME`` or that runs off its end, which this CPython would
not run correctly either. It is a guard against an honest mismatch, not a
sandbox: whoever holds the cluster key can run any code on the engines.
"""

from __future__ import annotations

import opcode
import sys
from collections.abc import Callable
from typing import Any

from picluster import daskcluster

PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"

_NOT_INSTRUCTIONS = {"CACHE", "RESERVED", "ENTER_EXECUTOR"}
_PROLOGUE = ("MAKE_CELL", "COPY_FREE_VARS", "RETURN_GENERATOR", "POP_TOP", "EXTENDED_ARG")
_EXITS = (
    "RETURN_VALUE",
    "RETURN_CONST",
    "RAISE_VARARGS",
    "RERAISE",
    "JUMP_FORWARD",
    "JUMP_BACKWARD",
    "JUMP_BACKWARD_NO_INTERRUPT",
)


class ForeignBytecodeError(RuntimeError):
    """A code object made by another Python version than this engine's."""


def _flags(ops: set[int]) -> bytes:
    return bytes(1 if i in ops else 0 for i in range(256))


def _cache_counts() -> tuple[int, ...]:
    # Private, but the table the compiler itself is generated from: a list indexed
    # by opcode in 3.11/3.12, a dict by name since 3.13.
    entries: Any = opcode._inline_cache_entries  # type: ignore[attr-defined]
    if isinstance(entries, dict):
        by_op = {opcode.opmap[name]: n for name, n in entries.items() if name in opcode.opmap}
        return tuple(by_op.get(i, 0) for i in range(256))
    return tuple(entries[i] if i < len(entries) else 0 for i in range(256))


_VALID = _flags(
    {
        op
        for name, op in opcode.opmap.items()
        if op < 256 and name not in _NOT_INSTRUCTIONS and not name.startswith("INSTRUMENTED_")
    }
)
_CACHES = _cache_counts()
_EXTENDED_ARG = opcode.EXTENDED_ARG
_RESUME = opcode.opmap["RESUME"]
_PROLOGUE_OPS = _flags({opcode.opmap[n] for n in _PROLOGUE if n in opcode.opmap})
_EXIT_OPS = _flags({opcode.opmap[n] for n in _EXITS if opcode.opmap.get(n, 256) < 256})
_JUMP_OPS = _flags({op for op in opcode.hasjrel + opcode.hasjabs if op < 256})


def foreign_reason(code: bytes) -> str | None:
    """Why ``code`` (a ``co_code``) cannot be this interpreter's bytecode; None if it can."""
    n = len(code)
    if n == 0 or n % 2:
        return f"its instruction stream is {n} bytes long"
    units = n // 2
    i = 0
    arg = 0
    op = -1
    resumed = False
    while i < n:
        op = code[i]
        if not _VALID[op]:
            return f"opcode {op} at byte {i} is not a Python {PYTHON} instruction"
        arg = arg << 8 | code[i + 1]
        if not resumed:
            if op == _RESUME:
                resumed = True
            elif not _PROLOGUE_OPS[op]:
                return f"{opcode.opname[op]} at byte {i} comes before RESUME"
        if _JUMP_OPS[op] and arg > units:
            return f"{opcode.opname[op]} at byte {i} jumps {arg} units in a stream of {units}"
        i += 2
        caches = _CACHES[op]
        if caches:
            end = i + 2 * caches
            if end > n or code.count(0, i, end) != end - i:
                return (
                    f"{opcode.opname[op]} at byte {i - 2} is not followed by its "
                    f"{caches} inline cache entries"
                )
            i = end
        if op != _EXTENDED_ARG:
            arg = 0
    if not resumed:
        return "it has no RESUME"
    if not _EXIT_OPS[op]:
        return f"it runs off its end (last instruction {opcode.opname[op]})"
    return None


def foreign_message(name: str | None, reason: str) -> str:
    where = f"code object {name!r}: {reason}" if name is not None else reason
    return (
        f"this function was compiled by another Python than the engines' ({PYTHON}): "
        f"run the client on the controller's JupyterLab, or use Python {PYTHON} on this "
        f"machine ({where})"
    )


def _audit(event: str, args: tuple[Any, ...]) -> None:
    # Runs on every audit event of the process: keep the common path one comparison.
    if event == "code.__new__":
        reason = foreign_reason(args[0])
        if reason is not None:
            raise ForeignBytecodeError(foreign_message(str(args[2]), reason))


def _guard_code_ctor() -> None:
    """ipyparallel's ``code_ctor``, saying why when it gets another Python's arguments."""
    from ipyparallel.serialize import codeutil

    original: Callable[..., Any] = codeutil.code_ctor
    if getattr(original, "__wrapped__", None) is not None:
        return
    argc = len(codeutil._code_attr_names)

    def code_ctor(*args: Any) -> Any:
        if len(args) != argc:
            raise ForeignBytecodeError(
                foreign_message(None, f"{len(args)} code() arguments, Python {PYTHON} has {argc}")
            )
        return original(*args)

    # The engine's own pickles (a function sent back) name it as ipyparallel's:
    # the client unpickles them with its own code_ctor.
    code_ctor.__module__ = original.__module__
    code_ctor.__qualname__ = original.__qualname__
    code_ctor.__wrapped__ = original  # type: ignore[attr-defined]
    codeutil.code_ctor = code_ctor


_installed = False


def install() -> None:
    """Refuse foreign bytecode in this process from now on (audit hooks cannot be removed)."""
    global _installed
    if not _installed:
        sys.addaudithook(_audit)
        _installed = True
    _guard_code_ctor()


def main() -> None:
    install()
    daskcluster.patch_workers()
    from ipyparallel.engine.app import main as ipengine_main

    ipengine_main()


if __name__ == "__main__":
    main()
