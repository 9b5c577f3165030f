"""How a pydantic error in a user's TOML file is said: the file, the key, the fix.

The node config (``cluster.toml``) and the card manifest are both TOML read into
pydantic models; one wording serves both, so a user learns it once.
"""

from __future__ import annotations

import difflib
import types
import typing
from typing import Any

from pydantic import BaseModel


def _model_of(annotation: object) -> type[BaseModel] | None:
    """The model inside ``Model``, ``Model | None`` or ``list[Model]``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) in (
        typing.Union,
        list,
    ):
        for arg in typing.get_args(annotation):
            found = _model_of(arg)
            if found is not None:
                return found
    return None


def known_keys(model: type[BaseModel], loc: tuple[str | int, ...]) -> list[str]:
    """The keys allowed at ``loc`` (list indexes skipped)."""
    for part in loc:
        if isinstance(part, int):
            continue
        info = model.model_fields.get(part)
        inner = _model_of(info.annotation) if info else None
        if inner is None:
            return []
        model = inner
    return list(model.model_fields)


def where(loc: tuple[str | int, ...]) -> str:
    """``[section] key``, ``[[card]] #2 hostname`` or a top-level ``key``."""
    if not loc:
        return "(top level)"
    head, rest = str(loc[0]), loc[1:]
    if rest and isinstance(rest[0], int):
        tail = ".".join(str(p) for p in rest[1:])
        return f"[[{head}]] #{rest[0] + 1}{' ' + tail if tail else ''}"
    if rest:
        return f"[{head}] {'.'.join(str(p) for p in rest)}"
    return head


def unknown_key(source: str, place: str, key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f"did you mean '{close[0]}'?" if close else f"known keys: {', '.join(known)}"
    return f"{source}: {place}: unknown key. Fix: remove it or correct it ({hint})"


def describe(
    err: dict[str, Any],
    source: str,
    model: type[BaseModel],
    fixes: dict[tuple[str | int, ...], str],
) -> str:
    """One line for one pydantic error, never echoing a password or a whole table."""
    loc = tuple(err["loc"])
    place = where(loc)
    if err["type"] == "extra_forbidden":
        return unknown_key(source, place, str(loc[-1]), known_keys(model, loc[:-1]))
    if err["type"] == "missing":
        return f"{source}: {place}: required key is missing. Fix: {fixes.get(loc, 'add it')}"
    message = err["msg"].removeprefix("Value error, ")
    got = err.get("input")
    hidden = any("password" in str(p) for p in loc) or isinstance(got, dict | list)
    shown = "" if hidden else f" (found {got!r})"
    fix = fixes.get(loc, "")
    return f"{source}: {place}: {message}{shown}{'. Fix: ' + fix if fix else ''}"
