"""The agent against a hostile or broken server (issue 13, items 8, 9 and 15).

A fake server that answers the protocol's requests with what no fedsim server sends: tasks
nested thousands deep, answers too long to read, ids that would steer a URL, downloads longer
than their task announced. The agent refuses each, reports it where it can, and goes on: the
assertion that ends most tests is that a well-formed task queued afterwards still runs.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web

from fedsim.real.agent.agent import Agent
from fedsim.real.agent.client import MAX_REPLY_BYTES

# The agent tests' fake server and helpers (their fixtures are in conftest.py).
from tests.real.test_agent import BLOB_PATH, FakeServer, agent_config, fit_task, running

pytestmark = pytest.mark.asyncio

DEEP = 5000  # the reproduction: a task id nested 5000 deep


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def upload(task_id: str, nbytes: int = 10) -> dict[str, Any]:
    """A well-formed task, queued after a hostile one: it runs if the agent survived."""
    return {"id": task_id, "kind": "upload_data", "nbytes": nbytes}


class HostileServer(FakeServer):
    """The fake server, with raw answers to polls and heartbeats, blobs that lie about their
    size, and a record of every request to a path the protocol does not have."""

    def __init__(self) -> None:
        super().__init__()
        self.raw_polls: list[tuple[int, bytes]] = []  # (status, body), each answered once
        self.raw_heartbeats: list[bytes] = []
        self.blob_mode: str | None = None  # "announce" or "flood"
        self.flooded = 0  # bytes the flooding blob handler got out before the agent hung up
        self.stray: list[str] = []  # "METHOD path" of requests no route of the protocol takes

    def app(self) -> web.Application:
        app = super().app()
        app.router.add_route("*", "/{tail:.*}", self.record_stray)
        return app

    async def record_stray(self, request: web.Request) -> web.Response:
        self.stray.append(f"{request.method} {request.path}")
        await self._notify()
        return web.json_response({"ok": True})

    async def poll(self, request: web.Request) -> web.StreamResponse:
        if self.raw_polls:
            _, denied = self._device(request)
            if denied:
                return denied
            status, body = self.raw_polls.pop(0)
            self.hits["raw_poll"] += 1
            await self._notify()
            return web.Response(status=status, body=body, content_type="application/json")
        return await super().poll(request)

    async def heartbeat(self, request: web.Request) -> web.Response:
        if self.raw_heartbeats:
            self.heartbeats.append((await request.json())["resources"])
            await self._notify()
            return web.Response(body=self.raw_heartbeats.pop(0), content_type="application/json")
        return await super().heartbeat(request)

    async def blob(self, request: web.Request) -> web.StreamResponse:
        if self.blob_mode is None:
            return await super().blob(request)
        self.downloads.append(dict(request.headers))
        if self.blob_mode == "announce":  # 10 GB announced, as in the issue
            response = web.StreamResponse(headers={"Content-Length": str(10 * 10**9)})
        else:  # chunked: no length announced, and no end
            response = web.StreamResponse()
            response.enable_chunked_encoding()
        await response.prepare(request)
        chunk = bytes(64 * 1024)
        try:
            while self.flooded < 256 << 20:  # a bound only in case the agent never hangs up
                await response.write(chunk)
                self.flooded += len(chunk)
                await asyncio.sleep(0)
        except ConnectionError:
            pass
        return response


@pytest_asyncio.fixture
async def hostile(aiohttp_server) -> AsyncIterator[tuple[HostileServer, str]]:
    server = HostileServer()
    test_server = await aiohttp_server(server.app())
    yield server, f"http://{test_server.host}:{test_server.port}"


def hostile_agent(url: str, tmp_path, **overrides: Any) -> Agent:
    """An agent of the agent tests, without the bandwidth probe (the fake serves no /probe,
    and every request off the protocol's paths counts as stray here)."""
    return Agent(config=agent_config(url, tmp_path, probe_interval=0, **overrides))


# -- tasks that cannot be read --------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b'{"id": ' + nested(DEEP) + b', "kind": "fit"}',  # the reproduction
        nested(DEEP),
        b'{"id": "t-1", "id": "t-2", "kind": "upload_data", "nbytes": 1}',
        b'{"id": "t-1", "kind": "upload_data", "nbytes": 1e999}',
        b'{"id": "t-1", "kind": "upload_data", "nbytes": NaN}',
        b"not json",
        b"\xff\xfe",
        b'{"id": "t-1", "kind": "upload_data", "nbytes": 9223372036854775808}',
        b'{"id": "' + b"x" * (MAX_REPLY_BYTES + 1) + b'"}',
    ],
    ids=[
        "deep-id",
        "deep",
        "duplicate-key",
        "1e999",
        "nan",
        "not-json",
        "not-utf8",
        "int-beyond-int64",
        "too-long",
    ],
)
async def test_a_task_that_cannot_be_read_is_refused_and_the_agent_polls_on(
    hostile, tmp_path, caplog, body
):
    # Prepare
    server, url = hostile
    server.raw_polls.append((200, body))
    agent = hostile_agent(url, tmp_path)
    caplog.set_level(logging.ERROR, logger="fedsim.real.agent")

    # Execute
    async with running(agent) as run:
        await server.until(lambda: agent.device_id is not None, run)
        await server.give(agent.device_id, upload("t-after"))
        await server.until(lambda: len(server.data) == 1, run)

    # Assert: nothing to report it under; one short line of log says why.
    assert server.hits["raw_poll"] == 1
    assert server.errors == [] and server.stray == []
    [line] = [r.getMessage() for r in caplog.records if "cannot read" in r.getMessage()]
    assert len(line) < 500


@pytest.mark.parametrize(
    ("task", "words"),
    [
        ({"id": "t-kind", "kind": [[["fit"]]]}, "unknown task kind"),
        ({"id": "t-neg", **{k: v for k, v in fit_task("", b"", samples=-5).items() if k != "id"}},
         "samples"),
        ({"id": "t-extra", "kind": "upload_data", "nbytes": 1, "dance": 1}, "not a known"),
        ({"id": "t-what", "kind": "forward", "nbytes": 10}, "num_examples"),
    ],
    ids=["nested-kind", "negative-samples", "unknown-field", "missing-field"],
)  # fmt: skip
async def test_a_malformed_task_with_a_usable_id_is_reported_under_it(
    hostile, tmp_path, task, words
):
    # Prepare
    server, url = hostile
    agent = hostile_agent(url, tmp_path)

    # Execute
    async with running(agent) as run:
        await server.until(lambda: agent.device_id is not None, run)
        await server.give(agent.device_id, task)
        await server.until(lambda: len(server.errors) == 1, run)
        await server.give(agent.device_id, upload("t-after"))
        await server.until(lambda: len(server.data) == 1, run)

    # Assert: no update (with a count of -5 or any other) went out for it.
    [(task_id, reason)] = server.errors
    assert task_id == task["id"] and words in reason
    assert server.updates == [] and server.stray == []


@pytest.mark.parametrize("task_id", ["..", ".", "a/../../data", "x" * 300, 7, None])
async def test_a_task_whose_id_would_steer_a_url_is_refused_without_a_request(
    hostile, tmp_path, task_id
):
    # Prepare: a task that would make the agent PUT to /api/v1/data, say.
    server, url = hostile
    agent = hostile_agent(url, tmp_path)
    server.raw_polls.append((200, _json({"id": task_id, "kind": "upload_data", "nbytes": 10})))

    # Execute
    async with running(agent) as run:
        await server.until(lambda: agent.device_id is not None, run)
        await server.give(agent.device_id, upload("t-after"))
        await server.until(lambda: len(server.data) == 1, run)

    # Assert: the one upload is the well-formed task's; no request left the protocol's paths.
    assert [d["task"] for d in server.data] == ["t-after"]
    assert server.errors == [] and server.stray == []


async def test_hostile_answers_to_heartbeats_and_polls_are_logged_and_outlived(hostile, tmp_path):
    # Prepare: heartbeats answered with deep and endless JSON; a poll refused with a deep
    # error body (once read by plain json.loads, which raised RecursionError).
    server, url = hostile
    server.raw_heartbeats += [nested(DEEP), b"[" * (MAX_REPLY_BYTES + 1)]
    server.raw_polls.append((400, b'{"error": ' + nested(DEEP) + b"}"))
    agent = hostile_agent(url, tmp_path)

    # Execute
    async with running(agent) as run:
        await server.until(lambda: agent.device_id is not None, run)
        await server.until(lambda: not server.raw_heartbeats and not server.raw_polls, run)
        await server.give(agent.device_id, upload("t-after"))
        await server.until(lambda: len(server.data) == 1 and len(server.heartbeats) >= 4, run)

    # Assert
    assert server.errors == [] and server.stray == []


# -- downloads ------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["announce", "flood"])
async def test_a_download_longer_than_announced_is_refused_once_not_retried(
    hostile, tmp_path, shard_file, global_model, mode
):
    # Prepare: the task announces the model's true size; the blob is 10 GB, or has no end.
    server, url = hostile
    server.blob_mode = mode
    agent = hostile_agent(url, tmp_path, data=str(shard_file))

    # Execute
    async with running(agent) as run:
        await server.until(lambda: agent.device_id is not None, run)
        await server.give(agent.device_id, fit_task("t-big", global_model))
        await server.until(lambda: len(server.errors) == 1, run)
        await server.give(agent.device_id, upload("t-after"))
        await server.until(lambda: len(server.data) == 1, run)

    # Assert: one try, abandoned as soon as the size showed.
    [(task_id, reason)] = server.errors
    assert task_id == "t-big" and f"the {len(global_model)} bytes expected" in reason
    assert len(server.downloads) == 1 and server.updates == []
    assert server.flooded < 16 << 20


async def test_a_model_shorter_than_announced_is_refused(
    hostile, tmp_path, shard_file, global_model
):
    # Prepare: the blob ends early and the task carries no sha256 to catch it.
    server, url = hostile
    server.blobs[BLOB_PATH] = global_model[:-10]
    task = fit_task("t-short", global_model)
    task["model"]["sha256"] = None
    agent = hostile_agent(url, tmp_path, data=str(shard_file))

    # Execute
    async with running(agent) as run:
        await server.until(lambda: agent.device_id is not None, run)
        await server.give(agent.device_id, task)
        await server.until(lambda: len(server.errors) == 1, run)

    # Assert
    [(_, reason)] = server.errors
    assert f"{len(global_model) - 10} bytes but the task says {len(global_model)}" in reason
    assert server.updates == []


@pytest.mark.parametrize(
    ("model_url", "words"),
    [("http://127.0.0.2:9/blob", "not on the server"), ("file:///etc/passwd", "not http")],
)
async def test_a_model_url_away_from_the_server_without_a_relay_token_is_refused(
    hostile, tmp_path, shard_file, global_model, model_url, words
):
    # Prepare
    server, url = hostile
    task = fit_task("t-away", global_model)
    task["model"]["url"] = model_url
    agent = hostile_agent(url, tmp_path, data=str(shard_file))

    # Execute
    async with running(agent) as run:
        await server.until(lambda: agent.device_id is not None, run)
        await server.give(agent.device_id, task)
        await server.until(lambda: len(server.errors) == 1, run)

    # Assert
    [(_, reason)] = server.errors
    assert words in reason and server.downloads == []


@pytest.mark.parametrize(
    "task",
    [
        upload("t-data", nbytes=10**12),
        {"id": "t-fwd", "kind": "forward", "nbytes": 10**12, "num_examples": 5},
        {**fit_task("t-pad", b"", update_nbytes=10**12), "model": {
            "name": "yolov4", "version": 1, "nbytes": 10**12, "url": None}},
        fit_task("t-model", bytes(10)) | {"model": {
            "name": "digits_cnn", "version": 1, "nbytes": 10**12, "url": BLOB_PATH}},
    ],
    ids=["upload_data", "forward", "timing-only-update", "model"],
)  # fmt: skip
async def test_a_transfer_over_the_agents_limit_fails_the_task(hostile, tmp_path, shard_file, task):
    # Prepare
    server, url = hostile
    agent = hostile_agent(url, tmp_path, data=str(shard_file), max_transfer_bytes=1 << 20)

    # Execute
    async with running(agent) as run:
        await server.until(lambda: agent.device_id is not None, run)
        await server.give(agent.device_id, task)
        await server.until(lambda: len(server.errors) == 1, run)

    # Assert: nothing sent or fetched.
    [(task_id, reason)] = server.errors
    assert task_id == task["id"] and "--max-transfer-bytes" in reason
    assert server.data == [] and server.updates == [] and server.downloads == []


def _json(value: Any) -> bytes:
    return json.dumps(value).encode()
