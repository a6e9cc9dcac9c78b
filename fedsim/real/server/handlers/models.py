"""The AI Model Repository's endpoints: models, versions, and version downloads.

Uploads stream from the socket into the repository (``bodies.ThreadFile``), which writes them
to a temp file, validates them and publishes them atomically; downloads stream from disk in
chunks. Neither holds a whole blob in memory.
"""

from __future__ import annotations

import asyncio
import os
import re
from typing import BinaryIO

from aiohttp import web

from fedsim.core.repository import ModelRepository, UnknownVersion, VersionInfo
from fedsim.real.protocol import NUMBERS, Headers, json_header
from fedsim.real.server.bodies import BodyReader, ThreadFile, check_declared_length
from fedsim.real.server.config import ServerConfig
from fedsim.real.server.errors import ApiError
from fedsim.real.server.handlers.common import json_body, path_int, query
from fedsim.real.server.metrics import ServerMetrics
from fedsim.real.server.offload import Offload
from fedsim.real.server.responses import json_response
from fedsim.real.server.schemas import ModelCreation, VersionQuery
from fedsim.real.server.serialize import model_detail_json, model_json, version_json

SEND_CHUNK_BYTES = 256 * 1024  # read from disk and written to the socket per step
_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


class ModelHandlers:
    """``/models`` and everything under it."""

    def __init__(
        self,
        *,
        repository: ModelRepository,
        offload: Offload,
        metrics: ServerMetrics,
        config: ServerConfig,
    ) -> None:
        self._repository = repository
        self._offload = offload
        self._metrics = metrics
        self._config = config

    async def create(self, request: web.Request) -> web.Response:
        body = await json_body(request, ModelCreation, self._config)
        try:
            info = await self._offload(
                self._repository.register_model, body.name, body.architecture, body.metadata
            )
        except ValueError as e:  # metadata that JSON cannot hold back, for one
            raise ApiError(422, str(e)) from None
        return json_response(model_json(info), status=201)

    async def list(self, request: web.Request) -> web.Response:
        models = await self._offload(self._repository.list_models)
        return json_response({"models": [model_json(m) for m in models]})

    async def get(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        info = await self._offload(self._repository.get_model, name)
        stats = await self._offload(self._repository.stats, name)
        return json_response(model_detail_json(info, stats))

    async def list_versions(self, request: web.Request) -> web.Response:
        versions = await self._offload(self._repository.list_versions, request.match_info["name"])
        return json_response({"versions": [version_json(v) for v in versions]})

    async def add_version(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        wanted = query(request, VersionQuery)
        parent, round = wanted.parent, wanted.round
        metrics = json_header(request.headers, Headers.METRICS, NUMBERS)
        check_declared_length(request, self._config.max_blob_bytes)
        await self._offload(self._repository.get_model, name)  # 404 before any byte is read
        if parent is not None:
            try:
                await self._offload(self._repository.get_version, name, parent)
            except UnknownVersion as e:
                raise ApiError(422, str(e), field="parent") from None
        reader = BodyReader(
            request,
            limit=self._config.max_blob_bytes,
            timeout_s=self._config.body_read_timeout_s,
            hash=False,  # the repository hashes what it stores
        )
        body = ThreadFile(reader, loop=asyncio.get_running_loop())
        copy = asyncio.ensure_future(
            self._offload(
                self._repository.add_version,
                name,
                body,
                parent=parent,
                round=round,
                metrics=metrics,
            )
        )
        # If the request is cancelled, the copy's own failure is expected and not reported.
        copy.add_done_callback(lambda f: f.cancelled() or f.exception())
        try:
            # Shielded: if this request is cancelled (the server stops), the copy is told to
            # stop and removes its temp file; the pool's shutdown waits for it.
            info = await asyncio.shield(copy)
        except asyncio.CancelledError:
            body.abort()
            raise
        finally:
            self._metrics.bytes_received.labels("model").inc(reader.nbytes)
        location = f"{request.path}/{info.version}"
        return json_response(version_json(info), status=201, headers={"Location": location})

    async def get_version(self, request: web.Request) -> web.Response:
        return json_response(version_json(await self._version(request)))

    async def blob(self, request: web.Request) -> web.StreamResponse:
        info = await self._version(request)
        etag = f'"{info.sha256}"'  # content-addressed, so a strong validator
        headers = {"ETag": etag, "Accept-Ranges": "bytes"}
        if _matches(request.headers.get("If-None-Match"), etag):
            return web.Response(status=304, headers=headers)
        start, end = 0, info.size  # end exclusive
        wanted = request.headers.get("Range")
        if_range = request.headers.get("If-Range")
        if wanted is not None and (if_range is None or if_range.strip() == etag):
            start, end = _byte_range(wanted, info.size)
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{info.size}"
        response = web.StreamResponse(
            status=206 if "Content-Range" in headers else 200, headers=headers
        )
        response.content_type = "application/octet-stream"
        response.content_length = end - start
        blob: BinaryIO = await self._offload(self._repository.open_blob, info.model, info.version)
        try:
            # Checked before the headers go out: after them, an error cannot be reported.
            if (await self._offload(os.fstat, blob.fileno())).st_size != info.size:
                raise RuntimeError(f"{info.model} v{info.version}: blob size differs from record")
            await self._offload(blob.seek, start)
            await response.prepare(request)
            left = end - start
            while left > 0:
                chunk = await self._offload(blob.read, min(SEND_CHUNK_BYTES, left))
                await response.write(chunk)  # waits while the socket's buffer is full
                left -= len(chunk)
                self._metrics.bytes_sent.labels("model").inc(len(chunk))
            await response.write_eof()
        except ConnectionError:
            pass  # the client went away; it may resume with a Range request
        except BaseException:
            if response.prepared and request.transport is not None:
                # The headers are out: a body cut short is the only signal left.
                request.transport.close()
            raise
        finally:
            await self._offload(blob.close)
        return response

    async def _version(self, request: web.Request) -> VersionInfo:
        name, version = request.match_info["name"], request.match_info["version"]
        if version == "latest":
            return await self._offload(self._repository.latest, name)
        return await self._offload(self._repository.get_version, name, path_int(request, "version"))


def _matches(if_none_match: str | None, etag: str) -> bool:
    if if_none_match is None:
        return False
    # Weak comparison (RFC 9110 13.1.2): W/"x" matches "x".
    tags = [t.strip().removeprefix("W/") for t in if_none_match.split(",")]
    return "*" in tags or etag in tags


def _byte_range(header: str, size: int) -> tuple[int, int]:
    """``[start, end)`` of a single-range ``Range`` header; 416 when it cannot be served."""
    match = _RANGE.fullmatch(header.strip())
    unsatisfiable = ApiError(
        416,
        f"cannot serve Range {header!r} of {size} bytes",
        headers={"Content-Range": f"bytes */{size}"},
    )
    if match is None or match.groups() == ("", ""):
        raise unsatisfiable  # several ranges, or another unit: not supported
    first, last = match.groups()
    if first == "":  # bytes=-n: the last n bytes
        start, end = max(0, size - int(last)), size
    else:
        start = int(first)
        end = size if last == "" else min(int(last) + 1, size)
    if start >= end:
        raise unsatisfiable
    return start, end
