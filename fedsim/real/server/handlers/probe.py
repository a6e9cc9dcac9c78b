"""Bandwidth probe endpoints: a payload to download and a sink to upload to.

Agents time these transfers to measure their link to the server (throughput both ways); the
payload is zeros streamed in chunks, so a probe costs the server no memory and no disk.
"""

from __future__ import annotations

import time

from aiohttp import web

from fedsim.real.server.bodies import BodyReader
from fedsim.real.server.errors import ApiError
from fedsim.real.server.handlers.common import query
from fedsim.real.server.responses import json_response
from fedsim.real.server.schemas import ProbeQuery, ProbeUpload

CHUNK = 256 * 1024


class ProbeHandlers:
    """``GET /probe?bytes=N`` sends N bytes; ``PUT /probe`` reads and discards the body."""

    def __init__(self, *, max_bytes: int = 256 * 1024 * 1024, timeout_s: float = 60.0) -> None:
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s

    async def download(self, request: web.Request) -> web.StreamResponse:
        nbytes = query(request, ProbeQuery).bytes
        if nbytes > self.max_bytes:
            raise ApiError(422, f"bytes must be in [0, {self.max_bytes}]", field="bytes")
        response = web.StreamResponse(
            headers={"Content-Type": "application/octet-stream", "Cache-Control": "no-store"}
        )
        response.content_length = nbytes
        await response.prepare(request)
        zeros = bytes(CHUNK)
        left = nbytes
        while left:
            piece = zeros[: min(CHUNK, left)]
            await response.write(piece)
            left -= len(piece)
        await response.write_eof()
        return response

    async def upload(self, request: web.Request) -> web.Response:
        start = time.monotonic()
        # The same limits as any upload: 413 past max_bytes, 408 when the bytes stall.
        reader = BodyReader(request, limit=self.max_bytes, timeout_s=self.timeout_s, hash=False)
        await reader.drain()
        answer = ProbeUpload(bytes=reader.nbytes, seconds=time.monotonic() - start)
        return json_response(answer.model_dump(mode="json"))
