"""The agent's own Prometheus metrics, and the small HTTP server that exposes them.

A registry of its own, not the process-global one: the host's resources are read by a collector
on each scrape (no timer); the agent's work is counted where it happens; the bandwidth probe's
last result is shown once there is one. ``--metrics-port`` serves it at ``/metrics``, and the
URL goes to the server as the registration's ``endpoints.agent``, where Prometheus's service
discovery finds it. Names carry the ``fedsim_agent_`` prefix and base units.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from collections.abc import Iterator
from urllib.parse import urlsplit

import psutil
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from fedsim.real.agent.relay import PATH as HELD_PATH
from fedsim.real.agent.relay import HeldModels
from fedsim.real.agent.resources import GpuReader, io_counters

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"  # what generate_latest writes
TASK_KINDS = ("fit", "upload_data", "relay", "forward")  # docs/protocol.md's; others: "other"
OUTCOMES = ("succeeded", "failed", "dropped")  # dropped: trained, then discarded (a fault)
SENT_KINDS = ("update", "data")  # what those kinds send back (a forward sends an update)
WILDCARDS = ("", "0.0.0.0", "::")
# From a few batches on a GPU to an epoch of YOLOv4 on a Raspberry Pi.
TRAIN_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200)
# io_counters()' keys -> the counter each is exported as (``_total`` is added on exposition).
IO_COUNTERS = {
    "disk_read": ("fedsim_agent_disk_read_bytes", "Bytes read from the disks."),
    "disk_write": ("fedsim_agent_disk_written_bytes", "Bytes written to the disks."),
    "net_receive": (
        "fedsim_agent_network_receive_bytes",
        "Bytes received on every network interface but loopback.",
    ),
    "net_transmit": (
        "fedsim_agent_network_transmit_bytes",
        "Bytes sent on every network interface but loopback.",
    ),
}


class ResourceCollector(Collector):
    """The host's load, read when scraped.

    ``fedsim_agent_cpu_busy_ratio`` is the busy share of CPU time since the previous scrape
    (since the collector was made, at the first), measured from psutil's CPU times rather than
    ``cpu_percent``, whose per-thread state the heartbeats use. The disk and network counters
    are :func:`~fedsim.real.agent.resources.io_counters`' (node_exporter's
    ``node_disk_*_bytes_total`` and ``node_network_*_bytes_total`` for a device without one).
    ``gpu`` reads the GPU the agent trains on; without it there are no GPU gauges.
    """

    def __init__(self, *, gpu: GpuReader | None = None) -> None:
        self._gpu = gpu
        self._lock = threading.Lock()  # scrapes may come from several threads
        self._last = _cpu_busy_and_total()
        self._ratio = 0.0

    def describe(self) -> Iterator[Metric]:
        yield from self._families(cpu=None, memory=None, load=None, io={}, gpu=(None, None))

    def collect(self) -> Iterator[Metric]:
        busy, total = _cpu_busy_and_total()
        with self._lock:
            last_busy, last_total = self._last
            # Scrapes closer together than the clock tick see no time pass: keep the last value.
            if total > last_total:
                self._ratio = min(1.0, max(0.0, (busy - last_busy) / (total - last_total)))
                self._last = (busy, total)
            ratio = self._ratio
        yield from self._families(
            cpu=ratio,
            memory=float(psutil.virtual_memory().available),
            load=psutil.getloadavg()[0],
            io=io_counters(),
            gpu=self._read_gpu(),
        )

    def _read_gpu(self) -> tuple[float | None, float | None]:
        if self._gpu is None:
            return None, None
        memory = None
        try:
            memory = self._gpu.memory_used()
        except RuntimeError as e:  # a CUDA error costs this sample, not the whole scrape
            log.warning("could not read the GPU's memory: %s", e)
        return memory, self._gpu.utilization()

    def _families(
        self,
        *,
        cpu: float | None,
        memory: float | None,
        load: float | None,
        io: dict[str, float],
        gpu: tuple[float | None, float | None],
    ) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "fedsim_agent_cpu_busy_ratio", "Busy share of CPU time since the last scrape.", cpu
        )
        yield GaugeMetricFamily(
            "fedsim_agent_memory_available_bytes", "Memory available to new work.", memory
        )
        yield GaugeMetricFamily("fedsim_agent_load1", "One-minute load average.", load)
        for key, (name, text) in IO_COUNTERS.items():
            yield CounterMetricFamily(name, text, io.get(key))
        if self._gpu is not None:
            gpu_memory, gpu_utilization = gpu
            yield GaugeMetricFamily(
                "fedsim_agent_gpu_memory_used_bytes",
                "GPU memory in use, by every process, on the GPU the agent trains on.",
                gpu_memory,
            )
            yield GaugeMetricFamily(
                "fedsim_agent_gpu_utilization_ratio",
                "Share of the last sample period in which a kernel ran on the agent's GPU "
                "(NVML's utilization.gpu).",
                gpu_utilization,
            )


class ProbeCollector(Collector):
    """The bandwidth probe's last result; no samples before the first probe, since a zero
    would read as a dead link."""

    def __init__(self) -> None:
        self._last: tuple[float, float, float] | None = None

    def set(self, *, up_bps: float, down_bps: float, rtt_s: float) -> None:
        self._last = (up_bps, down_bps, rtt_s)  # one assignment: a scrape sees all or nothing

    def describe(self) -> Iterator[Metric]:
        yield from self._families()

    def collect(self) -> Iterator[Metric]:
        bandwidth, rtt = self._families()
        last = self._last
        if last is not None:
            up_bps, down_bps, rtt_s = last
            bandwidth.add_metric(["up"], up_bps)
            bandwidth.add_metric(["down"], down_bps)
            rtt.add_metric([], rtt_s)
        yield from (bandwidth, rtt)

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily(
                "fedsim_agent_probe_bandwidth_bytes_per_second",
                "Throughput to the server (up) and from it (down), last probe.",
                labels=["direction"],
            ),
            GaugeMetricFamily(
                "fedsim_agent_probe_rtt_seconds",
                "Round-trip time to the server, last probe.",
                labels=[],
            ),
        )


class AgentMetrics:
    """The agent's registry, and what the agent updates as it works.

    ``gpu`` (see :func:`~fedsim.real.agent.resources.gpu_reader`) reads the agent's GPU.
    """

    def __init__(self, *, gpu: GpuReader | None = None) -> None:
        self.registry = CollectorRegistry()
        Gauge("fedsim_agent_up", "1 while the agent runs.", registry=self.registry).set(1)
        self.busy = Gauge(
            "fedsim_agent_busy",
            "1 while the agent runs a task (training, uploading data), else 0.",
            registry=self.registry,
        )
        self.tasks = Counter(
            "fedsim_agent_tasks",
            "Tasks run, by kind and outcome (succeeded, failed, dropped).",
            ["kind", "outcome"],
            registry=self.registry,
        )
        for kind in TASK_KINDS:  # the kinds this agent runs, counted from zero
            for outcome in OUTCOMES:
                self.tasks.labels(kind, outcome)
        self.train_seconds = Histogram(
            "fedsim_agent_train_seconds",
            "Duration of local trainings.",
            buckets=TRAIN_BUCKETS,
            registry=self.registry,
        )
        # The server's pair (fedsim_bytes_received_total, fedsim_bytes_sent_total) seen from
        # the device, with the same kinds: model down; update and data up.
        self.bytes_received = Counter(
            "fedsim_agent_bytes_received",
            "Bytes of blobs received from the server: model versions.",
            ["kind"],
            registry=self.registry,
        )
        self.bytes_sent = Counter(
            "fedsim_agent_bytes_sent",
            "Bytes of blobs the server accepted: updates, training data.",
            ["kind"],
            registry=self.registry,
        )
        self.bytes_received.labels("model")
        for kind in SENT_KINDS:
            self.bytes_sent.labels(kind)
        self._probe = ProbeCollector()
        self.registry.register(self._probe)
        self.registry.register(ResourceCollector(gpu=gpu))

    def task_done(self, kind: object, outcome: str) -> None:
        """Count a task of ``kind`` (as the server sent it) that ended in ``outcome``."""
        label = kind if isinstance(kind, str) and kind in TASK_KINDS else "other"
        self.tasks.labels(label, outcome).inc()

    def set_probe(self, *, up_bps: float, down_bps: float, rtt_s: float) -> None:
        """Show a bandwidth probe's result (a ``ProbeResult``'s fields)."""
        self._probe.set(up_bps=up_bps, down_bps=down_bps, rtt_s=rtt_s)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class MetricsServer:
    """The agent's HTTP server on the running event loop; :meth:`start`, then :meth:`stop`.

    ``GET /metrics``, and with ``held`` the model versions the agent relays to its group
    (see :mod:`fedsim.real.agent.relay`).
    """

    def __init__(self, metrics: AgentMetrics, *, held: HeldModels | None = None) -> None:
        self._metrics = metrics
        app = web.Application()
        app.router.add_get("/metrics", self._serve)
        if held is not None:
            app.router.add_get(HELD_PATH, held.serve)
        self._runner = web.AppRunner(app, access_log=None)

    async def start(self, *, host: str, port: int) -> int:
        """Listen on ``host:port`` (``port`` 0: any free one); returns the port bound.
        Raises ``OSError`` when it cannot listen there."""
        await self._runner.setup()
        site = web.TCPSite(self._runner, host or None, port)
        try:
            await site.start()
        except OSError:
            await self._runner.cleanup()
            raise
        return int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        await self._runner.cleanup()

    async def _serve(self, request: web.Request) -> web.Response:
        # Off the event loop: the first CUDA call of a process may take seconds.
        body = await asyncio.to_thread(self._metrics.exposition)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


def advertised_url(host: str, port: int, server: str, path: str = "/metrics") -> str:
    """The URL of ``path`` to give the server: ``host``'s, or for a wildcard bind
    (``0.0.0.0``, ``::``) the address this host reaches ``server`` from, which the server's
    side can reach back. May block on DNS."""
    if host in WILDCARDS:
        host = _address_towards(server)
    if ":" in host:
        host = f"[{host}]"  # an IPv6 literal
    return f"http://{host}:{port}{path}"


def _address_towards(server: str) -> str:
    url = urlsplit(server)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        family, _, _, _, address = socket.getaddrinfo(url.hostname, port, type=socket.SOCK_DGRAM)[0]
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.connect(address)  # a UDP connect sends nothing: it only picks the route
            return str(s.getsockname()[0])
    except OSError:
        return socket.getfqdn()


def _cpu_busy_and_total() -> tuple[float, float]:
    """Busy and total CPU seconds since boot, counted as ``psutil.cpu_percent`` counts them."""
    times = psutil.cpu_times()
    # Linux counts guest time inside user and nice as well: take it out once.
    total = sum(times) - getattr(times, "guest", 0.0) - getattr(times, "guest_nice", 0.0)
    return total - times.idle - getattr(times, "iowait", 0.0), total
