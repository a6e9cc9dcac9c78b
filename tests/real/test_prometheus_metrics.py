"""Prometheus metrics of the server and of the agent: what each ``/metrics`` shows, that it
follows the state it reports, and that ``promtool check metrics`` finds nothing to fault."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from ports import free_port
from prometheus_client.parser import text_string_to_metric_families

from fedsim.core.runtime import FitIns
from fedsim.real.agent import cli
from fedsim.real.agent.agent import Agent, AgentError
from fedsim.real.agent.config import AgentConfig
from fedsim.real.agent.metrics import AgentMetrics, MetricsServer, advertised_url
from fedsim.real.agent.resources import GpuReader, gpu_reader
from fedsim.real.server.app import METRICS, REGISTRY, REPOSITORY
from fedsim.real.server.metrics import ServerMetrics
from tests.real.conftest import ADMIN, API, blob
from tests.real.test_agent import BLOB_PATH, FakeServer, agent_config, fit_task, running
from tests.real.test_server_api import FakeJobs

# Units other than the base ones (seconds, bytes, ratios) that must not appear in a name.
NOT_BASE_UNITS = re.compile(r"(milli|micro|nano|minute|hour|_ms\b|_us\b|kilo|mega|giga|percent)")

SERVER_FAMILIES = {
    "fedsim_devices": "gauge",
    "fedsim_group_devices": "gauge",
    "fedsim_device_last_seen_age_seconds": "gauge",
    "fedsim_http_requests_total": "counter",
    "fedsim_heartbeats_total": "counter",
    "fedsim_tasks_total": "counter",
    "fedsim_bytes_received_total": "counter",
    "fedsim_bytes_sent_total": "counter",
    "fedsim_round_duration_seconds": "histogram",
    "fedsim_round_participants": "gauge",
    "fedsim_round_failures_total": "counter",
    "fedsim_aggregation_seconds": "histogram",
    "fedsim_round_accuracy_ratio": "gauge",
    "fedsim_round_eval_loss": "gauge",
    "fedsim_round_train_loss": "gauge",
}
READ_ON_SCRAPE = {
    "fedsim_repository_versions": "gauge",
    "fedsim_repository_bytes": "gauge",
    "fedsim_jobs": "gauge",
}
AGENT_FAMILIES = {
    "fedsim_agent_up": "gauge",
    "fedsim_agent_busy": "gauge",
    "fedsim_agent_cpu_busy_ratio": "gauge",
    "fedsim_agent_memory_available_bytes": "gauge",
    "fedsim_agent_load1": "gauge",
    "fedsim_agent_gpu_memory_used_bytes": "gauge",
    "fedsim_agent_gpu_utilization_ratio": "gauge",
    "fedsim_agent_disk_read_bytes_total": "counter",
    "fedsim_agent_disk_written_bytes_total": "counter",
    "fedsim_agent_network_receive_bytes_total": "counter",
    "fedsim_agent_network_transmit_bytes_total": "counter",
    "fedsim_agent_tasks_total": "counter",
    "fedsim_agent_train_seconds": "histogram",
    "fedsim_agent_bytes_received_total": "counter",
    "fedsim_agent_bytes_sent_total": "counter",
    "fedsim_agent_probe_bandwidth_bytes_per_second": "gauge",
    "fedsim_agent_probe_rtt_seconds": "gauge",
}


# -- fixtures and helpers -----------------------------------------------------------------


class FakeGpu(GpuReader):
    """A GPU reader with fixed answers, for a host without a GPU."""

    def __init__(self, *, memory: float, utilization: float | None) -> None:
        super().__init__(0)
        self._memory, self._utilization = memory, utilization

    def memory_used(self) -> float:
        return self._memory

    def utilization(self) -> float | None:
        return self._utilization


@pytest_asyncio.fixture
async def fake(aiohttp_server) -> tuple[FakeServer, str]:
    """test_agent's fake server: the device side of the protocol, recording what it gets."""
    server = FakeServer()
    test_server = await aiohttp_server(server.app())
    return server, f"http://{test_server.host}:{test_server.port}"


def unchanged(**kwargs: Any) -> Callable[[int, FitIns], tuple[dict, dict[str, float]]]:
    """A trainer factory whose trainings hand the parameters back as they came."""
    return lambda device_id, ins: (ins.parameters, {"loss": 0.5})


def promtool_check(text: str) -> None:
    """``promtool check metrics < text``: exit 0 and not a word of complaint."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian's prometheus package ships it)")
    done = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert not (done.stdout + done.stderr).strip(), done.stdout + done.stderr


def types(text: str) -> dict[str, str]:
    """Each ``# TYPE`` line's name and type, ``_created`` series left out."""
    declared = dict(re.findall(r"^# TYPE (\w+) (\w+)$", text, re.M))
    return {name: kind for name, kind in declared.items() if not name.endswith("_created")}


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample as ``(name, sorted labels) -> value``."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(text: str, name: str, **labels: str) -> float | None:
    return samples(text).get((name, tuple(sorted(labels.items()))))


def assert_named_by_the_rules(declared: dict[str, str], prefix: str) -> None:
    for name, kind in declared.items():
        assert name.startswith(prefix), name
        assert (kind == "counter") == name.endswith("_total"), name
        assert not NOT_BASE_UNITS.search(name), name


async def server_text(server) -> str:
    r = await server.client.get("/metrics")
    assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
    return await r.text()


async def heartbeat(server, id: int, headers: dict[str, str]) -> None:
    r = await server.client.put(
        f"{API}/devices/{id}/heartbeat", json={"resources": {"cpu_busy": 0.1}}, headers=headers
    )
    assert r.status == 200, await r.text()


async def scrape(url: str) -> str:
    async with aiohttp.ClientSession() as session, session.get(url) as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
        return await r.text()


def full_server_metrics(server) -> ServerMetrics:
    """The server's metrics with the repository and a job manager read on scrape."""
    jobs = FakeJobs()
    jobs.jobs = {"j1": {"id": "j1", "state": "succeeded"}, "j2": {"id": "j2", "state": "running"}}
    return ServerMetrics(devices=server.app[REGISTRY], repository=server.app[REPOSITORY], jobs=jobs)


# -- the server ---------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_the_servers_metrics_have_the_names_and_types_promised(server):
    # Prepare
    id, token = await server.register(group=1)
    await heartbeat(server, id, token)
    server.app[METRICS].on_round({"total_s": 3.0, "completed": 2, "failed": 0})
    server.app[METRICS].observe_aggregation(0.01)

    # Execute
    text = await server_text(server)

    # Assert
    declared = types(text)
    assert SERVER_FAMILIES.items() <= declared.items()
    assert_named_by_the_rules(declared, "fedsim_")


@pytest.mark.asyncio
async def test_the_servers_metrics_pass_promtool(server):
    # Prepare: every family with samples, the ones read on scrape included.
    id, token = await server.register(group=1)
    await heartbeat(server, id, token)
    await server.model("m", blob(0.0), blob(1.0))
    await server.client.get(f"{API}/models/m/versions/1/blob", headers=ADMIN)
    server.app[METRICS].on_round({"total_s": 3.0, "completed": 2, "failed": 1})
    server.app[METRICS].observe_aggregation(0.01)
    full = full_server_metrics(server)

    # Execute
    served = await server_text(server)
    everything = full.exposition().decode()

    # Assert
    promtool_check(served)
    promtool_check(everything)


@pytest.mark.asyncio
async def test_device_gauges_follow_registrations_and_state_changes(server):
    # Prepare
    a, token_a = await server.register(group=1)
    b, _ = await server.register(group=1)
    c, token_c = await server.register(group=2)

    # Execute
    registered = await server_text(server)
    await heartbeat(server, a, token_a)
    await heartbeat(server, a, token_a)
    await heartbeat(server, c, token_c)
    r = await server.client.delete(f"{API}/devices/{b}", headers=ADMIN)
    assert r.status == 200
    changed = await server_text(server)

    # Assert
    assert value(registered, "fedsim_devices", state="registered") == 3
    assert value(registered, "fedsim_group_devices", group="1", state="registered") == 2
    assert value(registered, "fedsim_group_devices", group="2", state="registered") == 1
    assert value(registered, "fedsim_heartbeats_total") == 0
    assert value(changed, "fedsim_devices", state="online") == 2
    assert value(changed, "fedsim_devices", state="registered") == 0
    assert value(changed, "fedsim_devices", state="removed") == 1
    assert value(changed, "fedsim_group_devices", group="1", state="online") == 1
    assert value(changed, "fedsim_group_devices", group="1", state="removed") == 1
    assert value(changed, "fedsim_group_devices", group="2", state="online") == 1
    assert value(changed, "fedsim_heartbeats_total") == 3
    ages = {
        labels: v
        for (name, labels), v in samples(changed).items()
        if name == "fedsim_device_last_seen_age_seconds"
    }
    # The removed device has no series: one per live device, bounded by the fleet.
    assert set(ages) == {(("device", str(a)),), (("device", str(c)),)}
    assert all(0 <= age < 60 for age in ages.values())


@pytest.mark.asyncio
async def test_a_refused_heartbeat_is_not_counted(server):
    # Prepare
    _, token_a = await server.register()
    b, _ = await server.register()

    # Execute: a's token on b's heartbeat.
    r = await server.client.put(f"{API}/devices/{b}/heartbeat", json={}, headers=token_a)

    # Assert
    assert r.status == 403
    assert value(await server_text(server), "fedsim_heartbeats_total") == 0


@pytest.mark.asyncio
async def test_the_round_observers_move_the_histograms_and_counters(server):
    # Prepare
    metrics = server.app[METRICS]
    row = {"total_s": 12.5, "completed": 3, "failed": 1, "aggregated": True, "aggregation_s": 0.2}
    row |= {"accuracy": 0.91, "eval_loss": 0.3, "train_loss": 0.4}
    missed = {"total_s": 5.0, "completed": 0, "failed": 2, "aggregated": False, "aggregation_s": 0}
    missed |= {"accuracy": None, "eval_loss": None, "train_loss": None}
    before = await server_text(server)

    # Execute
    metrics.on_round(row)
    metrics.on_round(missed)  # nothing aggregated: no aggregation observed
    metrics.observe_round(duration_s=7.5, participants=4, failures=0)
    text = await server_text(server)

    # Assert
    assert value(text, "fedsim_round_duration_seconds_count") == 3
    assert value(text, "fedsim_round_duration_seconds_sum") == 25.0
    assert value(text, "fedsim_round_duration_seconds_bucket", le="10.0") == 2
    assert value(text, "fedsim_round_participants") == 4  # the last round's
    assert value(text, "fedsim_round_failures_total") == 3
    assert value(text, "fedsim_aggregation_seconds_count") == 1
    assert value(text, "fedsim_aggregation_seconds_sum") == 0.2
    # Quality: nothing before a round measured it; then the last measured values.
    assert "\nfedsim_round_accuracy_ratio " not in before
    assert value(text, "fedsim_round_accuracy_ratio") == 0.91
    assert value(text, "fedsim_round_eval_loss") == 0.3
    assert value(text, "fedsim_round_train_loss") == 0.4


@pytest.mark.asyncio
async def test_the_job_managers_rounds_reach_the_servers_metrics(make_server):
    # Prepare
    jobs = FakeJobs()
    server = await make_server(jobs=jobs)
    [listener] = jobs.listeners  # the server subscribed its metrics

    # Execute: a job's thread reports a round.
    listener(
        {"total_s": 4.0, "completed": 3, "failed": 0, "aggregated": True, "aggregation_s": 0.5}
    )
    text = await server_text(server)

    # Assert
    assert value(text, "fedsim_round_duration_seconds_count") == 1
    assert value(text, "fedsim_round_participants") == 3
    assert value(text, "fedsim_aggregation_seconds_sum") == 0.5


@pytest.mark.asyncio
async def test_the_repository_and_jobs_are_read_on_scrape(server):
    # Prepare
    metrics = full_server_metrics(server)
    before = metrics.exposition().decode()

    # Execute: two versions of m (one repeated, stored once), one of n.
    await server.model("m", blob(0.0), blob(1.0), blob(1.0))
    await server.model("n", blob(0.0, n=8))
    after = metrics.exposition().decode()

    # Assert
    assert READ_ON_SCRAPE.items() <= types(after).items()
    assert value(before, "fedsim_repository_versions", model="m") is None
    assert value(after, "fedsim_repository_versions", model="m") == 3
    assert value(after, "fedsim_repository_bytes", model="m") == 2 * len(blob())
    assert value(after, "fedsim_repository_versions", model="n") == 1
    assert value(after, "fedsim_repository_bytes", model="n") == len(blob(0.0, n=8))
    assert value(after, "fedsim_jobs", state="running") == 1
    assert value(after, "fedsim_jobs", state="succeeded") == 1
    assert value(after, "fedsim_jobs", state="cancelled") == 0


# -- the agent ----------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_the_agents_metrics_server_serves_every_family_and_passes_promtool():
    # Prepare
    metrics = AgentMetrics(gpu=FakeGpu(memory=1.5e9, utilization=0.25))
    metrics.task_done("fit", "succeeded")
    metrics.train_seconds.observe(2.0)
    metrics.set_probe(up_bps=1e7, down_bps=5e7, rtt_s=0.002)
    server = MetricsServer(metrics)
    port = await server.start(host="127.0.0.1", port=0)

    # Execute
    try:
        text = await scrape(f"http://127.0.0.1:{port}/metrics")
    finally:
        await server.stop()

    # Assert
    declared = types(text)
    assert AGENT_FAMILIES.items() <= declared.items()
    assert_named_by_the_rules(declared, "fedsim_agent_")
    assert value(text, "fedsim_agent_up") == 1
    assert 0 <= value(text, "fedsim_agent_cpu_busy_ratio") <= 1
    assert value(text, "fedsim_agent_memory_available_bytes") > 0
    assert value(text, "fedsim_agent_gpu_memory_used_bytes") == 1.5e9
    assert value(text, "fedsim_agent_gpu_utilization_ratio") == 0.25
    for counter in ("disk_read", "disk_written", "network_receive", "network_transmit"):
        assert value(text, f"fedsim_agent_{counter}_bytes_total") >= 0
    assert value(text, "fedsim_agent_probe_bandwidth_bytes_per_second", direction="up") == 1e7
    assert value(text, "fedsim_agent_probe_bandwidth_bytes_per_second", direction="down") == 5e7
    assert value(text, "fedsim_agent_probe_rtt_seconds") == 0.002
    promtool_check(text)


@pytest.mark.asyncio
async def test_without_a_gpu_or_a_probe_their_gauges_have_no_samples():
    # Execute
    text = AgentMetrics(gpu=gpu_reader("cpu")).exposition().decode()

    # Assert: no zeros that would read as an empty GPU or a dead link.
    names = {name for name, _ in samples(text)}
    assert "fedsim_agent_gpu_memory_used_bytes" not in types(text)
    assert "fedsim_agent_gpu_utilization_ratio" not in types(text)
    assert not {n for n in names if n.startswith("fedsim_agent_probe_")}
    assert value(text, "fedsim_agent_tasks_total", kind="fit", outcome="failed") == 0
    promtool_check(text)


def test_a_failing_gpu_read_costs_only_its_own_sample():
    # Prepare
    class Broken(FakeGpu):
        def memory_used(self) -> float:
            raise RuntimeError("CUDA error: unspecified launch failure")

    # Execute
    text = AgentMetrics(gpu=Broken(memory=0.0, utilization=0.5)).exposition().decode()

    # Assert
    assert types(text)["fedsim_agent_gpu_memory_used_bytes"] == "gauge"
    assert value(text, "fedsim_agent_gpu_memory_used_bytes") is None
    assert value(text, "fedsim_agent_gpu_utilization_ratio") == 0.5
    assert value(text, "fedsim_agent_memory_available_bytes") > 0


@pytest.mark.parametrize(
    ("host", "url"),
    [
        ("127.0.0.1", "http://127.0.0.1:9101/metrics"),
        ("::1", "http://[::1]:9101/metrics"),
        # Bound to every interface: the address this host reaches the server from.
        ("0.0.0.0", "http://127.0.0.1:9101/metrics"),
    ],
)
def test_the_advertised_url_is_one_the_server_can_reach(host: str, url: str):
    assert advertised_url(host, 9101, "http://127.0.0.1:8080") == url


@pytest.mark.asyncio
async def test_an_agent_counts_its_work_and_registers_its_metrics_url(fake, tmp_path):
    # Prepare
    server, url = fake
    global_model = blob(0.5)
    server.blobs[BLOB_PATH] = global_model
    port = free_port()
    config = agent_config(url, tmp_path, data="synthetic:8", metrics_port=port)
    agent = Agent(config=config, trainer_factory=unchanged)
    upload = {"id": "u1", "kind": "upload_data", "nbytes": 100_000}

    # Execute
    async with running(agent) as run:
        await server.until(lambda: agent.device_id is not None, run)
        await server.give(agent.device_id, fit_task("r1-d1", global_model))
        await server.give(agent.device_id, upload)
        await server.give(agent.device_id, {"id": "x1", "kind": "relay"})
        await server.until(lambda: len(server.data) == 1 and len(server.errors) == 1, run)
        registered = server.registrations[0]["body"]["endpoints"]["agent"]
        text = await scrape(registered)

    # Assert
    assert registered == f"http://127.0.0.1:{port}/metrics"
    tasks = "fedsim_agent_tasks_total"
    assert value(text, tasks, kind="fit", outcome="succeeded") == 1
    assert value(text, tasks, kind="upload_data", outcome="succeeded") == 1
    assert value(text, tasks, kind="relay", outcome="failed") == 1
    assert value(text, "fedsim_agent_train_seconds_count") == 1
    assert value(text, "fedsim_agent_bytes_received_total", kind="model") == len(global_model)
    update = server.updates[0]["body"]
    assert value(text, "fedsim_agent_bytes_sent_total", kind="update") == len(update)
    assert value(text, "fedsim_agent_bytes_sent_total", kind="data") == 100_000


@pytest.mark.asyncio
async def test_an_agent_without_a_metrics_port_registers_no_endpoint(fake, tmp_path):
    # Prepare
    server, url = fake
    agent = Agent(config=agent_config(url, tmp_path))

    # Execute
    async with running(agent) as run:
        await server.until(lambda: len(server.registrations) == 1, run)

    # Assert
    assert "endpoints" not in server.registrations[0]["body"]


@pytest.mark.asyncio
async def test_a_metrics_port_in_use_stops_the_agent_with_a_reason(fake, tmp_path):
    # Prepare
    _, url = fake
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        agent = Agent(config=agent_config(url, tmp_path, metrics_port=port))

        # Execute / Assert
        with pytest.raises(AgentError, match=f"cannot serve metrics on 127.0.0.1:{port}"):
            await agent.run()


def test_the_metrics_options_become_the_agent_config(tmp_path):
    # Prepare
    argv = ["--server", "http://127.0.0.1:8080", "--token", "t", "--state-dir", str(tmp_path)]
    extra = ["--metrics-port", "9101", "--metrics-host", "0.0.0.0"]

    # Execute
    default, _ = cli.parse_config(argv)
    config, _ = cli.parse_config([*argv, *extra])

    # Assert
    assert (default.metrics_host, default.metrics_port) == ("127.0.0.1", 0)
    assert (config.metrics_host, config.metrics_port) == ("0.0.0.0", 9101)


@pytest.mark.parametrize("port", [-1, 65536])
def test_a_metrics_port_out_of_range_is_refused(tmp_path, port: Any):
    with pytest.raises(ValueError, match="--metrics-port"):
        AgentConfig(server="http://h:1", state_dir=tmp_path, metrics_port=port)
