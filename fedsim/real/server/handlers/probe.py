"""Bandwidth probe endpoints: a payload to download and a sink to upload to.

Agents time these transfers to measure their link to the server (throughput both ways); the
payload is zeros streamed in chunks, so a probe costs the server no memory and no disk.
"""

from __future__ import annotations

import time

from aiohttp import web

from fedsim.real.server.errors import ApiError

CHUNK = 256 * 1024


class ProbeHandlers:
    """``GET /probe?bytes=N`` sends N bytes; ``PUT /probe`` reads and discards the body."""

    def __init__(self, *, max_bytes: int = 256 * 1024 * 1024) -> None:
        self.max_bytes = max_bytes

    async def download(self, request: web.Request) -> web.StreamResponse:
        raw = request.query.get("bytes", "1048576")
        try:
            nbytes = int(raw)
        except ValueError:
            raise ApiError(400, f"bytes must be an integer, got {raw!r}", field="bytes") from None
        if not 0 <= nbytes <= self.max_bytes:
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
        received = 0
        async for chunk in request.content.iter_chunked(CHUNK):
            received += len(chunk)
            if received > self.max_bytes:
                raise ApiError(413, f"a probe upload may carry at most {self.max_bytes} bytes")
        return web.json_response({"bytes": received, "seconds": time.monotonic() - start})
