"""Prometheus HTTP service discovery: ``GET /api/v1/sd/targets`` lists what devices declared."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from dataclasses import replace

import pytest

from fedsim.real.server.config import ServerConfig
from fedsim.real.server.handlers.discovery import endpoint_refusal, target_group
from tests.real.conftest import ADMIN, API, ENROLL

pytestmark = pytest.mark.asyncio

SD = f"{API}/sd/targets"
NODE = "http://10.0.0.4:9100/metrics"
AGENT = "http://10.0.0.4:8700/metrics"
# The test client registers from loopback; the devices here declare addresses in this network.
DEVICES = "10.0.0.0/24"


@pytest.fixture
def config(config: ServerConfig) -> ServerConfig:
    """The conftest's server, allowing endpoints in DEVICES as an operator would."""
    return replace(config, sd_allowed_networks=(DEVICES,))


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


async def test_by_default_only_endpoints_on_the_registering_address_are_listed(make_server, caplog):
    # Prepare: a server with no networks allowed; devices register from loopback.
    server = await make_server(sd_allowed_networks=())
    await server.register(id=1, endpoints={"agent": "http://127.0.0.1:8700/metrics"})
    await server.register(
        id=2,
        endpoints={
            "agent": "http://169.254.169.254/latest/meta-data",  # a cloud's metadata service
            "node_exporter": NODE,  # another host
        },
    )
    await server.register(id=3, endpoints={"agent": "http://localhost:8700/metrics"})  # a name
    caplog.set_level(logging.WARNING, logger="fedsim.real.server.handlers.discovery")

    # Execute: Prometheus asks twice.
    first, second = await targets(server), await targets(server)

    # Assert: only device 1's endpoint is listed; each one left out is logged once.
    assert first == second
    assert [(g["labels"]["fedsim_device"], g["targets"]) for g in first] == [
        ("1", ["127.0.0.1:8700"])
    ]
    left_out = [r.getMessage() for r in caplog.records if "not listed" in r.getMessage()]
    assert len(left_out) == 3, left_out
    assert any("169.254.169.254" in line for line in left_out)


async def test_an_allowed_network_lets_its_endpoints_through_and_no_other(make_server):
    # Prepare: the operator allows 10.0.0.0/24 only.
    server = await make_server(sd_allowed_networks=(DEVICES,))
    await server.register(
        id=1,
        endpoints={"agent": AGENT, "node_exporter": "http://169.254.169.254:80/"},
    )

    # Execute
    groups = await targets(server)

    # Assert
    assert [g["targets"] for g in groups] == [["10.0.0.4:8700"]]


async def test_the_registering_address_is_kept_across_a_restart(make_server):
    # Prepare: a device registers from loopback; the server is built again on its data.
    server = await make_server(sd_allowed_networks=())
    await server.register(id=1, endpoints={"agent": "http://127.0.0.1:8700/metrics"})
    await server.client.close()

    # Execute
    again = await make_server(sd_allowed_networks=())

    # Assert: its endpoint is still on the address it registered from.
    assert [g["targets"] for g in await targets(again)] == [["127.0.0.1:8700"]]


@pytest.mark.parametrize(
    ("url", "address", "allowed", "listed"),
    [
        ("http://127.0.0.1:9100/metrics", "127.0.0.1", (), True),
        ("https://[::1]:9100/metrics", "::1", (), True),
        ("http://127.0.0.1:9100/metrics", "::ffff:127.0.0.1", (), True),  # via an IPv6 socket
        ("http://10.0.0.4:9100/metrics", "127.0.0.1", (), False),
        ("http://10.0.0.4:9100/metrics", "127.0.0.1", ("10.0.0.0/24",), True),
        ("http://10.0.1.4:9100/metrics", "127.0.0.1", ("10.0.0.0/24",), False),
        ("http://169.254.169.254/", "127.0.0.1", ("10.0.0.0/24",), False),
        ("http://dev.example:9100/metrics", "127.0.0.1", ("0.0.0.0/0",), False),
        ("ftp://127.0.0.1/metrics", "127.0.0.1", (), False),
        ("http://127.0.0.1:9100/metrics", "", (), False),  # registered before addresses were kept
    ],
)
async def test_endpoint_rule(url, address, allowed, listed):
    networks = [ipaddress.ip_network(n) for n in allowed]
    assert (endpoint_refusal(url, address, networks) is None) is listed
