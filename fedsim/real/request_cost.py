"""What one HTTP request costs the agent's processor, beyond the bytes it carries.

An agent makes a request for every transfer (it downloads the model, uploads the update), and
each costs its client some processor time whatever the body: building the request, parsing the
answer, the event loop's turns. On a fast core that is a millisecond or two; on a device held
to a tenth of a core it is ten times that, and it is what a transfer of a small model mostly
takes. :func:`measure_request_cpu_s` times it here: the agent's own client
(:class:`~fedsim.real.agent.client.ApiClient`) sends small PUTs and GETs over loopback to an
aiohttp server in another thread, and the processor time of the client's thread
(``time.thread_time``) is counted, the server's not (the server runs elsewhere in a real
deployment). The figure goes into a measured hardware profile as ``request_cpu_s``.

A body that a link paces costs more: its bytes arrive a segment at a time, and each wakes the
client's event loop for a read of its own, where over loopback a whole body arrives in a few
large reads. :func:`measure_segment_cpu_s` times it: the loopback server sends a body one TCP
segment (:data:`SEGMENT_BYTES`) per write, a pause after each, and the client thread's
processor seconds beyond those of the same body sent at once, per segment, go into the profile
as ``segment_cpu_s``. It is timed on downloads and charged on uploads too (an upload's sender
is woken as the link drains its send buffer: emulated runs measured 1-4 ms of the agent's
processor for a 154 kB upload and for a download alike, where ``request_cpu_s`` is 0.09 ms).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import statistics
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web

from fedsim.core.topology import SEGMENT_BYTES
from fedsim.real.agent.client import ApiClient, Backoff
from fedsim.real.agent.state import measure_persist

if TYPE_CHECKING:
    from fedsim.ml.calibrate import Calibration

# A body small enough that the bytes cost nothing next to the request itself.
BODY_BYTES = 1024
ROUTE = "/blob"
PACED_ROUTE = "/paced"  # the same body, one segment per write with a pause after each
PACE_S = 0.0005  # between two segments: long enough for the client to read each on its own
PACED_SEGMENTS = 100  # the body of a paced download


@contextmanager
def _loopback_server(body: bytes) -> Iterator[str]:
    """An aiohttp server on 127.0.0.1 in its own thread and event loop, answering GET with
    ``body`` and PUT with a short JSON receipt; yields its root URL."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    root: list[str] = []

    async def put(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"status": "stored"})

    async def get(_: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/octet-stream")

    async def paced(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "application/octet-stream", "Content-Length": str(len(body))}
        )
        await response.prepare(request)
        for start in range(0, len(body), SEGMENT_BYTES):
            await response.write(body[start : start + SEGMENT_BYTES])
            await asyncio.sleep(PACE_S)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_put(ROUTE, put)
    app.router.add_get(ROUTE, get)
    app.router.add_get(PACED_ROUTE, paced)
    runner = web.AppRunner(app, access_log=None)

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        loop.run_until_complete(site.start())
        port = runner.addresses[0][1]
        root.append(f"http://127.0.0.1:{port}")
        ready.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())
        loop.close()

    thread = threading.Thread(target=serve, name="fedsim-request-cost", daemon=True)
    thread.start()
    if not ready.wait(30):
        raise RuntimeError("the loopback server for timing requests did not start in 30 s")
    try:
        yield root[0]
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)


async def _time_requests(root: str, body: bytes, repeats: int) -> list[float]:
    """The client thread's processor seconds of each of ``repeats`` PUT + GET pairs, halved:
    one request's worth each."""
    seconds = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector()) as session:
        api = ApiClient(session=session, server=root, backoff=Backoff())
        url = root + ROUTE
        headers = {"Content-Type": "application/octet-stream"}
        # One untimed pair: the connection is opened once, as an agent's session keeps it.
        await api.request("PUT", url, token=None, body=body, headers=headers)
        await api.download(url, token=None, limit=len(body))
        for _ in range(repeats):
            start = time.thread_time()
            await api.request("PUT", url, token=None, body=body, headers=headers)
            await api.download(url, token=None, limit=len(body))
            seconds.append((time.thread_time() - start) / 2)
    return seconds


def measure_request_cpu_s(repeats: int = 50) -> float:
    """The median processor seconds one request of the agent's HTTP client costs this host's
    core (see the module docstring). Runs its own event loop: call it from no running loop
    (an agent calls it in its executor)."""
    if repeats < 1:
        raise ValueError(f"repeats: must be >= 1, got {repeats}")
    body = bytes(BODY_BYTES)
    with _loopback_server(body) as root:
        seconds = asyncio.run(_time_requests(root, body, repeats))
    return statistics.median(seconds)


async def _time_downloads(root: str, nbytes: int, repeats: int) -> list[tuple[float, float]]:
    """The client thread's processor seconds of each of ``repeats`` downloads of ``nbytes``,
    sent at once and sent paced: (at once, paced) pairs."""
    seconds = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector()) as session:
        api = ApiClient(session=session, server=root, backoff=Backoff())
        at_once, paced = root + ROUTE, root + PACED_ROUTE
        await api.download(at_once, token=None, limit=nbytes)  # opens the connection, untimed
        for _ in range(repeats):
            pair = []
            for url in (at_once, paced):
                start = time.thread_time()
                await api.download(url, token=None, limit=nbytes)
                pair.append(time.thread_time() - start)
            seconds.append((pair[0], pair[1]))
    return seconds


def measure_segment_cpu_s(repeats: int = 10) -> float:
    """The median processor seconds the agent's HTTP client spends per segment of a body
    that arrives paced, beyond what the same body costs when it arrives at once (see the
    module docstring); never below 0. Runs its own event loop, as
    :func:`measure_request_cpu_s` does."""
    if repeats < 1:
        raise ValueError(f"repeats: must be >= 1, got {repeats}")
    body = bytes(PACED_SEGMENTS * SEGMENT_BYTES)
    with _loopback_server(body) as root:
        pairs = asyncio.run(_time_downloads(root, len(body), repeats))
    return max(0.0, statistics.median((p - a) / PACED_SEGMENTS for a, p in pairs))


def with_device_costs(
    cal: Calibration,
    *,
    requests: int = 50,
    paced_downloads: int = 10,
    persists: int = 10,
    directory: str | os.PathLike[str] | None = None,
) -> Calibration:
    """``cal`` with what this host's processor and disk spend around a transfer, each measured
    here: a request (``request_cpu_s``), a segment of a paced body (``segment_cpu_s``) and
    keeping an update of the model's size (``persist_cpu_s``, ``persist_io_s``, in
    ``directory``). ``fedsim calibrate`` and the agent's calibration both make their profile's
    device costs here, so that a new one is measured by both."""
    persist = measure_persist(cal.state_bytes, repeats=persists, directory=directory)
    return dataclasses.replace(
        cal,
        request_cpu_s=measure_request_cpu_s(requests),
        segment_cpu_s=measure_segment_cpu_s(paced_downloads),
        persist_cpu_s=persist.cpu_s,
        persist_io_s=persist.io_s,
    )
