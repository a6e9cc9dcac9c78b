"""The server's connections: slow clients are cut off, and nothing secret reaches its log."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from tests.real.conftest import ADMIN, API, bearer

pytestmark = pytest.mark.asyncio

SLOW_CLIENTS = 5


async def trickle(host: str, port: int, *, every_s: float, until_s: float) -> float | None:
    """Send a request head one byte every ``every_s`` s; the seconds until the server closed
    the connection, or None if it was still open after ``until_s``."""
    reader, writer = await asyncio.open_connection(host, port)
    head = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 1000
    start = time.monotonic()
    try:
        for byte in head:
            if time.monotonic() - start > until_s:
                return None
            writer.write(bytes([byte]))
            await writer.drain()
            try:  # the server answers nothing before the head is whole: EOF means closed
                if await asyncio.wait_for(reader.read(1), timeout=every_s) == b"":
                    return time.monotonic() - start
            except TimeoutError:
                pass
    except ConnectionError:
        return time.monotonic() - start
    finally:
        writer.close()
    return None


async def test_slow_header_clients_are_cut_off_while_health_answers(make_server):
    # Prepare: a server that gives a request head 1 s.
    server = await make_server(header_read_timeout_s=1.0)
    host, port = server.client.server.host, server.client.server.port

    # Execute: slow clients trickle their headers while /health is asked every 0.2 s.
    slow = [
        asyncio.create_task(trickle(host, port, every_s=0.2, until_s=5.0))
        for _ in range(SLOW_CLIENTS)
    ]
    answered = []
    while not all(task.done() for task in slow):
        began = time.monotonic()
        r = await server.client.get("/health")
        answered.append((r.status, time.monotonic() - began))
        await asyncio.sleep(0.2)
    closed_after = [task.result() for task in slow]

    # Assert: each slow client was closed after about the timeout, /health always answered.
    assert all(t is not None and 0.9 <= t < 3.0 for t in closed_after), closed_after
    assert answered and all(status == 200 and took < 1.0 for status, took in answered), answered


async def test_a_prompt_client_keeps_its_connection_within_the_timeout(make_server):
    # Prepare
    server = await make_server(header_read_timeout_s=1.0)

    # Execute: two requests on one keep-alive connection, 0.3 s apart.
    first = await server.client.get("/health")
    await first.read()
    await asyncio.sleep(0.3)
    second = await server.client.get("/health")

    # Assert: both answered (the timeout bounds the head's arrival, not a fast client).
    assert first.status == second.status == 200


async def test_a_token_in_a_query_string_never_reaches_the_access_log(server, caplog):
    # Prepare
    secret = "query-secret-token-123"
    caplog.set_level(logging.INFO, logger="aiohttp.access")

    # Execute: the token in a query string, alone (401) and beside the admin token (422: an
    # unknown parameter), in a Referer, and as a wrong bearer token.
    alone = await server.client.get(
        f"{API}/devices?token={secret}&access_token={secret}", headers={"Referer": f"/?t={secret}"}
    )
    beside = await server.client.get(f"{API}/devices?token={secret}", headers=ADMIN)
    wrong = await server.client.get(f"{API}/devices", headers=bearer(secret))

    # Assert: each request is logged by its path, and no token is in the log.
    assert (alone.status, beside.status, wrong.status) == (401, 422, 401)
    lines = [r.getMessage() for r in caplog.records if r.name == "aiohttp.access"]
    assert len(lines) == 3 and all(f"GET {API}/devices" in line for line in lines), lines
    assert secret not in caplog.text
    assert "admin-secret-for-tests" not in caplog.text


async def test_an_unparsable_request_is_one_log_line_without_its_bytes(server, caplog):
    # Prepare: a head aiohttp cannot parse (a NUL byte in a header), carrying a token.
    secret = "header-secret-token-456"
    caplog.set_level(logging.DEBUG)
    host, port = server.client.server.host, server.client.server.port
    head = f"GET {API}/devices HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {secret}\x00\r\n\r\n"

    # Execute
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(head.encode())
    await writer.drain()
    status_line = await asyncio.wait_for(reader.readline(), timeout=5.0)
    writer.close()

    # Assert: refused with 400, logged as one warning with the reason, not the request's bytes.
    assert b" 400 " in status_line, status_line
    records = [r for r in caplog.records if r.name == "fedsim.server.http"]
    assert records and all(r.levelno == logging.WARNING and not r.exc_info for r in records)
    assert "400" in records[0].getMessage()
    assert secret not in caplog.text
