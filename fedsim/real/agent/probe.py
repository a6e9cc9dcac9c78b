"""The agent's bandwidth probe: round-trip time and throughput to the server, both ways.

RTT is the median of a few small requests (``/health``); throughput times a download of
``nbytes`` from ``/probe`` and an upload of as many bytes to it. The request's round trip is
taken off each transfer's time, so a small payload on a long link is not underestimated by
its latency, but never more than half of it: where the round trip is most of a transfer's time
(a payload too small for a fast link, or a loopback where the median ping can exceed one
transfer) the difference is noise, and dividing by it would report absurd rates. The estimate
is then at most twice the naive bytes / elapsed time, an honest "at least". Payloads are small by
default so the probe does not disturb training. Nothing the server answers is kept: the
download stops at the ``nbytes`` asked for, and the other answers are read no further than
:data:`MAX_ANSWER_BYTES`.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp

from fedsim.real.protocol import Paths

CHUNK = 256 * 1024
MAX_ANSWER_BYTES = 64 * 1024  # /health's and an upload's answers are a few dozen bytes


@dataclass(frozen=True)
class ProbeResult:
    """Bytes per second up (agent -> server) and down, and the round-trip time in seconds."""

    up_bps: float
    down_bps: float
    rtt_s: float

    def resources(self) -> dict[str, float]:
        """The keys the heartbeat reports them under."""
        return {"bandwidth_up": self.up_bps, "bandwidth_down": self.down_bps, "rtt": self.rtt_s}


async def measure(
    session: aiohttp.ClientSession,
    server: str,
    *,
    headers: dict[str, str],
    nbytes: int = 1 << 20,
    pings: int = 5,
) -> ProbeResult:
    """Probe the link from this agent to ``server`` (its base URL)."""
    rtts = []
    for _ in range(pings):
        start = time.perf_counter()
        async with session.get(f"{server}{Paths.HEALTH}") as r:
            await _discard(r, MAX_ANSWER_BYTES)
        rtts.append(time.perf_counter() - start)
    rtt = statistics.median(rtts)

    start = time.perf_counter()
    async with session.get(
        f"{server}{Paths.PROBE}", params={"bytes": str(nbytes)}, headers=headers
    ) as r:
        r.raise_for_status()
        got = 0
        async for chunk in r.content.iter_chunked(CHUNK):
            got += len(chunk)
            if got >= nbytes:  # a server sending more than asked for is not waited for
                break
    down = got / _transfer_time(time.perf_counter() - start, rtt)

    start = time.perf_counter()
    async with session.put(
        f"{server}{Paths.PROBE}",
        data=_zeros(nbytes),
        headers={**headers, "Content-Length": str(nbytes)},
    ) as r:
        r.raise_for_status()
        await _discard(r, MAX_ANSWER_BYTES)
    up = nbytes / _transfer_time(time.perf_counter() - start, rtt)
    return ProbeResult(up_bps=up, down_bps=down, rtt_s=rtt)


def _transfer_time(elapsed: float, rtt: float) -> float:
    """The time the bytes took: ``elapsed`` less the request's round trip, at least half of
    ``elapsed`` (see the module's docstring)."""
    return max(elapsed - rtt, elapsed / 2, 1e-9)


async def _discard(response: aiohttp.ClientResponse, limit: int) -> None:
    """Read ``response``'s body, keeping none of it, up to ``limit`` bytes; the rest is left
    unread (the connection is closed rather than reused)."""
    seen = 0
    async for chunk in response.content.iter_chunked(CHUNK):
        seen += len(chunk)
        if seen >= limit:
            return


async def _zeros(nbytes: int) -> AsyncIterator[bytes]:
    block = bytes(CHUNK)
    left = nbytes
    while left:
        piece = block[: min(CHUNK, left)]
        left -= len(piece)
        yield piece
