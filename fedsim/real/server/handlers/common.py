"""What every handler module uses: a validated JSON body, path parameters."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from fedsim.real.server.bodies import read_json
from fedsim.real.server.config import ServerConfig
from fedsim.real.server.schemas import Schema
from fedsim.real.server.validate import validate


async def json_body(request: web.Request, schema: Schema, config: ServerConfig) -> dict[str, Any]:
    """The request's JSON body, checked against ``schema`` (400, 413, 422 otherwise)."""
    body = await read_json(
        request, limit=config.max_json_bytes, timeout_s=config.body_read_timeout_s
    )
    validate(body, schema)
    return body


def path_int(request: web.Request, name: str) -> int:
    """An integer path parameter; the route's pattern (``\\d+``) guarantees the digits."""
    return int(request.match_info[name])
