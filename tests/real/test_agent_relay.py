"""The agent's part in hierarchical rounds and dropouts, against test_agent's fake server:
relay (hold a version, serve it to the group), a member fetching from its aggregator, forward,
and a fit task marked drop."""

from __future__ import annotations

import aiohttp
import pytest

from fedsim.real.agent.agent import Agent

# The agent tests' helpers serve these tests too (their fixtures are in conftest.py).
from tests.real.test_agent import (
    BLOB_PATH,
    MODEL,
    CountingTrainers,
    agent_config,
    fit_task,
    running,
)

pytestmark = pytest.mark.asyncio

TOKEN = "relay-token-for-tests"


def relay_task(task_id: str, blob: bytes) -> dict:
    model = fit_task(task_id, blob)["model"]
    return {"id": task_id, "kind": "relay", "model": model, "token": TOKEN}


async def relayed_fit(server, run, blob: bytes, token: str) -> dict:
    """Device 1 relays ``blob`` for its group; device 2's fit task to fetch it with ``token``."""
    await server.give(1, relay_task("r0-relay-g1", blob))
    await server.until(lambda: len(server.relays) == 1, run)
    task = fit_task("r0-d2", blob)
    task["model"] = {**task["model"], "url": server.relays[0]["body"]["url"], "token": token}
    return task


async def test_a_relay_holds_the_model_for_the_group_behind_its_token(fake, tmp_path, global_model):
    # Prepare
    server, url = fake
    server.blobs[BLOB_PATH] = global_model
    agent = Agent(config=agent_config(url, tmp_path))

    # Execute
    async with running(agent) as run:
        await server.until(lambda: agent.device_id is not None, run)
        await server.give(agent.device_id, relay_task("r0-relay-g1", global_model))
        await server.until(lambda: len(server.relays) == 1, run)
        held = server.relays[0]["body"]["url"]
        async with aiohttp.ClientSession() as session:
            async with session.get(held, headers={"Authorization": f"Bearer {TOKEN}"}) as r:
                served = (r.status, await r.read())
            async with session.get(held, headers={"Authorization": "Bearer guess"}) as r:
                refused = r.status

    # Assert
    assert held.startswith("http://127.0.0.1:") and held.endswith(
        f"/models/{MODEL}/versions/4/blob"
    )
    assert server.relays[0]["body"]["timings"]["download_s"] >= 0
    assert served == (200, global_model)
    assert refused == 401
    assert len(server.downloads) == 1 and server.errors == []


async def test_a_member_trains_on_the_model_its_aggregator_relays(
    fake, tmp_path, shard_file, global_model
):
    # Prepare: an aggregator and a member; the member's task points at the aggregator.
    server, url = fake
    server.blobs[BLOB_PATH] = global_model
    aggregator = Agent(config=agent_config(url, tmp_path / "a", device_id=1))
    member = Agent(config=agent_config(url, tmp_path / "m", device_id=2, data=str(shard_file)))

    # Execute
    async with running(aggregator) as run_a, running(member) as run_m:
        await server.until(lambda: member.device_id is not None, run_m)
        await server.give(2, await relayed_fit(server, run_a, global_model, TOKEN))
        await server.until(lambda: len(server.updates) == 1, run_m)

    # Assert: trained, and the server served the blob once: to the aggregator.
    assert server.updates[0]["task"] == "r0-d2"
    assert len(server.downloads) == 1 and server.errors == []


async def test_a_member_whose_token_is_refused_reports_the_task_failed(
    fake, tmp_path, shard_file, global_model
):
    # Prepare
    server, url = fake
    server.blobs[BLOB_PATH] = global_model
    aggregator = Agent(config=agent_config(url, tmp_path / "a", device_id=1))
    member = Agent(config=agent_config(url, tmp_path / "m", device_id=2, data=str(shard_file)))

    # Execute
    async with running(aggregator) as run_a, running(member) as run_m:
        await server.until(lambda: member.device_id is not None, run_m)
        wrong = "a-token-of-another-relay"
        await server.give(2, await relayed_fit(server, run_a, global_model, wrong))
        await server.until(lambda: len(server.errors) == 1, run_m)

    # Assert
    [(task_id, reason)] = server.errors
    assert task_id == "r0-d2" and "401" in reason
    assert server.updates == []


async def test_forward_sends_padding_of_the_groups_update_and_its_examples(fake, tmp_path):
    # Prepare
    server, url = fake
    agent = Agent(config=agent_config(url, tmp_path))
    task = {"id": "r0-forward-g1", "kind": "forward", "nbytes": 12_345, "num_examples": 288}

    # Execute
    async with running(agent) as run:
        await server.until(lambda: agent.device_id is not None, run)
        await server.give(agent.device_id, task)
        await server.until(lambda: len(server.updates) == 1, run)

    # Assert
    [update] = server.updates
    assert update["task"] == "r0-forward-g1" and len(update["body"]) == 12_345
    assert update["headers"]["X-Fedsim-Timing-Only"] == "1"
    assert update["headers"]["X-Fedsim-Num-Examples"] == "288"


async def test_a_dropped_fit_is_trained_then_nothing_is_sent_and_the_next_task_runs(
    fake, tmp_path, shard_file, global_model
):
    # Prepare
    server, url = fake
    server.blobs[BLOB_PATH] = global_model
    trainers = CountingTrainers()
    agent = Agent(
        config=agent_config(url, tmp_path, data=str(shard_file)), trainer_factory=trainers
    )

    # Execute
    async with running(agent) as run:
        await server.until(lambda: agent.device_id is not None, run)
        await server.give(agent.device_id, fit_task("r0-d1", global_model, drop=True))
        await server.give(agent.device_id, fit_task("r1-d1", global_model))
        await server.until(lambda: len(server.updates) == 1, run)

    # Assert: both trained; only the second sent anything.
    assert trainers.calls == 2
    assert [u["task"] for u in server.updates] == ["r1-d1"]
    assert server.errors == []
