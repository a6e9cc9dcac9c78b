"""HTTP to the fedsim server: requests that ride out outages, and a resumable blob download.

A request is retried for as long as it takes while the server cannot be reached or answers
5xx or 429, sleeping ``uniform(0, min(cap, base * 2**attempt))`` between tries ("full jitter":
a fleet of agents that lost the server together does not hammer it together when it comes
back). Every other answer is the caller's: 2xx is returned, 401 raises :class:`Unauthorized`
(the agent registers again), the rest raise :class:`ApiError` with the server's message.

Nothing the server sends is trusted further than the protocol allows: JSON is parsed within
the protocol's limits (``json_loads``), an answer is read up to :data:`MAX_REPLY_BYTES`, and a
download up to the size its task announced; more raises :class:`TooLarge`, which is not
retried (the same request would fetch the same bytes again).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import random
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit

import aiohttp

from fedsim.real.protocol import API, json_loads, path

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 60.0  # a reply (or a chunk of a download) slower than this counts as lost
CHUNK_BYTES = 1 << 20
# The protocol's answers are records of a few KiB (the server's own JSON bodies are limited to
# 1 MiB); an answer beyond this is no answer of a fedsim server.
MAX_REPLY_BYTES = 4 << 20

# What a server that is restarting, overloaded or unreachable looks like from here.
_TRANSIENT = (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, asyncio.TimeoutError)

Body = bytes | Callable[[], AsyncIterator[bytes]] | None
"""A request body: bytes, or a function making a fresh stream of it for each try."""


class ApiError(Exception):
    """The server answered with an error status that retrying will not change."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


class Unauthorized(ApiError):
    """401: the server does not know the token (it may have lost its state)."""


class TooLarge(ValueError):
    """An answer longer than the agent accepts (:data:`MAX_REPLY_BYTES`, or the size a
    download was announced at); it is not retried."""


@dataclass(frozen=True, kw_only=True)
class Backoff:
    """Exponential backoff with full jitter: ``uniform(0, min(cap, base * 2**attempt))``."""

    base: float = 0.5
    cap: float = 10.0

    def delay(self, attempt: int) -> float:
        return random.uniform(0.0, min(self.cap, self.base * 2 ** min(attempt, 32)))


@dataclass(frozen=True, kw_only=True)
class Reply:
    """A successful answer, read whole."""

    status: int
    body: bytes

    def json(self) -> Any:
        """The body as JSON within the protocol's limits; ``ValueError`` naming what is wrong."""
        return json_loads(self.body)


class ApiClient:
    """Requests to one fedsim server over ``session``, with retries and bearer tokens."""

    def __init__(self, *, session: aiohttp.ClientSession, server: str, backoff: Backoff) -> None:
        root = server.rstrip("/").removesuffix(API)
        self.root = root
        self._origin = _origin(root)
        self._session = session
        self._backoff = backoff

    def url(self, template: str, **params: object) -> str:
        """The URL of the protocol's path ``template`` (``Paths.*``) with ``params`` filled in."""
        return self.root + path(template, **params)

    def resolve(self, url: str) -> str:
        """A URL the server handed out (a path such as ``Paths.BLOB``'s), made absolute."""
        return urljoin(self.root + "/", url)

    async def request(
        self,
        method: str,
        url: str,
        *,
        token: str | None,
        json_body: Any = None,
        body: Body = None,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
        read_timeout: float = READ_TIMEOUT,
    ) -> Reply:
        """Send until the server gives an answer that is not an outage; return it if 2xx."""
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=CONNECT_TIMEOUT, sock_read=read_timeout
        )
        attempt = 0
        while True:
            data = body() if callable(body) else body
            try:
                async with self._session.request(
                    method,
                    url,
                    json=json_body,
                    data=data,
                    headers=self._headers(url, token, headers),
                    params=params,
                    timeout=timeout,
                ) as resp:
                    payload = await _read_at_most(resp, MAX_REPLY_BYTES, f"{method} {url}")
                    if not _retryable(resp.status):
                        if attempt:
                            log.info("%s %s: the server answers again", method, url)
                        return _reply_or_raise(resp.status, payload)
                    problem = f"HTTP {resp.status} {_message(payload)}"
            except _TRANSIENT as e:
                problem = _describe(e, url)
            await self._pause(attempt, f"{method} {url}", problem)
            attempt += 1

    async def download(
        self,
        url: str,
        *,
        token: str | None,
        limit: int,
        headers: Mapping[str, str] | None = None,
    ) -> bytes:
        """The bytes at ``url``, at most ``limit`` of them, resuming with ``Range`` where a
        broken transfer stopped.

        ``If-Range`` carries the ETag of the first answer, so a blob that changed in the
        meantime comes back whole instead of being spliced onto the old one. ``headers`` go
        with every request (a peer's own credentials, say). An answer announcing more than
        ``limit`` bytes (``Content-Length``), or sending more, raises :class:`TooLarge` as soon
        as that shows, having kept no more than ``limit`` bytes.
        """
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=CONNECT_TIMEOUT, sock_read=READ_TIMEOUT
        )
        received = bytearray()
        etag: str | None = None
        attempt = 0
        while True:
            extra = dict(headers or {})
            if received:
                extra["Range"] = f"bytes={len(received)}-"
                if etag:
                    extra["If-Range"] = etag
            progress = len(received)
            try:
                async with self._session.get(
                    url, headers=self._headers(url, token, extra), timeout=timeout
                ) as resp:
                    if resp.status == 200:
                        received.clear()
                    elif resp.status in (206, 416):
                        if resp.status == 416 or _range_start(resp) != len(received):
                            received.clear()  # not the continuation of our bytes: start over
                            raise _Retry(f"HTTP {resp.status} does not resume at our byte")
                    else:
                        payload = await _read_at_most(resp, MAX_REPLY_BYTES, f"GET {url}")
                        if _retryable(resp.status):
                            raise _Retry(f"HTTP {resp.status} {_message(payload)}")
                        _reply_or_raise(resp.status, payload)
                        raise ApiError(resp.status, "unexpected answer to a blob download")
                    etag = resp.headers.get("ETag", etag)
                    room = limit - len(received)
                    if resp.content_length is not None and resp.content_length > room:
                        raise TooLarge(
                            f"GET {url}: the answer announces {resp.content_length} bytes, "
                            f"more than the {room} bytes expected"
                        )
                    async for chunk in resp.content.iter_chunked(CHUNK_BYTES):
                        if len(received) + len(chunk) > limit:
                            raise TooLarge(f"GET {url}: more than the {limit} bytes expected")
                        received += chunk
                    return bytes(received)
            except _TRANSIENT as e:
                problem = _describe(e, url)
            except _Retry as e:
                problem = str(e)
            if len(received) > progress:
                attempt = 0  # a link that drops but moves data is not a server that is down
            await self._pause(attempt, f"GET {url} (at byte {len(received)})", problem)
            attempt += 1

    async def _pause(self, attempt: int, what: str, problem: str) -> None:
        delay = self._backoff.delay(attempt)
        # The first failure is worth a warning; the rest of an outage only adds noise.
        level = logging.WARNING if attempt == 0 else logging.DEBUG
        log.log(level, "%s failed (%s); retrying in %.1f s", what, problem, delay)
        await asyncio.sleep(delay)

    def _headers(
        self, url: str, token: str | None, extra: Mapping[str, str] | None
    ) -> dict[str, str]:
        headers = dict(extra or {})
        # The device token is for this server only, whatever URL a task points at.
        if token is not None and _origin(url) == self._origin:
            headers["Authorization"] = f"Bearer {token}"
        return headers


class _Retry(Exception):
    pass


async def _read_at_most(resp: aiohttp.ClientResponse, limit: int, what: str) -> bytes:
    """The whole body of ``resp`` if it is at most ``limit`` bytes, else :class:`TooLarge`
    (raised before reading when ``Content-Length`` says so, else as soon as it shows)."""
    if resp.content_length is not None and resp.content_length > limit:
        raise TooLarge(f"{what}: an answer of {resp.content_length} bytes (at most {limit})")
    body = bytearray()
    async for chunk in resp.content.iter_chunked(CHUNK_BYTES):
        if len(body) + len(chunk) > limit:
            raise TooLarge(f"{what}: an answer of more than {limit} bytes")
        body += chunk
    return bytes(body)


def _retryable(status: int) -> bool:
    return status >= 500 or status == 429


def _reply_or_raise(status: int, payload: bytes) -> Reply:
    if 200 <= status < 300:
        return Reply(status=status, body=payload)
    error = Unauthorized if status == 401 else ApiError
    raise error(status, _message(payload))


def _message(payload: bytes) -> str:
    """The ``error.message`` of the protocol's error JSON, else the start of the body."""
    try:
        error = json_loads(payload)["error"]
        message = str(error["message"])
        return f"{message} ({error['field']})" if error.get("field") else message
    except (ValueError, KeyError, TypeError, AttributeError):
        return payload[:200].decode("utf-8", "replace").strip()


def _describe(e: BaseException, url: str) -> str:
    text = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
    # What a refused client certificate looks like from here: the server closes the
    # connection in the handshake without saying why (TLS 1.3 reports it only then), seen
    # as a disconnection without a certificate, as a reset with one another CA signed.
    reset = isinstance(e, aiohttp.ClientOSError) and e.errno == errno.ECONNRESET
    if (isinstance(e, aiohttp.ServerDisconnectedError) or reset) and url.startswith("https:"):
        text += (
            "; a server requiring mutual TLS disconnects clients without a certificate it "
            "accepts (--cert, --key)"
        )
    return text


def _range_start(resp: aiohttp.ClientResponse) -> int | None:
    """The first byte of a 206's ``Content-Range: bytes a-b/n``."""
    value = resp.headers.get("Content-Range", "")
    unit, _, spec = value.partition(" ")
    start = spec.partition("-")[0]
    return int(start) if unit == "bytes" and start.isdigit() else None


def same_origin(url: str, other: str) -> bool:
    """Whether ``url`` and ``other`` have one scheme, host and port (default ports filled in)."""
    return _origin(url) == _origin(other)


def _origin(url: str) -> tuple[str, str | None, int | None]:
    parts = urlsplit(url)
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    return parts.scheme, parts.hostname, port
