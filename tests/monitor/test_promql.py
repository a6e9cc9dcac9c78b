"""PrometheusResources against a fake Prometheus HTTP API that answers canned query results."""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

import pytest

from fedsim.core.scheduling import DeviceView, StaticResourceView
from fedsim.monitor.promql import PrometheusResources, monitoring_queries
from fedsim.real.server.history import FIELDS

# Which canned answer a query gets: the first key that occurs in its text.
KINDS = {
    "up{": "up",
    "node_cpu_seconds_total": "cpu",
    "MemAvailable": "memory",
    "probe_bandwidth": "bandwidth",
}


def vector(values: dict[object, float | str]) -> dict:
    """A successful instant-query answer: one series per device label value."""
    result = [
        {"metric": {"fedsim_device": str(d), "job": "fedsim-devices"}, "value": [1.0, str(v)]}
        for d, v in values.items()
    ]
    return {"status": "success", "data": {"resultType": "vector", "result": result}}


class FakePrometheus:
    """``POST /api/v1/query`` answered by ``answer(kind, form)``; requests are recorded."""

    def __init__(self) -> None:
        self.answers: dict[str, dict] = {kind: vector({}) for kind in KINDS.values()}
        self.status = 200
        self.delay_s = 0.0
        self.requests: list[dict[str, list[str]]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers["Content-Length"])
                form = parse_qs(self.rfile.read(length).decode())
                fake.requests.append(form)
                time.sleep(fake.delay_s)
                query = form["query"][0]
                kind = next(k for key, k in KINDS.items() if key in query)
                body = json.dumps(fake.answers[kind]).encode()
                self.send_response(fake.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def prometheus() -> Iterator[FakePrometheus]:
    fake = FakePrometheus()
    yield fake
    fake.stop()


def heartbeat_view() -> StaticResourceView:
    """The fallback: what heartbeats say about devices 1..3 (3 is offline)."""
    return StaticResourceView(
        views=[
            DeviceView(
                id=d,
                group=7,
                online=d != 3,
                cpu_busy=0.5,
                memory_available=1e9,
                throughput=100.0 * d,
                bandwidth=1e6,
            )
            for d in (1, 2, 3)
        ]
    )


MakeView = Callable[..., PrometheusResources]


@pytest.fixture
def make_view(prometheus) -> MakeView:
    def make(**kwargs) -> PrometheusResources:
        return PrometheusResources(url=prometheus.url, fallback=heartbeat_view(), **kwargs)

    return make


def test_measured_values_replace_the_heartbeats(prometheus, make_view):
    # Prepare
    prometheus.answers.update(
        up=vector({1: 1, 2: 1}),
        cpu=vector({1: 0.25, 2: 0.75}),
        memory=vector({1: 8e9, 2: 2e9}),
        bandwidth=vector({1: 5e7}),
    )

    # Execute
    views = make_view().snapshot([1, 2])

    # Assert
    assert views[1] == DeviceView(
        id=1,
        group=7,
        online=True,
        cpu_busy=0.25,
        memory_available=8e9,
        throughput=100.0,
        bandwidth=5e7,
    )
    # No probe measurement for device 2: its bandwidth is the heartbeat's.
    assert views[2].bandwidth == 1e6
    assert (views[2].cpu_busy, views[2].memory_available) == (0.75, 2e9)
    assert views[2].throughput == 200.0


def test_every_query_asks_for_the_devices_at_one_instant(prometheus, make_view):
    make_view().snapshot([2, 1, 2])
    assert len(prometheus.requests) == 4
    assert all('fedsim_device=~"1|2"' in r["query"][0] for r in prometheus.requests)
    assert len({r["time"][0] for r in prometheus.requests}) == 1
    cpu = next(r["query"][0] for r in prometheus.requests if "node_cpu" in r["query"][0])
    assert "[1m]" in cpu and "fedsim_agent_cpu_busy_ratio" in cpu


def test_a_device_prometheus_does_not_know_is_the_fallbacks(prometheus, make_view):
    prometheus.answers.update(up=vector({1: 1}), cpu=vector({1: 0.1}))
    views = make_view().snapshot([1, 2])
    assert views[2] == heartbeat_view().snapshot([2])[2]
    assert views[1].cpu_busy == 0.1 and views[1].memory_available == 1e9


def test_down_endpoints_take_a_device_offline_but_up_ones_never_bring_it_online(
    prometheus, make_view
):
    prometheus.answers.update(up=vector({1: 0, 2: 1, 3: 1}))
    views = make_view().snapshot([1, 2, 3])
    assert not views[1].online  # an endpoint is down
    assert views[2].online
    assert not views[3].online  # no heartbeats: node_exporter answering is not enough


def test_odd_series_are_ignored(prometheus, make_view):
    prometheus.answers.update(
        up=vector({1: 1, 2: 1, 9: 1, "": 1, "x": 1}),
        cpu=vector({1: "NaN", 2: 1.02}),
        memory=vector({1: "+Inf"}),
    )
    views = make_view().snapshot([1, 2])
    assert set(views) == {1, 2}
    assert views[1].cpu_busy == 0.5 and views[1].memory_available == 1e9
    assert views[2].cpu_busy == 1.0  # a rate that overshoots is clamped


def test_prometheus_down_falls_back_entirely_with_one_warning(caplog):
    # A port that nothing listens on: the fake is stopped before the view asks it.
    fake = FakePrometheus()
    fake.stop()
    view = PrometheusResources(url=fake.url, fallback=heartbeat_view(), timeout_s=0.5)
    with caplog.at_level(logging.DEBUG, logger="fedsim.monitor.promql"):
        first = view.snapshot([1, 2, 3])
        second = view.snapshot([1, 2, 3])
    assert first == second == heartbeat_view().snapshot([1, 2, 3])
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert fake.url in warnings[0].getMessage()


def test_recovers_when_prometheus_answers_again(prometheus, make_view, caplog):
    prometheus.status = 503
    prometheus.answers["up"] = {"status": "error", "error": "not ready"}
    view = make_view()
    with caplog.at_level(logging.INFO, logger="fedsim.monitor.promql"):
        assert view.snapshot([1]) == heartbeat_view().snapshot([1])
        prometheus.status = 200
        prometheus.answers["up"] = vector({1: 0})
        assert not view.snapshot([1])[1].online
    messages = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert messages[0][0] == logging.WARNING and "HTTP 503" in messages[0][1]
    assert "not ready" in messages[0][1]
    assert messages[1][0] == logging.INFO and "answers again" in messages[1][1]


def test_an_error_answer_falls_back(prometheus, make_view, caplog):
    prometheus.answers["cpu"] = {"status": "error", "errorType": "bad_data", "error": "parse"}
    prometheus.answers["up"] = vector({1: 0})
    with caplog.at_level(logging.WARNING, logger="fedsim.monitor.promql"):
        views = make_view().snapshot([1])
    assert views[1].online  # nothing of a failed snapshot is used
    assert "parse" in caplog.records[0].getMessage()


def test_a_slow_prometheus_times_out_to_the_fallback(prometheus, make_view):
    prometheus.delay_s = 1.0
    start = time.monotonic()
    views = make_view(timeout_s=0.2).snapshot([1])
    assert time.monotonic() - start < 0.9
    assert views == heartbeat_view().snapshot([1])


def test_no_devices_asks_nothing(prometheus, make_view):
    assert make_view().snapshot([]) == {}
    assert prometheus.requests == []


def test_fallback_alone_describes_throughput_even_when_prometheus_has_everything(
    prometheus, make_view
):
    prometheus.answers.update(
        up=vector({1: 1}),
        cpu=vector({1: 0.0}),
        memory=vector({1: 0}),
        bandwidth=vector({1: 1e9}),
    )
    view = make_view().snapshot([1])[1]
    assert view.throughput == 100.0 and view.group == 7
    assert view.memory_available == 0 and not math.isinf(view.memory_available)


def test_the_dashboards_queries_cover_its_fields_node_exporter_first():
    # Execute
    queries = monitoring_queries('fedsim_device=~"1|2"', "60s")

    # Assert: every charted field; traffic from node_exporter, else the agent's counters.
    assert tuple(queries) == FIELDS
    for field, node, agent in (
        ("disk_read", "node_disk_read_bytes_total", "fedsim_agent_disk_read_bytes_total"),
        ("net_transmit", "node_network_transmit_bytes_total",
         "fedsim_agent_network_transmit_bytes_total"),
    ):  # fmt: skip
        first, fallback = queries[field].split(" or ")
        assert f"rate({node}{{" in first and f"rate({agent}{{" in fallback
        assert "[60s]" in first and 'fedsim_device=~"1|2"' in fallback
    assert 'device!="lo"' in queries["net_receive"]
    first, fallback = queries["gpu_util"].split(" or ")
    assert "fedsim_agent_gpu_utilization_ratio" in first
    assert fallback.endswith('(DCGM_FI_DEV_GPU_UTIL{fedsim_device=~"1|2"}) / 100')
