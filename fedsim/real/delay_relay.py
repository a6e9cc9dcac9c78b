"""A TCP relay that holds each direction's bytes for a fixed time: link latency without netem.

Where the kernel has no ``sch_netem``, tc can shape a link's rate but cannot delay its packets.
``mode=emulated`` then gives every agent a port of this relay, on the server's address in the
root namespace: the agent dials the port, its bytes cross the agent's shaped links to it, and
the relay passes each chunk on to the server one one-way delay (``up_s``) after it arrived, and
each chunk of the server's answer back to the agent ``down_s`` after it arrived, in order. A
request and its response thus each take their one-way delay, as over a delaying link. What it
does not do, and netem would: delay TCP's own packets (the handshake, acknowledgements, so a
window's worth of data is not held back by the round trip), add jitter, or lose packets; the
emulation says which mechanism it used, and the prediction of a relayed run drops jitter and
loss.

One process serves all of a run's agents (one listening port each); it runs as
``python -m fedsim.real.delay_relay --upstream HOST:PORT --listen HOST --route ID:UP_S:DOWN_S
...``, prints one JSON line ``{"ports": {ID: PORT}}`` once it listens, and serves until
SIGTERM or SIGINT. :mod:`fedsim.real.emulate` starts it in the run's cgroup, so that it is
removed with the run's other resources.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import selectors
import signal
import sys
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

CHUNK = 65536  # bytes read at once from either end
SELECT_ROUTES_MAX = 64  # routes (agents) up to which the relay's loop waits in select(2)


@dataclass(frozen=True)
class Route:
    """One agent's port: bytes towards the server wait ``up_s``, bytes back ``down_s``."""

    id: str
    up_s: float
    down_s: float

    @classmethod
    def parse(cls, text: str) -> Route:
        """``ID:UP_S:DOWN_S``, e.g. ``3:0.05:0.05``."""
        parts = text.split(":")
        if len(parts) != 3:
            raise ValueError(f"route {text!r}: expected ID:UP_S:DOWN_S")
        try:
            up, down = float(parts[1]), float(parts[2])
        except ValueError:
            raise ValueError(f"route {text!r}: the delays must be numbers of seconds") from None
        if not (up >= 0 and down >= 0):
            raise ValueError(f"route {text!r}: the delays must be >= 0 s")
        return cls(parts[0], up, down)


class Timer:
    """Wakes the relay's writers on time: ``sleep_until`` returns near a due time, neither
    systematically late nor early.

    An event loop's timers wake late: epoll waits in whole milliseconds, rounded up, and
    every wake-up also pays the kernel's timer slack and the loop's turn. On this project's VM
    a sleep of 6.25 ms woke 0.95 ms late (median) under epoll and 0.20 ms late under select(2);
    a relay that woke that late on each of the four one-way trips of a training task (the
    task's poll answer, the model's request and its bytes, the update) added about 4 ms to
    every round, which the prediction, holding the links' latency only, did not have. So each
    sleep ends ``lead`` early, ``lead`` being the lateness the wake-ups have had (a running
    mean of the last ones), and what is due within ``lead`` of a wake-up goes out then: early
    and late wake-ups balance out.
    """

    WEIGHT = 0.1  # of the newest lateness in the running mean
    LEAD_MAX_S = 0.002  # a lateness beyond this is the host's load, not the timer's

    def __init__(self) -> None:
        self.lead = 0.0

    def horizon(self, now: float) -> float:
        """What is due by this time is released now."""
        return now + self.lead

    async def sleep_until(self, loop: asyncio.AbstractEventLoop, due: float) -> None:
        """Sleep until ``due`` on ``loop``'s clock, less the lead."""
        asked = due - self.lead
        wait = asked - loop.time()
        if wait <= 0:
            return
        await asyncio.sleep(wait)
        late = min(max(loop.time() - asked, 0.0), self.LEAD_MAX_S)
        self.lead += self.WEIGHT * (late - self.lead)


async def _pipe(
    src: asyncio.StreamReader, dst: asyncio.StreamWriter, delay_s: float, timer: Timer
) -> None:
    """Copy ``src`` to ``dst``, each chunk ``delay_s`` after it was read, keeping order.

    Reading does not wait for the writes: a chunk read while earlier ones are held is held
    from its own arrival, so a stream is delayed, not slowed. The chunks due by the time the
    writer wakes go out in one write: a paced stream arrives a segment at a time, and a write
    and a wake-up per segment would cost the host's processor, which the agents share, more.
    """
    loop = asyncio.get_running_loop()
    held: deque[tuple[float, bytes]] = deque()
    arrived = asyncio.Event()

    async def release() -> None:
        while True:
            while not held:
                arrived.clear()
                await arrived.wait()
            await timer.sleep_until(loop, held[0][0])
            now, out, ended = timer.horizon(loop.time()), [], False
            while held and held[0][0] <= now:
                data = held.popleft()[1]
                if not data:  # the end of the stream, delayed like the data before it
                    ended = True
                    break
                out.append(data)
            if out:
                dst.write(b"".join(out))
                await dst.drain()
            if ended:
                if dst.can_write_eof():
                    dst.write_eof()
                return

    releaser = asyncio.create_task(release())
    try:
        while True:
            data = await src.read(CHUNK)
            held.append((loop.time() + delay_s, data))
            arrived.set()
            if not data:
                break
        await releaser
    finally:
        releaser.cancel()


async def _relay(
    client: asyncio.StreamReader,
    to_client: asyncio.StreamWriter,
    upstream: tuple[str, int],
    route: Route,
    timer: Timer,
) -> None:
    """One connection: dial the server, then pipe both ways until both ends are done."""
    try:
        server, to_server = await asyncio.open_connection(*upstream)
    except OSError:
        to_client.close()
        return
    pipes = [
        asyncio.create_task(_pipe(client, to_server, route.up_s, timer)),
        asyncio.create_task(_pipe(server, to_client, route.down_s, timer)),
    ]
    try:
        # A reset or a failure of either side ends the connection; a clean end of one
        # direction (half-close) lets the other finish.
        for done in asyncio.as_completed(pipes):
            try:
                await done
            except (ConnectionError, OSError):
                break
    finally:
        for pipe in pipes:
            pipe.cancel()
        for writer in (to_server, to_client):
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()


async def serve(
    upstream: tuple[str, int],
    listen: str,
    routes: Sequence[Route],
    ports: dict[str, int],
    *,
    ready: asyncio.Event,
) -> None:
    """Listen on ``listen`` for each of ``routes`` (a free port each, written into ``ports``
    by route id, then ``ready`` set) and relay until cancelled."""
    servers = []
    timer = Timer()  # one for every connection: their wake-ups are the same loop's
    try:
        for route in routes:

            async def handle(
                r: asyncio.StreamReader, w: asyncio.StreamWriter, route: Route = route
            ) -> None:
                await _relay(r, w, upstream, route, timer)

            server = await asyncio.start_server(handle, listen, 0)
            servers.append(server)
            ports[route.id] = server.sockets[0].getsockname()[1]
        ready.set()
        await asyncio.Event().wait()  # until cancelled
    finally:
        for server in servers:
            server.close()


def _address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    return host, int(port)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fedsim.real.delay_relay", description=__doc__)
    parser.add_argument("--upstream", type=_address, required=True, help="the server, HOST:PORT")
    parser.add_argument("--listen", required=True, help="the address the ports listen on")
    parser.add_argument("--route", action="append", default=[], help="ID:UP_S:DOWN_S")
    args = parser.parse_args(argv)
    try:
        routes = [Route.parse(r) for r in args.route]
    except ValueError as e:
        parser.error(str(e))
    if not routes:
        parser.error("at least one --route is needed")
    loop = _loop(len(routes))
    try:
        loop.run_until_complete(_main(args.upstream, args.listen, routes))
        loop.run_until_complete(loop.shutdown_asyncgens())
    finally:
        loop.close()
    return 0


def _loop(routes: int) -> asyncio.AbstractEventLoop:
    """The relay's event loop: waiting in select(2), whose timeout counts microseconds, where
    epoll's counts milliseconds (rounded up: a wake-up up to 1 ms late); with more routes than
    :data:`SELECT_ROUTES_MAX`, in the default selector, as select(2) takes no descriptor past
    1023 (each route listens on one, and each of its connections holds two)."""
    if routes > SELECT_ROUTES_MAX:
        return asyncio.new_event_loop()
    return asyncio.SelectorEventLoop(selectors.SelectSelector())


async def _main(upstream: tuple[str, int], listen: str, routes: Sequence[Route]) -> None:
    loop = asyncio.get_running_loop()
    ready = asyncio.Event()
    ports: dict[str, int] = {}
    task = asyncio.create_task(serve(upstream, listen, routes, ports, ready=ready))
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    ready_or_failed = asyncio.create_task(ready.wait())
    await asyncio.wait([task, ready_or_failed], return_when=asyncio.FIRST_COMPLETED)
    if not ready.is_set():
        ready_or_failed.cancel()
        await task  # binding failed: its error ends the process
        return
    print(json.dumps({"ports": ports}), flush=True)
    with contextlib.suppress(asyncio.CancelledError):
        await task


if __name__ == "__main__":
    sys.exit(main())
