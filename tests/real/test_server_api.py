"""The server as a whole: health, metrics, the OpenAPI document against the router, jobs,
and what a stopping server leaves behind."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest
from openapi_spec_validator import validate

from fedsim.real.server.app import init_app
from fedsim.real.server.jobs_api import JobConflict, Jobs
from fedsim.real.server.openapi import build_openapi
from tests.real.conftest import ADMIN, API, blob, leftovers
from tests.real.test_server_tasks import post

pytestmark = pytest.mark.asyncio


async def test_health_needs_no_token(server):
    await server.register()
    r = await server.client.get(f"{API}/health")
    assert r.status == 200
    body = await r.json()
    assert body["status"] == "ok" and body["devices"] == 1
    assert body["uptime_s"] >= 0 and body["version"]
    r = await server.client.get("/health")  # the same at the root, for health checks
    assert r.status == 200 and (await r.json())["devices"] == 1


async def test_metrics_exposition(server):
    id, _ = await server.register()
    await server.model("m", blob())
    await server.client.get(f"{API}/models/m/versions/1/blob", headers=ADMIN)
    await server.client.get(f"{API}/devices/{id}", headers=ADMIN)
    r = await server.client.get("/metrics")
    assert r.status == 200
    assert r.headers["Content-Type"].startswith("text/plain")
    text = await r.text()
    assert 'fedsim_devices{state="registered"} 1.0' in text
    assert 'fedsim_devices{state="removed"} 0.0' in text
    assert (
        'fedsim_http_requests_total{method="GET",route="/api/v1/devices/{id}",status="200"} 1.0'
        in text
    )
    assert f'fedsim_bytes_received_total{{kind="model"}} {float(len(blob()))}' in text
    assert f'fedsim_bytes_sent_total{{kind="model"}} {float(len(blob()))}' in text
    names = set(re.findall(r"^# TYPE (\w+)", text, re.M))
    assert names and all(n.startswith("fedsim_") for n in names)


async def test_openapi_document_matches_the_router(tmp_path, config):
    app = init_app(config)
    routes = {
        (route.method.lower(), route.resource.canonical)
        for route in app.router.routes()
        if route.resource is not None
    }
    document = build_openapi()
    documented = {
        (method, path)
        for path, item in document["paths"].items()
        for method in item
        if method in {"get", "put", "post", "delete", "patch"}
    }
    assert routes == documented
    validate(document)


async def test_openapi_document_declares_what_the_server_enforces():
    # Execute
    document = build_openapi()
    paths, schemas = document["paths"], document["components"]["schemas"]

    # Assert: bounds, the job kinds the manager runs, statuses and header formats.
    device_id = schemas["DeviceRegistration"]["properties"]["id"]["anyOf"][0]
    assert device_id == {"type": "integer", "minimum": 0, "maximum": 2**53 - 1}
    assert schemas["JobStart"]["properties"]["kind"]["const"] == "federated"
    assert schemas["DeviceRegistration"]["additionalProperties"] is False
    assert {"404", "410", "422"} <= paths[f"{API}/devices/{{id}}/tasks"]["get"]["responses"].keys()
    assert "416" in paths[f"{API}/models/{{name}}/versions/{{version}}/blob"]["get"]["responses"]
    update = paths[f"{API}/tasks/{{task_id}}/update"]["put"]
    headers = {p["name"]: p for p in update["parameters"] if p["in"] == "header"}
    assert headers["X-Fedsim-Num-Examples"]["required"] is True
    assert headers["X-Fedsim-Metrics"]["content"]["application/json"]["schema"]["type"] == "object"
    for path, item in paths.items():
        for method, operation in item.items():
            guarded = operation.get("security") != []
            assert ("401" in operation["responses"]) == guarded, (method, path)


async def test_openapi_is_served_without_a_token(server):
    r = await server.client.get(f"{API}/openapi.json")
    assert r.status == 200
    assert (await r.json())["openapi"].startswith("3.1")


class FakeJobs(Jobs):
    def __init__(self) -> None:
        self.jobs: dict[str, dict[str, Any]] = {}
        self.listeners: list = []

    def start(self, kind: str, config: dict[str, Any]) -> dict[str, Any]:
        if "rounds" not in config:
            raise ValueError("config.rounds is required")
        if self.jobs:
            raise JobConflict("a job is running")
        job = {"id": "j1", "kind": kind, "state": "running"}
        self.jobs["j1"] = job
        return job

    def get(self, job_id: str) -> dict[str, Any] | None:
        return self.jobs.get(job_id)

    def cancel(self, job_id: str) -> dict[str, Any] | None:
        job = self.jobs.get(job_id)
        if job is not None:
            job["state"] = "cancelled"
        return job

    def list(self) -> list[dict[str, Any]]:
        return list(self.jobs.values())

    def watch_rounds(self, listener) -> None:
        self.listeners.append(listener)


async def test_jobs_are_routed_to_the_job_manager(make_server):
    server = await make_server(jobs=FakeJobs())
    url = f"{API}/jobs"
    r = await server.client.post(url, json={"kind": "federated", "config": {}}, headers=ADMIN)
    assert r.status == 422 and (await r.json())["error"]["field"] == "config"
    r = await server.client.post(url, json={"kind": "other", "config": {}}, headers=ADMIN)
    assert (await r.json())["error"]["field"] == "kind"
    body = {"kind": "federated", "config": {"rounds": 3}}
    r = await server.client.post(url, json=body, headers=ADMIN)
    assert r.status == 202 and (await r.json())["state"] == "running"
    assert (await server.client.post(url, json=body, headers=ADMIN)).status == 409
    assert (await (await server.client.get(f"{url}/j1", headers=ADMIN)).json())["id"] == "j1"
    assert len((await (await server.client.get(url, headers=ADMIN)).json())["jobs"]) == 1
    r = await server.client.delete(f"{url}/j1", headers=ADMIN)
    assert (await r.json())["state"] == "cancelled"
    assert (await server.client.get(f"{url}/j9", headers=ADMIN)).status == 404
    _, device = await server.register()
    assert (await server.client.get(url, headers=device)).status == 403


async def test_a_jobs_events_are_served_as_csv(make_server, tmp_path):
    # Prepare: a job that has written its event log, beside one that has not.
    events = tmp_path / "events.csv"
    events.write_text("repetition,scenario,device,kind\n0,federated,3,train\n")

    class WrittenJobs(FakeJobs):
        def events_file(self, job_id: str):
            return events if job_id == "j1" else None

    jobs = WrittenJobs()
    jobs.jobs = {"j1": {"id": "j1"}, "j2": {"id": "j2"}}
    server = await make_server(jobs=jobs)

    # Execute
    ok = await server.client.get(f"{API}/jobs/j1/events", headers=ADMIN)
    unwritten = await server.client.get(f"{API}/jobs/j2/events", headers=ADMIN)
    unknown = await server.client.get(f"{API}/jobs/j9/events", headers=ADMIN)
    _, device = await server.register()
    refused = await server.client.get(f"{API}/jobs/j1/events", headers=device)

    # Assert
    assert ok.status == 200 and ok.content_type == "text/csv"
    assert await ok.text() == events.read_text()
    assert unwritten.status == 404 and "no events" in (await unwritten.json())["error"]["message"]
    assert unknown.status == 404 and refused.status == 403


async def test_jobs_without_a_manager_are_501(server):
    r = await server.client.post(
        f"{API}/jobs", json={"kind": "federated", "config": {}}, headers=ADMIN
    )
    assert r.status == 501
    assert (await r.json())["error"]["status"] == 501


async def test_stopping_server_removes_partial_uploads(make_server):
    """Uploads cut off by a shutdown leave no temp file, no version and no outcome."""
    server = await make_server(shutdown_timeout_s=0.3)
    await server.model("m")
    id, token = await server.register()
    post(server, id)
    stalled = asyncio.Event()

    async def stalling():
        yield b"x" * 100_000
        stalled.set()
        await asyncio.sleep(60)  # never finishes: the server must give up on it

    uploads = [
        asyncio.ensure_future(
            server.client.post(f"{API}/models/m/versions", data=stalling(), headers=ADMIN)
        ),
        asyncio.ensure_future(
            server.client.put(
                f"{API}/tasks/r1-d0/update",
                data=stalling(),
                headers={**token, "X-Fedsim-Num-Examples": "1"},
            )
        ),
    ]
    await asyncio.wait_for(stalled.wait(), 5)
    await asyncio.sleep(0.2)
    assert len(leftovers(server)) == 2  # both uploads are being written
    await asyncio.wait_for(server.client.server.close(), 10)
    for upload in uploads:
        upload.cancel()
    await asyncio.gather(*uploads, return_exceptions=True)
    assert leftovers(server) == []
    assert server.board.outcomes.empty()
    restarted = await make_server()
    r = await restarted.client.get(f"{API}/models/m/versions", headers=ADMIN)
    assert (await r.json())["versions"] == []
