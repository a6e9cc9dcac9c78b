"""A real Prometheus and node_exporter watching a fedsim server and three agents on loopback.

Prometheus is configured by ``fedsim prometheus-config`` and finds the devices only through the
server's service discovery, which it reads with the read-only viewer token. All devices run on
this host, so devices 3 and 4 declare the same node_exporter (one instance on a free loopback
port) as theirs (``--node-exporter``); device 8 declares none, so its CPU, memory, disk and
network traffic come from its agent's own metrics. Every agent serves ``/metrics``
(``--metrics-port``) and runs the bandwidth probe every second. The heartbeat patience is long,
so when an agent stops, only Prometheus (its ``up`` going to 0) can take the device offline
within the test.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import psutil
import pytest
from clusters import cluster_for
from clusters import config as fl_config
from ports import free_port

from fedsim.core.scheduling import DeviceView, ResourceView
from fedsim.core.selection import ResourceAware
from fedsim.monitor import cli
from fedsim.monitor.promql import PrometheusResources
from fedsim.real.launch import LocalCluster, stop_process
from fedsim.real.resources import RegistryResources
from fedsim.report import grafana

PROMETHEUS = "/usr/bin/prometheus"
NODE_EXPORTER = "/usr/bin/prometheus-node-exporter"
DEVICES = [3, 4, 8]  # fl_digits's clients on keti_testbed: groups 1, 1 and 2
WITH_NODE_EXPORTER = [3, 4]
VICTIM = 4  # stopped at the end: its node_exporter stays up, its agent goes down
TRAFFIC = ("disk_read", "disk_write", "net_receive", "net_transmit")
# Grafana panels with nothing to show on a host without a GPU the agent trains on.
MAYBE_NO_SERIES = {"fedsim-monitoring: GPU utilisation [A]"}

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (os.access(PROMETHEUS, os.X_OK) and os.access(NODE_EXPORTER, os.X_OK)),
        reason=f"needs {PROMETHEUS} and {NODE_EXPORTER} "
        "(Debian: apt-get install prometheus prometheus-node-exporter)",
    ),
]

T = TypeVar("T")


def wait_for(
    what: str, probe: Callable[[], T], done: Callable[[T], bool], timeout: float = 20.0
) -> T:
    """``probe()``'s first result that is ``done``, polled until ``timeout``; on a timeout,
    fails naming ``what`` and showing the last result."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = probe()
        except OSError as e:  # a process still starting
            last = e
        else:
            if done(last):
                return last
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


def get_json(url: str, **params: str) -> Any:
    query = f"?{urllib.parse.urlencode(params)}" if params else ""
    with urllib.request.urlopen(url + query, timeout=5) as response:
        return json.load(response)


def spawn(cmd: Sequence[str], log: Path) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


class Unmeasured(ResourceView):
    """The heartbeat view with CPU, memory and bandwidth blanked out, so that values seen
    through PrometheusResources must have come from Prometheus."""

    def __init__(self, inner: ResourceView) -> None:
        self.inner = inner

    def snapshot(self, devices: Sequence[int]) -> dict[int, DeviceView]:
        views = self.inner.snapshot(devices)
        blank = {"cpu_busy": -1.0, "memory_available": -1.0, "bandwidth": 0.0}
        return {d: replace(v, **blank) for d, v in views.items()}


@dataclass(frozen=True)
class Stack:
    cluster: LocalCluster
    prometheus: str  # base URL
    node_address: str  # host:port of the shared node_exporter


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """node_exporter, the server with three agents, and Prometheus configured by
    ``fedsim prometheus-config``; a one-round fl_digits job has run, so round, repository and
    training metrics hold data. The tests below share it, the one that stops an agent last."""
    tmp_path = tmp_path_factory.mktemp("stack")
    procs: list[subprocess.Popen] = []
    node_url = f"http://127.0.0.1:{free_port()}/metrics"
    node_address = urllib.parse.urlsplit(node_url).netloc
    cfg = fl_config("fl.rounds=1", "mode.patience_s=60", "mode.heartbeat_interval_s=0.5")
    agent_args = {
        d: ["--metrics-port", str(free_port()), "--probe-interval", "1", "--probe-bytes", "65536"]
        + (["--node-exporter", node_url] if d in WITH_NODE_EXPORTER else [])
        for d in DEVICES
    }
    prometheus = f"http://127.0.0.1:{free_port()}"
    cluster = cluster_for(
        cfg, tmp_path / "cluster", agent_args=agent_args, prometheus_url=prometheus
    )
    assert cluster.clients == DEVICES
    try:
        procs.append(
            spawn(
                [
                    NODE_EXPORTER,
                    f"--web.listen-address={node_address}",
                    "--web.disable-exporter-metrics",
                    "--collector.disable-defaults",
                    "--collector.cpu",
                    "--collector.meminfo",
                    "--collector.loadavg",
                    "--collector.diskstats",
                    "--collector.netdev",
                ],
                tmp_path / "node_exporter.log",
            )
        )
        with cluster:
            token_file = tmp_path / "viewer.token"
            token_file.write_text(cluster.viewer_token)  # service discovery only reads
            config = tmp_path / "prometheus.yml"
            argv = ["--server", cluster.server.url, "--token-file", str(token_file)]
            argv += ["--scrape-interval", "1s", "--sd-refresh-interval", "1s"]
            assert cli.main([*argv, "--out", str(config)]) == 0
            procs.append(
                spawn(
                    [
                        PROMETHEUS,
                        f"--config.file={config}",
                        f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                        f"--web.listen-address={prometheus.removeprefix('http://')}",
                    ],
                    tmp_path / "prometheus.log",
                )
            )
            spec = {"experiment": {"name": "fl_digits"}, "fl": {"rounds": 1}}
            job = cluster.jobs.start("federated", spec)
            done = wait_for(
                "the job to finish",
                lambda: cluster.jobs.get(job["id"]),
                lambda j: j["state"] != "running",
                timeout=120,
            )
            assert done["state"] == "succeeded", done["error"]
            yield Stack(cluster=cluster, prometheus=prometheus, node_address=node_address)
    finally:
        for proc in reversed(procs):
            stop_process(proc)
        # `with cluster` stopped the agents and the server; after a failed start too.


def test_every_grafana_expression_parses_and_returns_series(stack: Stack):
    # Grafana's template variables as a dashboard showing everything sets them.
    variables = {"$device": ".*", "$group": ".*", "$__rate_interval": "30s"}
    checked = 0
    for dashboard in grafana.dashboards().values():
        for where, expr in grafana.expressions(dashboard):
            promql = expr
            for name, value in variables.items():
                promql = promql.replace(name, value)
            assert "$" not in promql.replace('"$1"', ""), (where, promql)

            def query(promql: str = promql) -> dict:
                return get_json(f"{stack.prometheus}/api/v1/query", query=promql)

            # A query Prometheus cannot parse fails at once with HTTP 400.
            if where in MAYBE_NO_SERIES:
                answer = query()  # parsed and answered; series only where there is a GPU
            else:
                answer = wait_for(f"{where}: {promql}", query, lambda a: a["data"]["result"])
            assert answer["status"] == "success"
            checked += 1
    assert checked >= 35


def test_the_dashboards_monitoring_series_come_from_prometheus(stack: Stack):
    cluster = stack.cluster

    def series() -> dict:
        request = urllib.request.Request(
            f"{cluster.server.url}/api/v1/monitoring?window=120",
            headers={"Authorization": f"Bearer {cluster.viewer_token}"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.load(response)

    def complete(answer: dict) -> bool:
        # A Prometheus started moments ago has a single step of data: wait for a series.
        return set(answer["devices"]) == {str(d) for d in DEVICES} and all(
            len(s["t"]) > 1
            and any(v is not None for v in s["cpu_busy"])
            and any(v is not None for v in s["bandwidth"])
            and all(any(v is not None for v in s[field]) for field in TRAFFIC)
            for s in answer["devices"].values()
        )

    answer = wait_for("Prometheus-backed series of every device", series, complete)
    assert answer["source"] == "prometheus" and "warning" not in answer
    total = psutil.virtual_memory().total
    for s in answer["devices"].values():
        assert len(s["t"]) == len(s["cpu_busy"]) == len(s["memory_available"]) > 1
        assert all(0 <= v <= 1 for v in s["cpu_busy"] if v is not None)
        assert all(0 < v <= total for v in s["memory_available"] if v is not None)
        assert set(s["busy"]) <= {0.0, 1.0, None}
        for field in TRAFFIC:
            assert all(v >= 0 for v in s[field] if v is not None), field
        # No GPU here, and no DCGM-exporter: nothing, rather than an idle GPU.
        assert set(s["gpu_util"]) == {None}
    # Devices with a node_exporter get its numbers: what Prometheus answers for node_exporter's
    # counter at one of the series' instants, over the server's rate window (60 s at this step).
    # node_exporter is discovered on its own schedule, so until Prometheus holds two of its
    # samples the served figures are the agent's (the fallback): wait for node_exporter's.
    for field, counter, only in (
        ("disk_write", "node_disk_written_bytes_total", ""),
        ("net_receive", "node_network_receive_bytes_total", ',device!="lo"'),
    ):
        promql = f'sum(rate({counter}{{fedsim_device="{WITH_NODE_EXPORTER[0]}"{only}}}[60s]))'

        def served_and_direct(field: str = field, promql: str = promql) -> tuple[float, list]:
            # An instant a few scrapes (1 s apart) before the end: no sample for it can land
            # between the server's query and this one.
            node = series()["devices"][str(WITH_NODE_EXPORTER[0])]
            settled = node["t"][-1] - 3
            pairs = zip(node["t"], node[field], strict=True)
            measured = [(t, v) for t, v in pairs if v is not None and t <= settled]
            if not measured:
                return math.nan, []
            t, served = measured[-1]
            result = get_json(f"{stack.prometheus}/api/v1/query", query=promql, time=str(t))
            return served, result["data"]["result"]

        served, direct = wait_for(
            f"node_exporter's {field} in the served series", served_and_direct, lambda a: a[1]
        )
        assert len(direct) == 1
        assert served == pytest.approx(float(direct[0]["value"][1]), rel=1e-9), field
    # The device without one gets its agent's: node_exporter has nothing for it.
    alone = [d for d in DEVICES if d not in WITH_NODE_EXPORTER]
    for d in alone:
        promql = f'node_disk_written_bytes_total{{fedsim_device="{d}"}}'
        assert get_json(f"{stack.prometheus}/api/v1/query", query=promql)["data"]["result"] == []
    # Every device has traffic figures (a quiet disk may well have written nothing in the
    # window: zero is a figure, a missing series is not).
    for s in answer["devices"].values():
        for field in TRAFFIC:
            assert any(v is not None for v in s[field]), field


def test_prometheus_discovers_scrapes_and_feeds_the_scheduler(stack: Stack):
    check_stack(stack.cluster, stack.prometheus, stack.node_address)


def check_stack(cluster: LocalCluster, prometheus: str, node_address: str) -> None:
    # Discovery: every declared endpoint is a target carrying the device's labels.
    expected = {(str(d), "agent") for d in DEVICES}
    expected |= {(str(d), "node_exporter") for d in WITH_NODE_EXPORTER}

    def targets() -> list[dict]:
        return get_json(f"{prometheus}/api/v1/targets")["data"]["activeTargets"]

    def all_up(active: list[dict]) -> bool:
        devices = [t for t in active if "fedsim_device" in t["labels"]]
        found = {(t["labels"]["fedsim_device"], t["labels"]["fedsim_role"]) for t in devices}
        healthy = all(t["health"] == "up" for t in active)
        return found == expected and len(devices) == len(expected) and healthy

    active = wait_for("every target discovered and up", targets, all_up, timeout=30)
    assert len(active) == len(expected) + 1  # and the server's own
    for t in active:
        labels = t["labels"]
        if labels["job"] == "fedsim-server":
            assert labels["instance"] == cluster.server.url.removeprefix("http://")
        else:
            group = cluster.topology.devices[int(labels["fedsim_device"])].group
            assert labels["fedsim_group"] == str(group)
            if labels["fedsim_role"] == "node_exporter":
                assert labels["instance"] == node_address

    def up() -> list[float]:
        result = get_json(f"{prometheus}/api/v1/query", query='up{fedsim_device!=""}')
        return [float(s["value"][1]) for s in result["data"]["result"]]

    wait_for("up == 1 for every device target", up, lambda v: v == [1.0] * len(expected))

    # The resource view: CPU and memory from Prometheus (node_exporter for 1 and 2, the agent's
    # own metrics for 3), the rest from the heartbeats.
    heartbeats = RegistryResources(cluster.registry, train_flops_per_sample=1.0)
    view = PrometheusResources(url=prometheus, fallback=Unmeasured(heartbeats))

    def measured(views: dict[int, DeviceView]) -> bool:
        return all(
            v.cpu_busy >= 0 and v.memory_available > 0 and v.bandwidth > 0 for v in views.values()
        )

    views = wait_for("CPU and memory of every device", lambda: view.snapshot(DEVICES), measured)
    total = psutil.virtual_memory().total
    for v in views.values():
        assert v.online and v.group == cluster.topology.devices[v.id].group, v
        assert 0.0 <= v.cpu_busy <= 1.0
        assert 0 < v.memory_available <= total
    # Bandwidth is the slower direction of each agent's probe, as Prometheus scraped it.
    probed = get_json(
        f"{prometheus}/api/v1/query",
        query="min by (fedsim_device) (fedsim_agent_probe_bandwidth_bytes_per_second)",
    )["data"]["result"]
    slowest = {int(s["metric"]["fedsim_device"]): float(s["value"][1]) for s in probed}
    assert sorted(slowest) == DEVICES
    for d, v in views.items():
        assert v.bandwidth > 0
        # Both queries see the latest scrape; a probe may land between them, so allow drift.
        assert v.bandwidth == pytest.approx(slowest[d], rel=0.5)

    policy = ResourceAware(max_cpu_busy=1.0)
    rng = np.random.default_rng(0)
    assert policy.select(list(views.values()), 3, rnd=1, rng=rng) == DEVICES

    # The victim's agent stops; its node_exporter (shared) stays up. Prometheus sees the agent
    # down long before the heartbeat patience runs out.
    cluster.stop_agent(VICTIM)
    views = wait_for(
        f"device {VICTIM} offline", lambda: view.snapshot(DEVICES), lambda v: not v[VICTIM].online
    )
    assert heartbeats.snapshot([VICTIM])[VICTIM].online  # the registry still thinks it is up
    assert [d for d in DEVICES if views[d].online] == [3, 8]
    assert policy.select(list(views.values()), 3, rnd=2, rng=rng) == [3, 8]

    # Removed from the server, it leaves Prometheus's targets at the next discovery refresh.
    request = urllib.request.Request(
        f"{cluster.server.url}/api/v1/devices/{VICTIM}",
        method="DELETE",
        headers={"Authorization": f"Bearer {cluster.admin_token}"},
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 200

    def victim_gone(active: list[dict]) -> bool:
        return all(t["labels"].get("fedsim_device") != str(VICTIM) for t in active)

    wait_for(f"device {VICTIM}'s targets dropped", targets, victim_gone)
    views = view.snapshot(DEVICES)
    assert not views[VICTIM].online
    assert policy.select(list(views.values()), 3, rnd=3, rng=rng) == [3, 8]
