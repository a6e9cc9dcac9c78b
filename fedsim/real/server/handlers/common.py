"""What every handler module uses: a validated JSON body, path and query parameters."""

from __future__ import annotations

from typing import TypeVar

from aiohttp import web
from pydantic import BaseModel

from fedsim.real.protocol import INT64_MAX
from fedsim.real.server.bodies import read_json
from fedsim.real.server.config import ServerConfig
from fedsim.real.server.errors import ApiError
from fedsim.real.server.schemas import parse_body, parse_query

M = TypeVar("M", bound=BaseModel)


async def json_body(request: web.Request, model: type[M], config: ServerConfig) -> M:
    """The request's JSON body as ``model`` (400, 408, 413, 422 otherwise)."""
    body = await read_json(
        request, limit=config.max_json_bytes, timeout_s=config.body_read_timeout_s
    )
    return parse_body(model, body)


def query(request: web.Request, model: type[M]) -> M:
    """The request's query parameters as ``model`` (422 naming the one that does not fit)."""
    return parse_query(model, request.query)


def path_int(request: web.Request, name: str) -> int:
    """An integer path parameter; 404 past the store's integer range, where nothing can be.

    The route's pattern (``\\d+``) guarantees the digits.
    """
    value = int(request.match_info[name])
    if value > INT64_MAX:
        raise ApiError(404, f"no {name} {value}: past the largest id ({INT64_MAX})")
    return value
