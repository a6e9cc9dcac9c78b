"""The limits on untrusted data, stated once: what any input from outside may hold.

Everything that reads data from outside fedsim (a request body or header, a task, a model
file's header, a config) goes through these, so that what passes can be stored in SQLite,
served back as JSON and walked by code that recurses. docs/protocol.md lists them and the
server's OpenAPI document carries them. This module imports nothing of fedsim.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator, Mapping
from typing import Any

INT64_MAX = 2**63 - 1
"""SQLite's integer range: a larger id or count would fail in the store."""

MAX_ID = 2**53 - 1
"""The largest id a client may choose or the server assign (a device's, a group's): exact in a
double, so a JavaScript client (the dashboard) reads it back unchanged, and far from
:data:`INT64_MAX`, so the next id after it still fits the store."""

MAX_FIGURE = 1e15
"""The bound of a reported figure (a heartbeat's resources): within [-MAX_FIGURE, MAX_FIGURE]. A
petabyte of memory, a petabyte per second of bandwidth: past any real reading, short of the
figures that overflow a sum or a plot."""

MAX_ABS_VALUE = 1.8446742e19
"""The largest magnitude a value of a model update may have: about the square root of
float32's largest (1.8446742e19, just under it), so no product or square of two values that a
rule computes, and no weighted sum of them, can overflow to infinity."""

MAX_JSON_DEPTH = 32
"""The deepest nesting of arrays and objects a JSON document (body, header, task) may have."""
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
"""Control characters refused in every JSON string (keys included); tab, CR and LF pass."""


class JsonLimitError(ValueError):
    """Parsed JSON that breaks a limit of :func:`json_loads`; the message names where."""


def json_loads(text: str | bytes) -> Any:
    """``text`` parsed as JSON within the protocol's limits, or :class:`ValueError`.

    Python's json accepts more than JSON and more than fedsim can keep: NaN and Infinity (and
    ``1e999``, which parses to infinity), duplicate keys (the last silently wins), integers of
    any size, strings with NUL bytes and nesting only bounded by the interpreter's stack. Each
    is refused here (:class:`JsonLimitError`), so what passes can be stored in SQLite, served
    back as JSON and walked by code that recurses: nesting at most :data:`MAX_JSON_DEPTH`,
    integers within [-:data:`INT64_MAX`, :data:`INT64_MAX`], finite numbers, no control
    characters but tab, CR and LF.
    """
    try:
        value = json.loads(
            text, parse_constant=_no_constants, object_pairs_hook=_object_without_duplicates
        )
    except RecursionError:
        raise JsonLimitError(f"nested deeper than {MAX_JSON_DEPTH} levels") from None
    check_json_limits(value)
    return value


def walk(value: Any, where: str = "") -> Iterator[tuple[str, Any, int]]:
    """Every node of a parsed JSON-like ``value`` (dicts, lists, scalars) with its field path
    (``a.b[2]``) and depth, parents before children. Iterative: a walk over untrusted data must
    not itself be the recursion an attacker wants."""
    stack: list[tuple[Any, str, int]] = [(value, where, 0)]
    while stack:
        item, path, depth = stack.pop()
        yield path, item, depth
        if isinstance(item, Mapping):
            stack.extend((v, f"{path}.{k}" if path else str(k), depth + 1) for k, v in item.items())
        elif isinstance(item, list):
            stack.extend((v, f"{path}[{i}]", depth + 1) for i, v in enumerate(item))


def check_json_limits(value: Any) -> None:
    """Raise :class:`JsonLimitError` naming the first place ``value`` breaks a JSON limit."""
    for where, item, depth in walk(value):
        if isinstance(item, (dict, list)):
            if depth >= MAX_JSON_DEPTH:
                raise JsonLimitError(
                    f"{_short(where) or 'the document'} nests deeper than {MAX_JSON_DEPTH}"
                )
            if isinstance(item, dict):
                for key in item:
                    if isinstance(key, str):
                        _check_text(key, f"{where}.{key}" if where else key)
        elif isinstance(item, str):
            _check_text(item, where)
        elif isinstance(item, bool) or item is None:
            continue
        elif isinstance(item, int):
            if not -INT64_MAX <= item <= INT64_MAX:
                raise JsonLimitError(
                    f"{_short(where) or 'a number'}: integer out of range ±{INT64_MAX}"
                )
        elif isinstance(item, float) and not math.isfinite(item):
            raise JsonLimitError(f"{_short(where) or 'a number'}: number out of range")


def _check_text(text: str, where: str) -> None:
    if _CONTROL.search(text):
        raise JsonLimitError(f"{_short(where) or 'a text'}: control characters are not allowed")


def _short(where: str, limit: int = 120) -> str:
    """A field path cut for a message (a deep one would be as long as the attack)."""
    return where if len(where) <= limit else f"{where[:limit]}..."


def _object_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise JsonLimitError(f"key {key[:64]!r} appears twice in an object")
        obj[key] = value
    return obj


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")
