"""``GET /api/v1/monitoring``: heartbeat history by default, Prometheus range queries when the
server knows one, the heartbeats again when Prometheus fails; and the heartbeat history itself."""

from __future__ import annotations

import math

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from fedsim.real.server.history import HeartbeatHistory
from tests.real.conftest import ADMIN, API

RESOURCES = {"cpu_busy": 0.25, "memory_available": 2e9, "bandwidth_up": 3e6,
             "bandwidth_down": 5e6, "busy": 1.0, "gpu_util": 0.5, "disk_read": 1e5,
             "disk_write": 2e5, "net_receive": 3e5, "net_transmit": 4e5}  # fmt: skip


async def beat(server, id, token, **resources) -> None:
    r = await server.client.put(
        f"{API}/devices/{id}/heartbeat", json={"resources": resources}, headers=token
    )
    assert r.status == 200


async def monitoring(server, query: str = "") -> dict:
    r = await server.client.get(f"{API}/monitoring{query}", headers=ADMIN)
    assert r.status == 200, await r.text()
    return await r.json()


# -- the history ---------------------------------------------------------------------------


def test_history_keeps_one_reading_per_interval_and_a_bounded_number():
    history = HeartbeatHistory(samples=3, interval_s=5.0)
    for t in (100.0, 102.0, 105.0, 111.0, 117.0, 130.0):  # 102 is within 5 s of 100
        history.record(4, t, {**RESOURCES, "cpu_busy": t / 1000})

    [series] = history.series([4, 5], since=0.0).values()

    assert series["t"] == [111.0, 117.0, 130.0]  # the three latest kept
    assert series["cpu_busy"] == pytest.approx([0.111, 0.117, 0.130])
    assert series["bandwidth"] == [3e6] * 3  # the slower direction
    assert series["busy"] == [1.0] * 3
    assert series["gpu_util"] == [0.5] * 3
    assert series["disk_read"] == [1e5] * 3 and series["disk_write"] == [2e5] * 3
    assert series["net_receive"] == [3e5] * 3 and series["net_transmit"] == [4e5] * 3
    assert history.series([4], since=115.0)[4]["t"] == [117.0, 130.0]


def test_history_shows_unreported_fields_as_none_and_forgets_removed_devices():
    history = HeartbeatHistory(samples=10, interval_s=0.0)
    history.record(1, 10.0, {"cpu_busy": 0.5, "bandwidth_down": 7.0})

    series = history.series([1], since=0.0)[1]

    assert series["memory_available"] == [None] and series["busy"] == [None]
    assert series["gpu_util"] == [None]  # no GPU: nothing, not an idle one
    assert series["bandwidth"] == [7.0]
    history.forget(1)
    assert history.series([1], since=0.0) == {}


def test_history_refuses_a_size_it_cannot_keep():
    with pytest.raises(ValueError, match="samples"):
        HeartbeatHistory(samples=0)


# -- the endpoint, from heartbeats ---------------------------------------------------------


@pytest.mark.asyncio
async def test_heartbeats_become_series_per_device_filtered_by_group_and_device(make_server):
    server = await make_server(history_interval_s=0.0)
    a, token_a = await server.register(group=1)
    b, token_b = await server.register(group=2)
    await beat(server, a, token_a, **RESOURCES)
    await beat(server, a, token_a, **{**RESOURCES, "cpu_busy": 0.75, "busy": 0.0})
    await beat(server, b, token_b, cpu_busy=0.1)

    everything = await monitoring(server)
    group2 = await monitoring(server, "?group=2")
    only_a = await monitoring(server, f"?device={a}&window=60")

    assert everything["source"] == "heartbeats" and everything["window_s"] == 900
    assert set(everything["devices"]) == {str(a), str(b)}
    series = everything["devices"][str(a)]
    assert series["cpu_busy"] == [0.25, 0.75] and series["busy"] == [1.0, 0.0]
    assert series["memory_available"] == [2e9, 2e9] and len(series["t"]) == 2
    assert series["t"][0] <= series["t"][1]
    assert set(group2["devices"]) == {str(b)}
    assert set(only_a["devices"]) == {str(a)} and only_a["window_s"] == 60


@pytest.mark.asyncio
@pytest.mark.parametrize("query", ["?window=5", "?window=100000", "?window=x", "?group=-1"])
async def test_a_bad_query_is_422_naming_the_parameter(server, query):
    r = await server.client.get(f"{API}/monitoring{query}", headers=ADMIN)
    assert r.status == 422
    assert (await r.json())["error"]["field"] == query[1:].split("=")[0]


@pytest.mark.asyncio
async def test_monitoring_needs_the_admin_token(server):
    r = await server.client.get(f"{API}/monitoring")
    assert r.status == 401


@pytest.mark.asyncio
async def test_a_removed_device_leaves_the_history(make_server):
    server = await make_server(history_interval_s=0.0)
    a, token = await server.register(group=1)
    await beat(server, a, token, **RESOURCES)
    r = await server.client.delete(f"{API}/devices/{a}", headers=ADMIN)
    assert r.status == 200
    assert (await monitoring(server))["devices"] == {}


# -- the endpoint, from Prometheus ---------------------------------------------------------


class FakePrometheus:
    """``/api/v1/query_range`` answering a matrix per device, recording the queries."""

    def __init__(self, devices: list[int], *, fail: bool = False) -> None:
        self.devices = devices
        self.fail = fail
        self.forms: list[dict] = []

    async def query_range(self, request: web.Request) -> web.Response:
        form = dict(await request.post())
        self.forms.append(form)
        if self.fail:
            return web.json_response({"status": "error", "error": "boom"}, status=400)
        start, step = float(form["start"]), float(form["step"])
        value = "NaN" if "fedsim_agent_busy{" in form["query"] else "0.5"
        result = [
            {"metric": {"fedsim_device": str(d)},
             "values": [[start + k * step, value] for k in range(3)]}
            for d in self.devices
        ]  # fmt: skip
        return web.json_response(
            {"status": "success", "data": {"resultType": "matrix", "result": result}}
        )


async def start_prometheus(fake: FakePrometheus) -> TestServer:
    app = web.Application()
    app.router.add_post("/api/v1/query_range", fake.query_range)
    prometheus = TestServer(app)
    await prometheus.start_server()
    return prometheus


@pytest.mark.asyncio
async def test_with_prometheus_the_series_come_from_range_queries(make_server):
    fake = FakePrometheus([])
    prometheus = await start_prometheus(fake)
    try:
        server = await make_server(prometheus_url=str(prometheus.make_url("/")))
        a, _ = await server.register(group=1)
        b, _ = await server.register(group=2)
        fake.devices = [a, b, 999]  # 999: a series for a device the query did not ask for

        answer = await monitoring(server, "?window=600&group=1")
    finally:
        await prometheus.close()

    assert answer["source"] == "prometheus" and answer["step_s"] == 600 / 240
    # cpu, memory, bandwidth, busy, GPU, disk read and write, network receive and transmit
    assert len(fake.forms) == 9
    assert all(f'fedsim_device=~"{a}"' in form["query"] for form in fake.forms)
    series = answer["devices"][str(a)]
    assert series["cpu_busy"] == [0.5] * 3 and series["busy"] == [None] * 3  # NaN -> None
    assert series["gpu_util"] == series["net_transmit"] == [0.5] * 3
    assert len(series["t"]) == 3 and not any(math.isnan(t) for t in series["t"])


@pytest.mark.asyncio
async def test_a_failing_prometheus_falls_back_to_heartbeats_with_a_warning(make_server):
    prometheus = await start_prometheus(FakePrometheus([], fail=True))
    try:
        server = await make_server(
            prometheus_url=str(prometheus.make_url("/")), history_interval_s=0.0
        )
        a, token = await server.register(group=1)
        await beat(server, a, token, **RESOURCES)

        answer = await monitoring(server)
    finally:
        await prometheus.close()

    assert answer["source"] == "heartbeats" and "boom" in answer["warning"]
    assert answer["devices"][str(a)]["cpu_busy"] == [0.25]


@pytest.mark.asyncio
async def test_an_unreachable_prometheus_falls_back_too(make_server, unused_tcp_port):
    server = await make_server(prometheus_url=f"http://127.0.0.1:{unused_tcp_port}")
    await server.register(group=1)

    answer = await monitoring(server)

    assert answer["source"] == "heartbeats" and "warning" in answer
