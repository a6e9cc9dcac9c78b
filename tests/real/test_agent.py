"""The device agent against a fake server speaking the device side of docs/protocol.md.

The fake implements only what an agent calls (registration, heartbeat, task poll, blob
download, results), keeps every request it saw for the assertions, and misbehaves on demand:
error statuses before answering, a download broken halfway, a wiped token table.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import secrets
import signal
import socket
import sys
import threading
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp import web

from fedsim.core.runtime import FitIns, ModelRef
from fedsim.ml.calibrate import EVAL_SAMPLES
from fedsim.ml.train import TorchTrainer
from fedsim.real.agent.agent import Agent
from fedsim.real.agent.config import AgentConfig
from fedsim.real.protocol import AgentCpu, CalibrationFailure, MeasuredProfile
from fedsim.store.safetensors_io import decode
from tests.real.conftest import ADMIN, ENROLLMENT_TOKEN

pytestmark = pytest.mark.asyncio

ENROLL = "enroll-secret"
MODEL = "digits_cnn"
BLOB_PATH = f"/api/v1/models/{MODEL}/versions/4/blob"
SAFETY_TIMEOUT = 30.0  # only a safety net: no test should come near it
ROOT = Path(__file__).resolve().parents[2]
BYO = ROOT / "examples" / "byo"  # a user's package: byo_fl
BYO_MODEL = "byo_fl.model.TinyNet"


class FakeServer:
    """The device endpoints of the protocol, in memory, recording what agents send."""

    def __init__(self) -> None:
        self.tokens: dict[str, int] = {}  # device token -> device id
        self.next_id = 100
        self.registrations: list[dict[str, Any]] = []  # {"auth", "body", "id", "token"}
        self.heartbeats: list[dict[str, float]] = []
        self.queues: dict[int, list[dict[str, Any]]] = defaultdict(list)
        self.updates: list[dict[str, Any]] = []  # {"task", "headers", "body", "status"}
        self.data: list[dict[str, Any]] = []  # {"task", "headers", "body"}
        self.relays: list[dict[str, Any]] = []  # {"task", "body"}
        self.errors: list[tuple[str, str]] = []
        self.downloads: list[dict[str, str]] = []  # the headers of each blob request
        self.profiles: list[dict[str, Any]] = []  # measured profiles reported
        self.calibration_failures: list[dict[str, Any]] = []  # {"requested_at", "reason"}
        # What the record in a heartbeat's answer says: a calibration request, or None.
        self.calibration_request: dict[str, Any] | None = None
        self.done: set[str] = set()
        self.blobs: dict[str, bytes] = {}
        self.faults: dict[str, list[int]] = defaultdict(list)  # route -> statuses to answer
        self.hits: dict[str, int] = defaultdict(int)
        self.break_downloads = 0  # this many blob downloads stop halfway
        self._changed = asyncio.Condition()
        self._wake: dict[int, asyncio.Event] = defaultdict(asyncio.Event)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 << 20)
        app.router.add_post("/api/v1/devices", self.register)
        app.router.add_put("/api/v1/devices/{id}/heartbeat", self.heartbeat)
        app.router.add_put("/api/v1/devices/{id}/profile", self.profile)
        app.router.add_put("/api/v1/devices/{id}/calibration-failure", self.calibration_failure)
        app.router.add_get("/api/v1/devices/{id}/tasks", self.poll)
        app.router.add_get("/api/v1/models/{name}/versions/{version}/blob", self.blob)
        app.router.add_put("/api/v1/tasks/{task}/update", self.update)
        app.router.add_put("/api/v1/tasks/{task}/data", self.upload_data)
        app.router.add_put("/api/v1/tasks/{task}/relay", self.relay)
        app.router.add_post("/api/v1/tasks/{task}/error", self.error)
        return app

    # -- the test's side ------------------------------------------------------------------

    async def give(self, device: int, task: dict[str, Any]) -> None:
        """Queue ``task`` for ``device`` (again, if it was done: as a server that lost it)."""
        self.done.discard(task["id"])
        self.queues[device].append(task)
        self._wake[device].set()
        await self._notify()

    async def wipe(self) -> None:
        """Forget every device and token, as a server restarted without its state."""
        self.tokens.clear()
        await self._notify()

    async def until(
        self, predicate: Callable[[], bool], agent_run: asyncio.Task | None = None
    ) -> None:
        """Wait until ``predicate()`` holds; fail at once if the agent's run ends first."""

        async def check() -> None:
            async with self._changed:
                await self._changed.wait_for(predicate)

        waiter = asyncio.create_task(check())
        watched = {waiter} if agent_run is None else {waiter, agent_run}
        done, _ = await asyncio.wait(
            watched, timeout=SAFETY_TIMEOUT, return_when=asyncio.FIRST_COMPLETED
        )
        if waiter not in done:
            waiter.cancel()
            if agent_run in done:
                agent_run.result()
                raise AssertionError("the agent stopped before the condition held")
            raise AssertionError("timed out waiting for the condition")

    # -- handlers -------------------------------------------------------------------------

    async def register(self, request: web.Request) -> web.Response:
        if fault := self._fault("register"):
            return fault
        body = await request.json()
        auth = _bearer(request)
        wanted = body.get("id")
        if auth == ENROLL:
            if wanted is not None and wanted in self.tokens.values():
                return _error(403, "id is registered; present its device token")
        elif auth not in self.tokens or (wanted is not None and self.tokens[auth] != wanted):
            return _error(401, "unknown token")
        device = wanted if wanted is not None else self._new_id()
        for old in [t for t, d in self.tokens.items() if d == device]:
            del self.tokens[old]
        token = secrets.token_hex(8)
        self.tokens[token] = device
        self.registrations.append({"auth": auth, "body": body, "id": device, "token": token})
        await self._notify()
        return web.json_response(
            {"device": {"id": device, "state": "online"}, "token": token}, status=201
        )

    async def heartbeat(self, request: web.Request) -> web.Response:
        device, denied = self._device(request)
        if denied:
            return denied
        self.heartbeats.append((await request.json())["resources"])
        await self._notify()
        return web.json_response(
            {"id": device, "state": "online", "calibration_request": self.calibration_request}
        )

    async def profile(self, request: web.Request) -> web.Response:
        device, denied = self._device(request)
        if denied:
            return denied
        self.profiles.append(await request.json())
        await self._notify()
        return web.json_response({"id": device, "state": "online"})

    async def calibration_failure(self, request: web.Request) -> web.Response:
        device, denied = self._device(request)
        if denied:
            return denied
        self.calibration_failures.append(await request.json())
        await self._notify()
        return web.json_response({"id": device, "state": "online"})

    async def poll(self, request: web.Request) -> web.Response:
        device, denied = self._device(request)
        if denied:
            return denied
        loop = asyncio.get_running_loop()
        deadline = loop.time() + float(request.query["wait"])
        while not self.queues[device]:
            wake = self._wake[device]
            wake.clear()
            try:
                await asyncio.wait_for(wake.wait(), max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                return web.Response(status=204)
        # Handed out and not finished: the same task again on every poll until a result;
        # a task the device drops out of is handed out once, as the task board does.
        task = self.queues[device][0]
        if task.get("drop"):
            self.queues[device].pop(0)
        return web.json_response(task)

    async def blob(self, request: web.Request) -> web.StreamResponse:
        _, denied = self._device(request)
        if denied:
            return denied
        self.downloads.append(dict(request.headers))
        blob = self.blobs[request.path]
        etag = f'"{hashlib.sha256(blob).hexdigest()}"'
        start = 0
        if "Range" in request.headers and request.headers.get("If-Range", etag) == etag:
            start = int(request.headers["Range"].removeprefix("bytes=").split("-")[0])
        status = 206 if start else 200
        headers = {"ETag": etag, "Content-Length": str(len(blob) - start)}
        if start:
            headers["Content-Range"] = f"bytes {start}-{len(blob) - 1}/{len(blob)}"
        response = web.StreamResponse(status=status, headers=headers)
        await response.prepare(request)
        if self.break_downloads:
            self.break_downloads -= 1
            await response.write(blob[start : len(blob) // 2])
            request.transport.close()  # the link drops halfway through
            return response
        await response.write(blob[start:])
        return response

    async def update(self, request: web.Request) -> web.Response:
        return await self._result(request, "update", self.updates)

    async def upload_data(self, request: web.Request) -> web.Response:
        return await self._result(request, "data", self.data)

    async def relay(self, request: web.Request) -> web.Response:
        task = request.match_info["task"]
        _, denied = self._device(request, task=task)
        if denied:
            return denied
        self.relays.append({"task": task, "body": await request.json()})
        await self._finish(task)
        return web.json_response({"task": task}, status=201)

    async def error(self, request: web.Request) -> web.Response:
        task = request.match_info["task"]
        _, denied = self._device(request, task=task)
        if denied:
            return denied
        self.errors.append((task, (await request.json())["reason"]))
        await self._finish(task)
        return web.json_response({"ok": True})

    # -- plumbing -------------------------------------------------------------------------

    async def _result(self, request: web.Request, route: str, into: list) -> web.Response:
        task = request.match_info["task"]
        body = await request.read()  # read before any fault: the upload itself went out
        if fault := self._fault(route):
            return fault
        _, denied = self._device(request, task=task)
        if denied:
            return denied
        status = 200 if task in self.done else 201  # a repeated result is not applied twice
        into.append(
            {"task": task, "headers": dict(request.headers), "body": body, "status": status}
        )
        await self._finish(task)
        return web.json_response({"task": task}, status=status)

    def _device(self, request: web.Request, *, task: str | None = None) -> tuple[int, Any]:
        self.hits[request.path] += 1
        device = self.tokens.get(_bearer(request))
        if device is None:
            return -1, _error(401, "unknown token")
        claimed = request.match_info.get("id")
        if claimed is not None and int(claimed) != device:
            return device, _error(403, "another device's path")
        return device, None

    def _fault(self, route: str) -> web.Response | None:
        self.hits[route] += 1
        if self.faults[route]:
            return _error(self.faults[route].pop(0), "injected fault")
        return None

    async def _finish(self, task: str) -> None:
        self.done.add(task)
        for queue in self.queues.values():
            queue[:] = [t for t in queue if t["id"] != task]
        await self._notify()

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    def _new_id(self) -> int:
        self.next_id += 1
        return self.next_id


def _bearer(request: web.Request) -> str:
    return request.headers.get("Authorization", "").removeprefix("Bearer ")


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": {"status": status, "message": message}}, status=status)


# -- fixtures and helpers -----------------------------------------------------------------


def agent_config(url: str, tmp_path: Path, **overrides: Any) -> AgentConfig:
    settings: dict[str, Any] = {
        "server": url,
        "state_dir": tmp_path / "state",
        "enrollment_token": ENROLL,
        "heartbeat_interval": 0.05,
        "poll_wait": 5,
        "retry_base": 0.01,
        "retry_cap": 0.05,
        "torch_device": "cpu",
        "calibrate": False,  # the tests of calibration turn it on
        **overrides,
    }
    return AgentConfig(**settings)


def fit_task(task_id: str, blob: bytes, *, sha256: str | None = None, **fields: Any) -> dict:
    return {
        "id": task_id,
        "kind": "fit",
        "model": {
            "name": MODEL,
            "version": 4,
            "nbytes": len(blob),
            "sha256": sha256 or hashlib.sha256(blob).hexdigest(),
            "url": BLOB_PATH,
        },
        "samples": 96,
        "epochs": 2,
        "batch_size": 16,
        "flops": 9.6e8,
        "update_nbytes": len(blob),
        "config": {
            "learning_rate": 0.05,
            "round": 3,
            "model": MODEL,
            "num_classes": 10,
            "input_size": 8,
            "seed": 0,
            "proximal_mu": 0.01,
        },
        **fields,
    }


class CountingTrainers:
    """A trainer factory that makes TorchTrainers and counts the trainings they run."""

    def __init__(self, before: Callable[[], None] | None = None) -> None:
        self.calls = 0
        self._before = before

    def __call__(self, **kwargs: Any) -> Callable:
        inner = TorchTrainer(**kwargs)

        def train(device_id: int, ins: FitIns):
            self.calls += 1
            if self._before is not None:
                self._before()
            return inner(device_id, ins)

        return train


@contextlib.asynccontextmanager
async def running(agent: Agent) -> AsyncIterator[asyncio.Task]:
    """The agent's ``run()`` as a task; stopped (and its failure raised) on exit."""
    run = asyncio.create_task(agent.run())
    try:
        yield run
    finally:
        await asyncio.wait_for(agent.stop(), SAFETY_TIMEOUT)
        await run


# -- registration -------------------------------------------------------------------------


async def test_registers_describes_its_hardware_and_keeps_the_token_private(fake, tmp_path):
    # Prepare
    server, url = fake
    config = agent_config(
        url,
        tmp_path,
        description="bench",
        group=2,
        id_in_group=1,
        profile="client_i7",
        labels={"site": "lab"},
        node_exporter="http://10.0.0.5:9100",
    )
    agent = Agent(config=config)

    # Execute
    async with running(agent) as run:
        await server.until(lambda: len(server.heartbeats) >= 1, run)

    # Assert
    [reg] = server.registrations
    assert reg["auth"] == ENROLL and "id" not in reg["body"]
    assert reg["body"]["description"] == "bench" and reg["body"]["group"] == 2
    assert reg["body"]["id_in_group"] == 1 and reg["body"]["profile"] == "client_i7"
    assert reg["body"]["labels"] == {"site": "lab"}
    # No --metrics-port: only the node_exporter is declared, with its default path.
    assert reg["body"]["endpoints"] == {"node_exporter": "http://10.0.0.5:9100/metrics"}
    assert reg["body"]["hardware"]["cpu_count"] >= 1
    assert reg["body"]["hardware"]["memory_bytes"] > 0
    assert agent.device_id == reg["id"]
    saved = tmp_path / "state" / "device.json"
    assert json.loads(saved.read_text()) == {"device_id": reg["id"], "token": reg["token"]}
    assert saved.stat().st_mode & 0o777 == 0o600
    beat = server.heartbeats[0]
    assert {"cpu_busy", "memory_available", "load1", "busy"} <= beat.keys()
    assert 0.0 <= beat["cpu_busy"] <= 1.0 and beat["busy"] == 0.0


async def test_heartbeats_keep_flowing_while_a_training_runs(
    fake, tmp_path, shard_file, global_model
):
    # Prepare: a training that holds until the server has seen heartbeats of a busy device.
    server, url = fake
    server.blobs[BLOB_PATH] = global_model
    release = threading.Event()
    trainers = CountingTrainers(before=lambda: release.wait(SAFETY_TIMEOUT))
    agent = Agent(
        config=agent_config(url, tmp_path, data=str(shard_file)), trainer_factory=trainers
    )

    # Execute
    try:
        async with running(agent) as run:
            await server.until(lambda: agent.device_id is not None, run)
            await server.give(agent.device_id, fit_task("r1-d1", global_model))
            await server.until(lambda: sum(b["busy"] == 1.0 for b in server.heartbeats) >= 3, run)
            uploaded_while_held = list(server.updates)
            busy_gauge_while_held = agent.metrics.busy._value.get()
            release.set()
            await server.until(lambda: len(server.updates) == 1, run)
            await server.until(lambda: agent.metrics.busy._value.get() == 0, run)
    finally:
        release.set()

    # Assert: three busy heartbeats came in while the training was still held, and the
    # fedsim_agent_busy gauge said so too.
    assert uploaded_while_held == []
    assert busy_gauge_while_held == 1
    assert trainers.calls == 1
    assert server.updates[0]["status"] == 201


# -- calibration ----------------------------------------------------------------------------


async def test_after_registering_the_agent_reports_its_measured_profile(fake, tmp_path):
    # Prepare
    server, url = fake
    agent = Agent(config=agent_config(url, tmp_path, calibrate=True, calibrate_model=MODEL))

    # Execute
    async with running(agent) as run:
        await server.until(lambda: len(server.profiles) == 1, run)
        beats_by_then = len(server.heartbeats)

    # Assert: a measured profile of the model, fitted at four batch sizes, with its source;
    # heartbeats went on while it was measured.
    [profile] = server.profiles
    assert profile["kind"] == "measured"
    assert profile["source"].startswith("fedsim agent on ")
    step = profile["steps"][MODEL]
    assert step["batch_sizes"] == [8, 16, 32, 64]
    assert step["per_sample_s"] > 0 and step["overhead_s"] >= 0 and step["residual_s"] >= 0
    assert profile["serialize_bytes_per_s"] > 0 and profile["load_bytes_per_s"] > 0
    assert profile["cold_start_s"] >= 0
    # One HTTP request costs the client some processor time, far less than a second.
    assert 0 < profile["request_cpu_s"] < 1 and 0 < profile["round_overhead_s"] < 10
    # So does each segment of a paced body, more than nothing and far less than a request.
    assert 0 < profile["segment_cpu_s"] < 0.1
    # Keeping an update in its state directory costs the processor something, and the wait
    # for the disk is never negative; the scratch state is gone afterwards.
    assert 0 < profile["persist_cpu_s"] < 1 and 0 <= profile["persist_io_s"] < 10
    assert 0 <= profile["task_overhead_s"] < 1
    assert not list(tmp_path.rglob("fedsim-persist-*"))
    # What the agent sends is what the protocol accepts.
    accepted = MeasuredProfile.model_validate(profile)
    assert accepted.cold_start_s == profile["cold_start_s"]
    assert accepted.request_cpu_s == profile["request_cpu_s"]
    assert accepted.segment_cpu_s == profile["segment_cpu_s"]
    assert (accepted.persist_cpu_s, accepted.persist_io_s) == (
        profile["persist_cpu_s"],
        profile["persist_io_s"],
    )
    assert accepted.round_overhead_s == profile["round_overhead_s"]
    # The server's evaluation of the model, timed as its Evaluator runs, with its fit.
    assert accepted.eval_steps is not None
    evaluation = accepted.eval_steps[MODEL]
    assert evaluation.per_sample_s > 0 and evaluation.residual_s >= 0
    assert evaluation.batch_sizes == list(EVAL_SAMPLES)
    assert beats_by_then >= 2


async def test_the_agent_measures_again_when_the_server_asks_once_per_request(fake, tmp_path):
    # Prepare: an agent told not to calibrate by itself.
    server, url = fake
    agent = Agent(config=agent_config(url, tmp_path))

    # Execute: the server's answers carry a request for the MLP, for many heartbeats.
    async with running(agent) as run:
        await server.until(lambda: len(server.heartbeats) >= 2, run)
        reported_unasked = list(server.profiles)
        server.calibration_request = {"model": "digits_mlp", "requested_at": 5.0}
        await server.until(lambda: len(server.profiles) == 1, run)
        seen = len(server.heartbeats)
        await server.until(lambda: len(server.heartbeats) >= seen + 5, run)

    # Assert
    assert reported_unasked == []
    [profile] = server.profiles
    assert list(profile["steps"]) == ["digits_mlp"]


async def test_the_agent_calibrates_a_users_model_under_its_plugin(fake, tmp_path, monkeypatch):
    # Prepare: examples/byo's package importable, as a user's installed package would be.
    monkeypatch.syspath_prepend(str(BYO))
    server, url = fake
    config = agent_config(
        url,
        tmp_path,
        calibrate=True,
        calibrate_model=BYO_MODEL,
        calibrate_input_size=8,
        calibrate_num_classes=4,
        plugins=("byo_fl",),
    )
    agent = Agent(config=config)

    # Execute
    async with running(agent) as run:
        await server.until(lambda: len(server.profiles) == 1, run)

    # Assert: the step model is keyed by the import path, as the workload names the model.
    [profile] = server.profiles
    assert list(profile["steps"]) == [BYO_MODEL]
    assert profile["steps"][BYO_MODEL]["per_sample_s"] > 0
    MeasuredProfile.model_validate(profile)


async def test_a_calibration_request_for_a_model_outside_the_plugins_is_refused(
    fake, tmp_path, caplog
):
    # Prepare: an agent with no --plugin; the server asks it to time a user's model.
    server, url = fake
    agent = Agent(config=agent_config(url, tmp_path))
    caplog.set_level(logging.WARNING, logger="fedsim.real.agent")

    # Execute
    async with running(agent) as run:
        server.calibration_request = {"model": BYO_MODEL, "requested_at": 7.0}
        await server.until(lambda: "not reported" in caplog.text, run)
        seen = len(server.heartbeats)
        await server.until(lambda: len(server.heartbeats) >= seen + 3, run)

    # Assert: nothing measured or reported, and the reason, naming the missing --plugin, is
    # logged and reported to the server once, for the request it answers.
    assert server.profiles == []
    assert f"calibration of {BYO_MODEL} not reported" in caplog.text
    [failure] = server.calibration_failures
    assert failure["requested_at"] == 7.0
    assert "this agent has no --plugin" in failure["reason"]
    CalibrationFailure.model_validate(failure)


async def test_a_measurement_that_raises_is_reported_when_it_answers_a_request(
    fake, tmp_path, caplog, monkeypatch
):
    # Prepare: every measurement fails as the device runs out of memory; the agent measures
    # once at start-up, which no one asked for.
    def out_of_memory(*args: Any, **kwargs: Any) -> dict[str, Any]:
        raise RuntimeError("out of memory")

    monkeypatch.setattr("fedsim.real.agent.agent.measure_profile", out_of_memory)
    server, url = fake
    agent = Agent(config=agent_config(url, tmp_path, calibrate=True))
    caplog.set_level(logging.WARNING, logger="fedsim.real.agent")

    # Execute: the start-up measurement fails; then the server asks for one.
    async with running(agent) as run:
        await server.until(lambda: "calibration of digits_cnn failed" in caplog.text, run)
        seen = len(server.heartbeats)
        await server.until(lambda: len(server.heartbeats) >= seen + 3, run)
        unasked = list(server.calibration_failures)
        server.calibration_request = {"model": "digits_mlp", "requested_at": 9.0}
        await server.until(lambda: len(server.calibration_failures) == 1, run)

    # Assert: only the request's failure is reported, with the exception as its reason.
    assert unasked == []
    assert server.calibration_failures == [
        {"requested_at": 9.0, "reason": "RuntimeError: out of memory"}
    ]
    assert server.profiles == []


async def test_a_request_for_an_unknown_model_shows_failed_on_the_servers_record(
    make_server, tmp_path
):
    # Prepare: fedsim's own server, and an agent of it that does not calibrate by itself.
    server = await make_server()
    url = str(server.client.make_url("")).rstrip("/")
    agent = Agent(config=agent_config(url, tmp_path, enrollment_token=ENROLLMENT_TOKEN))

    async def record() -> dict[str, Any]:
        r = await server.client.get(f"/api/v1/devices/{agent.device_id}", headers=ADMIN)
        return await r.json()

    # Execute: the admin asks for a model that neither the zoo nor the agent knows.
    async with running(agent) as run, asyncio.timeout(SAFETY_TIMEOUT):
        while agent.device_id is None:
            assert not run.done()
            await asyncio.sleep(0.02)
        r = await server.client.post(
            f"/api/v1/devices/{agent.device_id}/calibrate",
            json={"model": "no_such_model"},
            headers=ADMIN,
        )
        assert r.status == 202, await r.text()
        while (await record())["calibration_request"]["failed_at"] is None:
            assert not run.done()
            await asyncio.sleep(0.05)
        request = (await record())["calibration_request"]

    # Assert: failed, for the request asked, with the agent's reason.
    assert request["model"] == "no_such_model"
    assert "'no_such_model' is not one of the zoo's" in request["reason"]
    assert request["failed_at"] >= request["requested_at"]
    assert (await record())["measured"] is None


# -- fit tasks ----------------------------------------------------------------------------


async def test_fit_uploads_what_torch_trainer_computes(fake, tmp_path, shard_file, global_model):
    # Prepare
    server, url = fake
    server.blobs[BLOB_PATH] = global_model
    task = fit_task("r3-d4", global_model)
    agent = Agent(config=agent_config(url, tmp_path, data=str(shard_file)))

    # Execute
    async with running(agent) as run:
        await server.until(lambda: agent.device_id is not None, run)
        await server.give(agent.device_id, task)
        await server.until(lambda: len(server.updates) == 1, run)

    # Assert: the same arrays as TorchTrainer gives for the same FitIns on the same shard.
    with np.load(shard_file) as f:
        data = {agent.device_id: (f["X"], f["y"])}
    expected, expected_metrics = TorchTrainer(model_name=MODEL, num_classes=10, data=data, seed=0)(
        agent.device_id,
        FitIns(
            model=ModelRef(name=MODEL, version=4, nbytes=len(global_model)),
            samples=96,
            epochs=2,
            batch_size=16,
            flops=9.6e8,
            update_nbytes=len(global_model),
            parameters={k: np.array(v) for k, v in decode(global_model).items()},
            config=task["config"],
        ),
    )
    [update] = server.updates
    got = decode(update["body"])
    assert got.keys() == expected.keys()
    for name in expected:
        # The same training, to float32 rounding: torch's intra-op thread count (which a test
        # before this one may have set for the main thread, not the agent's executor thread)
        # changes the order of its sums.
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-5, atol=1e-7)
    headers = update["headers"]
    assert headers["Content-Type"] == "application/octet-stream"
    assert headers["X-Fedsim-Num-Examples"] == str(96 * 2)
    assert json.loads(headers["X-Fedsim-Metrics"]) == pytest.approx(expected_metrics, rel=1e-6)
    assert {"download_s", "train_s", "upload_s"} <= json.loads(headers["X-Fedsim-Timings"]).keys()
    assert "X-Fedsim-Timing-Only" not in headers
    assert server.errors == []


async def test_the_agent_counts_its_processor_seconds_of_each_task(
    fake, tmp_path, shard_file, global_model
):
    # Prepare: two training tasks, one after the other.
    server, url = fake
    server.blobs[BLOB_PATH] = global_model
    agent = Agent(config=agent_config(url, tmp_path, data=str(shard_file)))

    # Execute
    async with running(agent) as run:
        await server.until(lambda: agent.device_id is not None, run)
        for i, name in enumerate(("r1-d4", "r2-d4")):
            await server.give(agent.device_id, fit_task(name, global_model))
            await server.until(lambda i=i: len(server.updates) == i + 1, run)

    # Assert: each update says what the task cost the agent's processor, training (one
    # thread's) within it; the second also what passed since the first's result was ready.
    first, second = (
        AgentCpu.model_validate_json(u["headers"]["X-Fedsim-Cpu"]) for u in server.updates
    )
    for cpu in (first, second):
        assert 0 < cpu.train_s <= cpu.task_s
    assert first.between_s is None
    assert second.between_s is not None and second.between_s > 0


async def test_a_wrong_sha256_is_reported_and_nothing_is_trained(
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
        await server.give(agent.device_id, fit_task("t-sha", global_model, sha256="0" * 64))
        await server.until(lambda: len(server.errors) == 1, run)

    # Assert
    [(task, reason)] = server.errors
    assert task == "t-sha" and "sha256" in reason
    assert server.updates == [] and trainers.calls == 0


async def test_a_broken_download_resumes_where_it_stopped(fake, tmp_path, shard_file, global_model):
    # Prepare: the first transfer of the blob drops halfway.
    server, url = fake
    server.blobs[BLOB_PATH] = global_model
    server.break_downloads = 1
    agent = Agent(config=agent_config(url, tmp_path, data=str(shard_file)))

    # Execute
    async with running(agent) as run:
        await server.until(lambda: agent.device_id is not None, run)
        await server.give(agent.device_id, fit_task("t-resume", global_model))
        await server.until(lambda: len(server.updates) == 1, run)

    # Assert
    first, second = server.downloads
    assert "Range" not in first
    assert second["Range"] == f"bytes={len(global_model) // 2}-"
    assert second["If-Range"] == f'"{hashlib.sha256(global_model).hexdigest()}"'
    assert server.errors == []


async def test_a_timing_only_fit_uploads_padding_without_training(fake, tmp_path):
    # Prepare: no model url, no --data.
    server, url = fake
    trainers = CountingTrainers()
    agent = Agent(config=agent_config(url, tmp_path), trainer_factory=trainers)
    task = fit_task("t-timing", b"", update_nbytes=3_000_123)
    task["model"] = {
        "name": "yolov4",
        "version": 2,
        "nbytes": 3_000_123,
        "sha256": None,
        "url": None,
    }

    # Execute
    async with running(agent) as run:
        await server.until(lambda: agent.device_id is not None, run)
        await server.give(agent.device_id, task)
        await server.until(lambda: len(server.updates) == 1, run)

    # Assert
    [update] = server.updates
    assert len(update["body"]) == 3_000_123
    assert update["headers"]["X-Fedsim-Timing-Only"] == "1"
    assert update["headers"]["X-Fedsim-Num-Examples"] == str(96 * 2)
    assert trainers.calls == 0


async def test_a_failing_training_is_reported(fake, tmp_path, shard_file, global_model):
    # Prepare
    server, url = fake
    server.blobs[BLOB_PATH] = global_model

    def broken(**kwargs: Any) -> Callable:
        def train(device_id: int, ins: FitIns):
            raise RuntimeError("out of memory")

        return train

    agent = Agent(config=agent_config(url, tmp_path, data=str(shard_file)), trainer_factory=broken)

    # Execute
    async with running(agent) as run:
        await server.until(lambda: agent.device_id is not None, run)
        await server.give(agent.device_id, fit_task("t-oom", global_model))
        await server.until(lambda: len(server.errors) == 1, run)

    # Assert
    assert server.errors == [("t-oom", "RuntimeError: out of memory")]
    assert server.updates == []


# -- other kinds --------------------------------------------------------------------------


async def test_upload_data_sends_exactly_nbytes(fake, tmp_path, shard_file):
    # Prepare: more than the file holds, and not a whole number of chunks.
    server, url = fake
    nbytes = 2 * shard_file.stat().st_size + (3 << 20) + 7
    agent = Agent(config=agent_config(url, tmp_path, data=str(shard_file)))
    task = {"id": "t-data", "kind": "upload_data", "samples": 120, "nbytes": nbytes}

    # Execute
    async with running(agent) as run:
        await server.until(lambda: agent.device_id is not None, run)
        await server.give(agent.device_id, task)
        await server.until(lambda: len(server.data) == 1, run)

    # Assert: the data file's bytes, repeated, announced with their length.
    [upload] = server.data
    content = shard_file.read_bytes()
    expected = (content * (nbytes // len(content) + 1))[:nbytes]
    assert upload["headers"]["Content-Length"] == str(nbytes)
    assert "Transfer-Encoding" not in upload["headers"]
    assert upload["body"] == expected


SECAGG_SETTINGS = {"bits": 32, "clip": 10.0, "threshold": 0.5}


async def test_a_secagg_stage_is_answered_by_the_agent_and_a_masked_fit_needs_its_session(
    fake, tmp_path, shard_file, global_model
):
    # Prepare: an advertise stage, then a masked fit in a session the agent never joined.
    server, url = fake
    server.blobs[BLOB_PATH] = global_model
    agent = Agent(config=agent_config(url, tmp_path, data=str(shard_file)))
    advertise = {
        "id": "r0-secagg-advertise-d1",
        "kind": "secagg",
        "session": "r0",
        "stage": "advertise",
        "settings": SECAGG_SETTINGS,
    }
    masked = fit_task(
        "r1-d1", global_model, secagg={"session": "r1", "scale": 1000.0, "nbytes": 400}
    )

    # Execute
    async with running(agent) as run:
        await server.until(lambda: agent.device_id is not None, run)
        await server.give(agent.device_id, advertise)
        await server.until(lambda: len(server.updates) == 1, run)
        await server.give(agent.device_id, masked)
        await server.until(lambda: len(server.errors) == 1, run)

    # Assert: the answer is its two public keys (32 bytes each), and no update left the
    # device for the fit it could not mask.
    [answer] = server.updates
    keys = json.loads(answer["body"])
    assert set(keys) == {"c", "s"} and all(len(bytes.fromhex(k)) == 32 for k in keys.values())
    assert answer["headers"]["X-Fedsim-Num-Examples"] == "0"
    [(task, reason)] = server.errors
    assert task == "r1-d1" and "holds no shares" in reason and "'r1'" in reason


async def test_an_unknown_kind_is_reported(fake, tmp_path):
    # Prepare
    server, url = fake
    agent = Agent(config=agent_config(url, tmp_path))

    # Execute
    async with running(agent) as run:
        await server.until(lambda: agent.device_id is not None, run)
        await server.give(agent.device_id, {"id": "t-odd", "kind": "dance"})
        await server.until(lambda: len(server.errors) == 1, run)

    # Assert
    [(task, reason)] = server.errors
    assert task == "t-odd" and "'dance'" in reason


# -- outages ------------------------------------------------------------------------------


async def test_503s_are_retried_until_the_server_answers(fake, tmp_path):
    # Prepare
    server, url = fake
    server.faults["register"] = [503, 503]
    server.faults["update"] = [503, 502]
    agent = Agent(config=agent_config(url, tmp_path))
    task = fit_task("t-retry", b"", update_nbytes=1000)
    task["model"]["url"] = None

    # Execute
    async with running(agent) as run:
        await server.until(lambda: agent.device_id is not None, run)
        await server.give(agent.device_id, task)
        await server.until(lambda: len(server.updates) == 1, run)

    # Assert
    assert server.hits["register"] == 3 and len(server.registrations) == 1
    assert server.hits["update"] == 3
    assert server.updates[0]["status"] == 201 and len(server.updates[0]["body"]) == 1000


async def test_an_agent_started_before_its_server_registers_when_it_comes_up(
    aiohttp_server, tmp_path, caplog
):
    # Prepare: a port nobody listens on yet.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = FakeServer()
    agent = Agent(config=agent_config(f"http://127.0.0.1:{port}", tmp_path))
    caplog.set_level(logging.WARNING, logger="fedsim.real.agent")

    # Execute
    async with running(agent) as run:
        for _ in range(int(SAFETY_TIMEOUT / 0.01)):
            if any("retrying" in r.getMessage() for r in caplog.records) or run.done():
                break
            await asyncio.sleep(0.01)
        await aiohttp_server(server.app(), port=port)
        await server.until(lambda: len(server.heartbeats) >= 1, run)

    # Assert
    assert any("POST" in r.getMessage() and "retrying" in r.getMessage() for r in caplog.records)
    assert len(server.registrations) == 1


async def test_a_401_makes_the_agent_register_again_under_its_id(fake, tmp_path):
    # Prepare
    server, url = fake
    agent = Agent(config=agent_config(url, tmp_path))

    # Execute: the server forgets every token, then queues work.
    async with running(agent) as run:
        await server.until(lambda: agent.device_id is not None, run)
        first_id = agent.device_id
        await server.wipe()
        await server.until(lambda: len(server.registrations) == 2, run)
        await server.give(first_id, {"id": "t-after", "kind": "upload_data", "nbytes": 10})
        await server.until(lambda: len(server.data) == 1, run)

    # Assert
    _, second = server.registrations
    assert second["auth"] == ENROLL and second["body"]["id"] == first_id
    assert agent.device_id == first_id
    saved = json.loads((tmp_path / "state" / "device.json").read_text())
    assert saved == {"device_id": first_id, "token": second["token"]}


# -- restarts -----------------------------------------------------------------------------


async def test_a_restarted_agent_keeps_its_identity_and_never_trains_a_task_twice(
    fake, tmp_path, shard_file, global_model
):
    # Prepare: one agent trains a task, then stops.
    server, url = fake
    server.blobs[BLOB_PATH] = global_model
    trainers = CountingTrainers()
    task = fit_task("r1-d1", global_model)
    first = Agent(
        config=agent_config(url, tmp_path, data=str(shard_file)), trainer_factory=trainers
    )
    async with running(first) as run:
        await server.until(lambda: first.device_id is not None, run)
        await server.give(first.device_id, task)
        await server.until(lambda: len(server.updates) == 1, run)

    # Execute: a new agent on the same state dir, no enrollment token, is handed the task again.
    second = Agent(
        config=agent_config(url, tmp_path, data=str(shard_file), enrollment_token=None),
        trainer_factory=trainers,
    )
    await server.give(first.device_id, task)
    async with running(second) as run:
        await server.until(lambda: len(server.updates) == 2, run)

    # Assert
    reg1, reg2 = server.registrations
    assert reg2["auth"] == reg1["token"] and reg2["body"]["id"] == reg1["id"]
    assert second.device_id == first.device_id
    assert trainers.calls == 1
    sent, resent = server.updates
    assert resent["body"] == sent["body"]
    assert resent["headers"]["X-Fedsim-Metrics"] == sent["headers"]["X-Fedsim-Metrics"]


async def test_the_same_task_id_asking_for_other_work_is_trained(
    fake, tmp_path, shard_file, global_model
):
    # Prepare: task ids repeat across jobs ("r1-d1" of the next job is other work).
    server, url = fake
    server.blobs[BLOB_PATH] = global_model
    trainers = CountingTrainers()
    agent = Agent(
        config=agent_config(url, tmp_path, data=str(shard_file)), trainer_factory=trainers
    )

    # Execute
    async with running(agent) as run:
        await server.until(lambda: agent.device_id is not None, run)
        await server.give(agent.device_id, fit_task("r1-d1", global_model))
        await server.until(lambda: len(server.updates) == 1, run)
        await server.give(agent.device_id, fit_task("r1-d1", global_model, epochs=1))
        await server.until(lambda: len(server.updates) == 2, run)

    # Assert
    assert trainers.calls == 2
    assert server.updates[0]["body"] != server.updates[1]["body"]


# -- the command line ---------------------------------------------------------------------


async def start_cli(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "fedsim.real.agent.cli",
        *args,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def test_the_command_serves_until_sigterm_and_exits_0(fake, tmp_path):
    # Prepare
    server, url = fake
    proc = await start_cli(
        "--server", url, "--token", ENROLL, "--state-dir", str(tmp_path / "state"),
        "--heartbeat-interval", "0.1", "--poll-wait", "1", "--log-level", "warning",
    )  # fmt: skip

    # Execute
    try:
        await server.until(lambda: len(server.heartbeats) >= 1, asyncio.create_task(proc.wait()))
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), SAFETY_TIMEOUT)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()

    # Assert
    assert proc.returncode == 0, err.decode()
    assert len(server.registrations) == 1


async def test_the_command_exits_1_when_the_enrollment_token_is_rejected(fake, tmp_path):
    # Prepare
    _, url = fake

    # Execute
    proc = await start_cli("--server", url, "--token", "wrong", "--state-dir", str(tmp_path))
    _, err = await asyncio.wait_for(proc.communicate(), SAFETY_TIMEOUT)

    # Assert
    assert proc.returncode == 1
    last = err.decode().strip().splitlines()[-1]
    assert last.startswith("fedsim agent: error: ") and "enrollment token" in last
