"""The server's side of a relay task: ``PUT /tasks/{id}/relay`` files where the aggregator
serves the model, idempotently; other kinds and other routes are refused."""

from __future__ import annotations

import time

import pytest

from fedsim.real.board import PostedTask
from fedsim.real.protocol import RelayTask, TaskModel, Timings
from tests.real.conftest import API

pytestmark = pytest.mark.asyncio

HELD = "http://127.0.0.1:9101/models/m/versions/1/blob"


def post_relay(server, device: int) -> None:
    model = TaskModel(name="m", version=1, nbytes=1000)
    message = RelayTask(id="r0-relay-g1", model=model, token="t" * 24)
    server.board.post(
        PostedTask(id=message.id, device=device, message=message, posted_at=time.time())
    )


async def test_a_relay_result_is_filed_with_its_url_and_timings(server):
    # Prepare
    id, token = await server.register()
    post_relay(server, id)
    url = f"{API}/tasks/r0-relay-g1/relay"
    body = {"url": HELD, "timings": {"download_s": 0.25}}

    # Execute
    first = await server.client.put(url, json=body, headers=token)
    outcome = server.board.next_outcome(timeout=1)
    again = await server.client.put(url, json=body, headers=token)
    other = await server.client.put(url, json={**body, "url": None}, headers=token)

    # Assert
    assert (first.status, again.status, other.status) == (201, 200, 409)
    assert outcome.url == HELD and outcome.timings == Timings(download_s=0.25)
    assert server.board.outcomes.empty()


@pytest.mark.parametrize(
    "body",
    [{"url": "ftp://x/blob"}, {"timings": {}}, {"url": HELD, "timings": {"nap_s": 1.0}}],
)
async def test_a_malformed_relay_result_is_422(server, body):
    id, token = await server.register()
    post_relay(server, id)
    r = await server.client.put(f"{API}/tasks/r0-relay-g1/relay", json=body, headers=token)
    assert r.status == 422
    assert server.board.outcomes.empty()


async def test_a_relay_task_takes_no_update(server):
    id, token = await server.register()
    post_relay(server, id)
    r = await server.client.put(
        f"{API}/tasks/r0-relay-g1/update",
        data=b"x" * 10,
        headers={**token, "X-Fedsim-Num-Examples": "0", "X-Fedsim-Timing-Only": "1"},
    )
    assert r.status == 409
    assert server.board.outcomes.empty()
