"""The server's JSON writer: whatever a handler answers is JSON, never Python's extensions.

Python's ``json.dumps`` writes ``NaN`` and ``Infinity``, which no JSON parser (a browser's
``JSON.parse``, the dashboard's) accepts. A figure the server did not receive from a client can
still be non-finite: a job's round whose evaluation loss diverged, for one. Every answer is
written here: a non-finite number is written as ``null`` ("no figure"), and the encoder is
strict (``allow_nan=False``), so nothing that is not JSON can be served.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from aiohttp import web


def json_safe(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None; what is finite is kept as is."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def dumps(value: Any) -> str:
    """``value`` as JSON text; non-finite numbers become ``null``."""
    try:
        return json.dumps(value, allow_nan=False)
    except ValueError:  # the rare answer that holds a non-finite figure: cleaned, then written
        return json.dumps(json_safe(value), allow_nan=False)


def json_response(
    data: Any, *, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    """An ``application/json`` answer of ``data``, written by :func:`dumps`."""
    return web.json_response(data, status=status, headers=headers, dumps=dumps)
