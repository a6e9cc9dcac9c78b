"""The read-only viewer token: every route of the table walked with it, and what the OpenAPI
document says of it.

A viewer reads what the dashboard shows (devices, groups, monitoring, models, deployments,
jobs, service discovery) and nothing else: every route that changes something (POST, PUT,
DELETE) and every read that is not the operator's to show (a device's task poll, which hands
the task out; the bandwidth probe; model bytes) answers it ``403``.
"""

from __future__ import annotations

import pytest
import pytest_asyncio

from fedsim.real.protocol import Paths, path
from fedsim.real.server.auth import ADMIN as ADMIN_ONLY
from fedsim.real.server.auth import Role, viewable
from fedsim.real.server.openapi import build_openapi
from fedsim.real.server.routes import ENDPOINTS, Doc, Endpoint
from tests.real.conftest import ADMIN, API, bearer, blob
from tests.real.test_server_api import FakeJobs

VIEWER_TOKEN = "viewer-secret-for-tests"
VIEWER = bearer(VIEWER_TOKEN)

# What the viewer may read: the routes the dashboard calls, and service discovery.
READABLE = {
    ("GET", Paths.DEVICES),
    ("GET", Paths.DEVICE),
    ("GET", Paths.GROUPS),
    ("GET", Paths.MONITORING),
    ("GET", Paths.SD_TARGETS),
    ("GET", Paths.MODELS),
    ("GET", Paths.MODEL),
    ("GET", Paths.VERSIONS),
    ("GET", Paths.VERSION),
    ("GET", Paths.DEPLOYMENTS),
    ("GET", Paths.DEPLOYMENT),
    ("GET", Paths.JOBS),
    ("GET", Paths.JOB),
}


def _id(endpoint: Endpoint) -> str:
    return f"{endpoint.method} {endpoint.path}"


@pytest_asyncio.fixture
async def filled(make_server):
    """A server with a viewer token, a device, a model with a version deployed to the
    device, and a job: something for every path to find. Returns it and the path values."""
    server = await make_server(viewer_token=VIEWER_TOKEN, jobs=FakeJobs())
    device, _ = await server.register(group=1)
    await server.model("m", blob())
    r = await server.client.post(
        f"{API}/deployments", json={"model": "m", "version": 1, "devices": [device]}, headers=ADMIN
    )
    assert r.status == 201, await r.text()
    deployment = (await r.json())["id"]
    r = await server.client.post(
        f"{API}/jobs", json={"kind": "federated", "config": {"rounds": 1}}, headers=ADMIN
    )
    assert r.status == 202, await r.text()
    values = {
        "id": device,
        "device": device,
        "name": "m",
        "version": 1,
        "task_id": "t-1",
        "job_id": "j1",
        "path": "app.js",
    }
    return server, values, deployment


@pytest.mark.asyncio
@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=_id)
async def test_the_viewer_reads_and_is_refused_every_change(filled, endpoint: Endpoint):
    # Prepare
    server, values, deployment = filled
    if endpoint.path.startswith(Paths.DEPLOYMENTS):
        values = {**values, "id": deployment}
    url = path(endpoint.path, **values)

    # Execute: no body: a refusal comes before the body is read.
    r = await server.client.request(endpoint.method, url, headers=VIEWER, allow_redirects=False)

    # Assert
    key = (endpoint.method, endpoint.path)
    if endpoint.access.public:
        assert r.status < 400, (key, r.status)
    elif key in READABLE:
        assert 200 <= r.status < 300 or r.status == 404, (key, r.status, await r.text())
        assert r.status != 404, f"{key}: the fixture should give this path something to find"
    else:
        assert r.status == 403, (key, r.status, await r.text())
        assert "viewer" in (await r.json())["error"]["message"]


def test_the_route_table_gives_the_viewer_exactly_the_reads():
    # Execute
    granted = {(e.method, e.path) for e in ENDPOINTS if Role.VIEWER in e.access.roles}

    # Assert
    assert granted == READABLE


def test_a_route_that_writes_cannot_name_the_viewer():
    for method in ("POST", "PUT", "DELETE"):
        with pytest.raises(ValueError, match="viewer"):
            Endpoint(method, Paths.MODELS, "models.create", viewable(ADMIN_ONLY), Doc(
                summary="x"))  # fmt: skip


def test_the_openapi_document_lists_each_operations_roles():
    # Execute
    document = build_openapi()

    # Assert: every guarded operation names its roles, the viewer on the readable ones only.
    for endpoint in ENDPOINTS:
        operation = document["paths"][endpoint.path][endpoint.method.lower()]
        if endpoint.access.public:
            assert operation["security"] == [], _id(endpoint)
            continue
        [requirement] = operation["security"]
        roles = requirement["bearer"]
        assert roles == operation["x-fedsim-roles"], _id(endpoint)
        assert "admin" in roles, _id(endpoint)
        assert ("viewer" in roles) == ((endpoint.method, endpoint.path) in READABLE), _id(endpoint)
    devices = document["paths"][Paths.DEVICES]
    assert devices["get"]["x-fedsim-roles"] == ["admin", "viewer"]
    assert devices["post"]["x-fedsim-roles"] == ["admin", "enrollment", "device"]


@pytest.mark.asyncio
async def test_without_a_viewer_token_configured_none_is_accepted(server):
    # Execute: the server of the other tests has no viewer token.
    r = await server.client.get(f"{API}/devices", headers=VIEWER)

    # Assert
    assert r.status == 401


@pytest.mark.asyncio
async def test_the_viewer_reads_any_deployment_but_a_device_only_its_own(make_server):
    # Prepare: a deployment to device a; device b is in none.
    server = await make_server(viewer_token=VIEWER_TOKEN)
    a, _ = await server.register(group=1)
    _, token_b = await server.register(group=1)
    await server.model("m", blob())
    r = await server.client.post(
        f"{API}/deployments", json={"model": "m", "version": 1, "devices": [a]}, headers=ADMIN
    )
    deployment = (await r.json())["id"]

    # Execute
    as_viewer = await server.client.get(f"{API}/deployments/{deployment}", headers=VIEWER)
    as_b = await server.client.get(f"{API}/deployments/{deployment}", headers=token_b)

    # Assert
    assert as_viewer.status == 200 and (await as_viewer.json())["id"] == deployment
    assert as_b.status == 403
