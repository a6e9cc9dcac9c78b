"""Request bodies read within limits and timeouts.

Bodies are never trusted to be small or prompt: a declared ``Content-Length`` over the limit is
refused before a byte is read, a body that turns out longer while streaming (chunked encoding)
is refused as soon as it passes the limit, and every wait for the next bytes has a timeout.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
import tempfile
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from aiohttp import ClientPayloadError, web

from fedsim.real.protocol import json_loads
from fedsim.real.server.errors import ApiError

if sys.version_info >= (3, 11):
    from asyncio import timeout
else:  # aiohttp depends on async-timeout on these versions
    from async_timeout import timeout

CHUNK_BYTES = 1 << 20  # what a body is read and written in; the most held per request


def check_declared_length(request: web.Request, limit: int) -> None:
    """Refuse up front a body whose ``Content-Length`` exceeds ``limit`` bytes."""
    if request.content_length is not None and request.content_length > limit:
        raise _too_large(limit)


class BodyReader:
    """Reads a request body in pieces, counting (and optionally hashing) what passes."""

    def __init__(
        self, request: web.Request, *, limit: int, timeout_s: float, hash: bool = True
    ) -> None:
        check_declared_length(request, limit)
        self._content = request.content
        self._limit = limit
        self._timeout_s = timeout_s
        self._digest = hashlib.sha256() if hash else None
        self.nbytes = 0

    @property
    def sha256(self) -> str:
        if self._digest is None:
            raise RuntimeError("this reader does not hash")
        return self._digest.hexdigest()

    async def read(self, size: int = CHUNK_BYTES) -> bytes:
        """Up to ``size`` bytes, fewer only at the end of the body; ``b""`` after it."""
        parts: list[bytes] = []
        have = 0
        while have < size:
            try:
                async with timeout(self._timeout_s):
                    part = await self._content.read(size - have)
            except asyncio.TimeoutError:
                raise ApiError(
                    408, f"no bytes of the body arrived for {self._timeout_s:g} s"
                ) from None
            except (ConnectionError, ClientPayloadError) as e:
                raise ApiError(400, f"the body ended early: {e}") from None
            if not part:
                break
            self.nbytes += len(part)
            if self.nbytes > self._limit:
                raise _too_large(self._limit)
            parts.append(part)
            have += len(part)
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        if self._digest is not None:
            self._digest.update(data)
        return data

    async def drain(self) -> None:
        """Read the body to its end, keeping only the count and the hash."""
        while await self.read():
            pass


async def read_json(request: web.Request, *, limit: int, timeout_s: float) -> Any:
    """The body parsed as JSON: 413 past ``limit``, 400 when it is not JSON."""
    reader = BodyReader(request, limit=limit, timeout_s=timeout_s, hash=False)
    parts = []
    while part := await reader.read():
        parts.append(part)
    data = b"".join(parts)
    if not data.strip():
        raise ApiError(400, "the body must be a JSON document")
    try:
        return json_loads(data)
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError too
        raise ApiError(400, f"malformed JSON: {e}") from None


class ThreadFile:
    """A binary file over a :class:`BodyReader` for code in an executor thread.

    ``read(size)`` runs the reader on the event loop and waits for it; ``abort`` (from the
    loop) makes the pending and every later read raise, so a thread copying the body stops
    and cleans up when its request is cancelled.
    """

    def __init__(self, reader: BodyReader, *, loop: asyncio.AbstractEventLoop) -> None:
        self._reader = reader
        self._loop = loop
        self._lock = threading.Lock()
        self._pending: Future[bytes] | None = None
        self._aborted = False

    def read(self, size: int = CHUNK_BYTES) -> bytes:
        if size < 0:
            raise ValueError("ThreadFile reads a body in bounded pieces; give a size >= 0")
        with self._lock:
            if self._aborted:
                raise ConnectionAbortedError("the upload was abandoned")
            self._pending = asyncio.run_coroutine_threadsafe(self._reader.read(size), self._loop)
            pending = self._pending
        return pending.result()  # the reader times out on its own, so this never hangs

    def abort(self) -> None:
        with self._lock:
            self._aborted = True
            if self._pending is not None:
                self._pending.cancel()


async def spool(
    reader: BodyReader,
    directory: Path,
    offload: Callable[..., Awaitable[Any]],
) -> Path:
    """Copy the body into a new file in ``directory``; the file is gone if anything fails."""
    fd, name = tempfile.mkstemp(dir=directory, suffix=".part")
    path = Path(name)
    try:
        with os.fdopen(fd, "wb") as f:
            while chunk := await reader.read():
                await offload(f.write, chunk)  # a disk write must not stall the event loop
    except BaseException:  # cancellation (shutdown) included: nothing half-written remains
        path.unlink(missing_ok=True)
        raise
    return path


def _too_large(limit: int) -> ApiError:
    return ApiError(413, f"the body exceeds the limit of {limit} bytes")
