"""The agents' side of the task board: long polls, results filed as outcomes, idempotence,
ownership, cancellation, and validation of updates."""

from __future__ import annotations

import asyncio
import json
import time

import numpy as np
import pytest

from fedsim.real.board import PostedTask, TaskBoard
from fedsim.real.protocol import FitTask, ForwardTask, TaskModel, Timings, UploadDataTask
from fedsim.store.safetensors_io import encode
from tests.real.conftest import ADMIN, API, blob, leftovers, weights

pytestmark = pytest.mark.asyncio


def post(server, device: int, *, id: str = "r1-d0", kind: str = "fit", reference=True):
    if kind == "fit":
        model = TaskModel(name="m", version=1, nbytes=1000)
        message = FitTask(id=id, model=model, samples=480, epochs=1, batch_size=16)
    else:
        message = UploadDataTask(id=id, samples=480, nbytes=1000)
    task = PostedTask(
        id=id,
        device=device,
        message=message,
        posted_at=time.time(),
        reference=weights() if reference and kind == "fit" else None,
    )
    server.board.post(task)
    return task


def update_headers(token: dict, **extra: str) -> dict:
    return {
        **token,
        "X-Fedsim-Num-Examples": "480",
        "X-Fedsim-Metrics": json.dumps({"loss": 0.2}),
        "X-Fedsim-Timings": json.dumps({"download_s": 0.1, "train_s": 2.0}),
        **extra,
    }


async def test_long_poll_is_woken_by_a_posted_task_and_hands_it_out_again(server):
    id, token = await server.register()
    poll = asyncio.ensure_future(
        server.client.get(f"{API}/devices/{id}/tasks?wait=10", headers=token)
    )
    await asyncio.sleep(0.1)
    assert not poll.done()
    started = time.monotonic()
    post(server, id)
    r = await poll
    assert time.monotonic() - started < 5
    assert r.status == 200
    assert (await r.json())["id"] == "r1-d0"
    # Taken but not finished: a restarted agent polling again gets the same task.
    r = await server.client.get(f"{API}/devices/{id}/tasks", headers=token)
    assert (await r.json())["id"] == "r1-d0"


async def test_poll_times_out_with_204(server):
    id, token = await server.register()
    started = time.monotonic()
    r = await server.client.get(f"{API}/devices/{id}/tasks?wait=0.2", headers=token)
    assert r.status == 204
    assert 0.15 < time.monotonic() - started < 5
    for wait in ("-1", "soon", "inf"):
        r = await server.client.get(f"{API}/devices/{id}/tasks?wait={wait}", headers=token)
        assert r.status == 422
        assert (await r.json())["error"]["field"] == "wait"


async def test_poll_of_a_removed_device_is_410(server):
    id, token = await server.register()
    await server.client.delete(f"{API}/devices/{id}", headers=ADMIN)
    r = await server.client.get(f"{API}/devices/{id}/tasks", headers=token)
    assert r.status == 410


async def test_update_is_filed_as_an_outcome_with_decoded_arrays(server):
    id, token = await server.register()
    post(server, id)
    data = blob(0.5)
    r = await server.client.put(
        f"{API}/tasks/r1-d0/update", data=data, headers=update_headers(token)
    )
    assert r.status == 201
    result = await r.json()
    assert result["task"] == "r1-d0" and result["nbytes"] == len(data)

    outcome = server.board.next_outcome(timeout=1)
    assert outcome.task_id == "r1-d0" and outcome.device == id
    assert outcome.num_examples == 480
    assert outcome.metrics == {"loss": 0.2}
    assert outcome.timings == Timings(download_s=0.1, train_s=2.0)
    assert outcome.nbytes == len(data)
    np.testing.assert_array_equal(outcome.parameters["w"], weights(0.5)["w"])
    np.testing.assert_array_equal(outcome.parameters["b"], weights(0.5)["b"])
    assert leftovers(server) == []


async def test_repeated_update_is_200_and_not_filed_twice_different_is_409(server):
    id, token = await server.register()
    post(server, id)
    url = f"{API}/tasks/r1-d0/update"
    first = await server.client.put(url, data=blob(0.5), headers=update_headers(token))
    assert first.status == 201
    again = await server.client.put(url, data=blob(0.5), headers=update_headers(token))
    assert again.status == 200
    assert await again.json() == await first.json()
    other = await server.client.put(url, data=blob(0.7), headers=update_headers(token))
    assert other.status == 409
    assert server.board.outcomes.qsize() == 1


async def test_results_for_other_devices_unknown_or_cancelled_tasks(server):
    owner, _ = await server.register()
    _, intruder = await server.register()
    post(server, owner)
    url = f"{API}/tasks/r1-d0/update"
    r = await server.client.put(url, data=blob(), headers=update_headers(intruder))
    assert r.status == 403
    r = await server.client.put(
        f"{API}/tasks/nope/update", data=blob(), headers=update_headers(intruder)
    )
    assert r.status == 404
    server.board.cancel("r1-d0")
    r = await server.client.put(url, data=blob(), headers=update_headers(ADMIN))
    assert r.status == 410
    r = await server.client.post(f"{API}/tasks/r1-d0/error", json={"reason": "x"}, headers=ADMIN)
    assert r.status == 410
    assert server.board.outcomes.empty()


async def test_update_must_match_the_task_layout(server):
    id, token = await server.register()
    post(server, id)
    url = f"{API}/tasks/r1-d0/update"
    wrong = [
        blob(0.5, n=5),  # another shape
        encode({"w": np.zeros((4, 3), np.float32)}),  # a tensor missing
        b"garbage, not safetensors",
    ]
    for data in wrong:
        r = await server.client.put(url, data=data, headers=update_headers(token))
        assert r.status == 422
    assert server.board.outcomes.empty()
    assert leftovers(server) == []
    r = await server.client.put(url, data=blob(), headers=update_headers(token))
    assert r.status == 201  # the task still takes a good update


@pytest.mark.parametrize(
    ("headers", "status", "field"),
    [
        ({"X-Fedsim-Num-Examples": "many"}, 400, "X-Fedsim-Num-Examples"),
        ({"X-Fedsim-Num-Examples": "-1"}, 422, "X-Fedsim-Num-Examples"),
        ({"X-Fedsim-Metrics": "[1"}, 400, "X-Fedsim-Metrics"),
        ({"X-Fedsim-Metrics": '{"loss": "low"}'}, 422, "X-Fedsim-Metrics.loss"),
        ({"X-Fedsim-Timings": "[]"}, 422, "X-Fedsim-Timings"),
        ({"X-Fedsim-Timing-Only": "maybe"}, 400, "X-Fedsim-Timing-Only"),
        ({"X-Fedsim-Timing-Only": "1"}, 422, "X-Fedsim-Timing-Only"),  # the task has parameters
    ],
)
async def test_bad_result_headers(server, headers, status, field):
    id, token = await server.register()
    post(server, id)
    r = await server.client.put(
        f"{API}/tasks/r1-d0/update", data=blob(), headers=update_headers(token, **headers)
    )
    assert r.status == status
    assert (await r.json())["error"]["field"] == field


async def test_num_examples_is_required(server):
    id, token = await server.register()
    post(server, id)
    r = await server.client.put(f"{API}/tasks/r1-d0/update", data=blob(), headers=token)
    assert r.status == 422
    assert (await r.json())["error"]["field"] == "X-Fedsim-Num-Examples"


async def test_timing_only_update_counts_bytes_without_parameters(server):
    id, token = await server.register()
    post(server, id, reference=False)
    r = await server.client.put(
        f"{API}/tasks/r1-d0/update",
        data=b"\0" * 12345,
        headers=update_headers(token, **{"X-Fedsim-Timing-Only": "1"}),
    )
    assert r.status == 201
    outcome = server.board.next_outcome(timeout=1)
    assert outcome.parameters is None and outcome.nbytes == 12345


async def test_data_upload_is_counted_and_discarded(server):
    id, token = await server.register()
    post(server, id, kind="upload_data")
    r = await server.client.put(
        f"{API}/tasks/r1-d0/update", data=blob(), headers=update_headers(token)
    )
    assert r.status == 409  # an upload_data task takes /data
    r = await server.client.put(f"{API}/tasks/r1-d0/data", data=b"x" * 5000, headers=token)
    assert r.status == 201
    outcome = server.board.next_outcome(timeout=1)
    assert outcome.nbytes == 5000 and outcome.parameters is None
    r = await server.client.put(f"{API}/tasks/r1-d0/data", data=b"x" * 5000, headers=token)
    assert r.status == 200


async def test_oversized_update_is_413(make_server):
    server = await make_server(max_blob_bytes=1000)
    id, token = await server.register()
    post(server, id, kind="upload_data")
    r = await server.client.put(f"{API}/tasks/r1-d0/data", data=b"x" * 5000, headers=token)
    assert r.status == 413
    assert server.board.outcomes.empty()


async def test_error_report_is_an_outcome_and_idempotent(server):
    id, token = await server.register()
    post(server, id)
    url = f"{API}/tasks/r1-d0/error"
    r = await server.client.post(url, json={"reason": "out of memory"}, headers=token)
    assert r.status == 200
    assert (await r.json())["error"] == "out of memory"
    assert (
        await server.client.post(url, json={"reason": "out of memory"}, headers=token)
    ).status == 200
    assert (await server.client.post(url, json={"reason": "other"}, headers=token)).status == 409
    r = await server.client.post(url, json={}, headers=token)
    assert (await r.json())["error"]["field"] == "reason"
    outcome = server.board.next_outcome(timeout=1)
    assert outcome.error == "out of memory"
    assert server.board.outcomes.empty()


async def test_task_metrics_are_counted(server):
    id, token = await server.register()
    post(server, id)
    await server.client.put(f"{API}/tasks/r1-d0/update", data=blob(), headers=update_headers(token))
    text = await (await server.client.get("/metrics")).text()
    assert 'fedsim_tasks_total{kind="fit",outcome="succeeded"} 1.0' in text
    assert f'fedsim_bytes_received_total{{kind="update"}} {float(len(blob()))}' in text


async def test_posting_after_the_server_loop_closed_does_not_raise():
    """The coordinator may post while the server is gone (teardown); nobody waits then."""
    board = TaskBoard()
    loop = asyncio.new_event_loop()
    board.bind(loop)
    loop.close()
    message = UploadDataTask(id="t", nbytes=1)
    board.post(PostedTask(id="t", device=0, message=message, posted_at=0.0))
    assert [t.id for t in board.pending(0)] == ["t"]


async def test_an_update_claiming_more_examples_than_its_task_asked_for_is_422(server):
    # Prepare: the task asks for 480 samples x 1 epoch; the update is issue 13's, finite 3e38
    # weights claiming 1e18 examples.
    id, token = await server.register()
    post(server, id)
    url = f"{API}/tasks/r1-d0/update"
    claim = {"X-Fedsim-Num-Examples": "1000000000000000000"}
    # Execute
    r = await server.client.put(url, data=blob(3e38), headers=update_headers(token, **claim))
    # Assert: refused on its header, nothing filed, and the task still takes a good update.
    assert r.status == 422
    error = (await r.json())["error"]
    assert error["field"] == "X-Fedsim-Num-Examples"
    assert "1000000000000000000 examples, but task r1-d0 asked for 480" in error["message"]
    assert server.board.outcomes.empty() and leftovers(server) == []
    r = await server.client.put(url, data=blob(0.5), headers=update_headers(token))
    assert r.status == 201


@pytest.mark.parametrize("value", [3e38, float("nan"), float("-inf")])
async def test_an_update_with_values_no_rule_can_aggregate_is_422(server, value):
    id, token = await server.register()
    post(server, id)
    r = await server.client.put(
        f"{API}/tasks/r1-d0/update", data=blob(value), headers=update_headers(token)
    )
    assert r.status == 422
    assert "unusable: w:" in (await r.json())["error"]["message"]
    assert server.board.outcomes.empty() and leftovers(server) == []


async def test_a_forwarded_update_is_bounded_by_the_group_count_its_task_names(server):
    # Prepare: a forward task for a group that trained on 960 examples.
    id, token = await server.register()
    task = PostedTask(
        id="r1-forward-g1",
        device=id,
        message=ForwardTask(id="r1-forward-g1", nbytes=100, num_examples=960),
        posted_at=time.time(),
    )
    server.board.post(task)
    url = f"{API}/tasks/r1-forward-g1/update"
    timing = {"X-Fedsim-Timing-Only": "1"}
    # Execute
    over = await server.client.put(
        url,
        data=b"\0" * 100,
        headers=update_headers(token, **timing, **{"X-Fedsim-Num-Examples": "961"}),
    )
    exact = await server.client.put(
        url,
        data=b"\0" * 100,
        headers=update_headers(token, **timing, **{"X-Fedsim-Num-Examples": "960"}),
    )
    # Assert
    assert over.status == 422
    assert (await over.json())["error"]["field"] == "X-Fedsim-Num-Examples"
    assert exact.status == 201
