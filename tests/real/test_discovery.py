"""Prometheus HTTP service discovery: ``GET /api/v1/sd/targets`` lists what devices declared."""

from __future__ import annotations

import asyncio

import pytest

from fedsim.real.server.handlers.discovery import target_group
from tests.real.conftest import ADMIN, API, ENROLL

pytestmark = pytest.mark.asyncio

SD = f"{API}/sd/targets"
NODE = "http://10.0.0.4:9100/metrics"
AGENT = "http://10.0.0.4:8700/metrics"


async def targets(server) -> list[dict]:
    r = await server.client.get(SD, headers=ADMIN)
    assert r.status == 200, await r.text()
    return await r.json()


async def test_each_declared_endpoint_is_a_labelled_target_group(server):
    # Prepare
    await server.register(id=4, group=1, endpoints={"agent": AGENT, "node_exporter": NODE})
    await server.register(id=5, group=2, endpoints={"node_exporter": "http://10.0.0.5:9100/m"})
    await server.register(id=6, group=2)  # declared nothing: nothing to scrape

    # Execute
    groups = await targets(server)

    # Assert
    assert groups == [
        {
            "targets": ["10.0.0.4:8700"],
            "labels": {
                "fedsim_device": "4",
                "fedsim_group": "1",
                "fedsim_role": "agent",
                "__scheme__": "http",
                "__metrics_path__": "/metrics",
            },
        },
        {
            "targets": ["10.0.0.4:9100"],
            "labels": {
                "fedsim_device": "4",
                "fedsim_group": "1",
                "fedsim_role": "node_exporter",
                "__scheme__": "http",
                "__metrics_path__": "/metrics",
            },
        },
        {
            "targets": ["10.0.0.5:9100"],
            "labels": {
                "fedsim_device": "5",
                "fedsim_group": "2",
                "fedsim_role": "node_exporter",
                "__scheme__": "http",
                "__metrics_path__": "/m",
            },
        },
    ]


async def test_targets_follow_registration_and_removal(server):
    id, token = await server.register(endpoints={"node_exporter": NODE})
    assert [g["targets"] for g in await targets(server)] == [["10.0.0.4:9100"]]

    # Registering again declares the endpoints anew.
    r = await server.client.post(
        f"{API}/devices",
        json={"id": id, "endpoints": {"node_exporter": "http://10.0.0.9:9100/metrics"}},
        headers=token,
    )
    assert r.status == 201
    assert [g["targets"] for g in await targets(server)] == [["10.0.0.9:9100"]]

    r = await server.client.delete(f"{API}/devices/{id}", headers=ADMIN)
    assert r.status == 200
    assert await targets(server) == []


async def test_offline_devices_stay_listed(make_server):
    server = await make_server(patience_s=0.05)
    id, token = await server.register(endpoints={"node_exporter": NODE})
    r = await server.client.put(
        f"{API}/devices/{id}/heartbeat", json={"resources": {}}, headers=token
    )
    assert r.status == 200
    await asyncio.sleep(0.1)
    r = await server.client.get(f"{API}/devices/{id}", headers=ADMIN)
    assert (await r.json())["state"] == "offline"
    assert [g["labels"]["fedsim_device"] for g in await targets(server)] == [str(id)]


async def test_needs_the_admin_token(server):
    _, device_token = await server.register(endpoints={"node_exporter": NODE})
    r = await server.client.get(SD)
    assert r.status == 401 and r.headers["WWW-Authenticate"].startswith("Bearer")
    for headers in (ENROLL, device_token):
        r = await server.client.get(SD, headers=headers)
        assert r.status == 403


async def test_an_unscrapable_endpoint_is_left_out_and_the_rest_kept(server):
    await server.register(
        id=1,
        endpoints={"agent": "http://host:notaport/metrics", "node_exporter": "http:///metrics"},
    )
    await server.register(id=2, endpoints={"node_exporter": NODE})
    assert [g["labels"]["fedsim_device"] for g in await targets(server)] == ["2"]


@pytest.mark.parametrize(
    ("url", "target", "scheme", "path"),
    [
        ("https://dev.example/metrics", "dev.example:443", "https", "/metrics"),
        ("http://dev.example", "dev.example:80", "http", "/metrics"),
        ("http://[::1]:9100/metrics?collect[]=cpu", "[::1]:9100", "http", "/metrics"),
    ],
)
async def test_target_group_from_a_url(url, target, scheme, path):
    group = target_group(url, role="node_exporter", labels={"fedsim_device": "1"})
    assert group == {
        "targets": [target],
        "labels": {
            "fedsim_device": "1",
            "fedsim_role": "node_exporter",
            "__scheme__": scheme,
            "__metrics_path__": path,
        },
    }
