"""The server's Prometheus metrics, in a registry of its own (not the process-global one).

Counters and histograms are updated where things happen: requests and heartbeats by the
middleware, blobs and task results by the handlers, rounds and aggregations by whoever runs the
coordinator (:meth:`ServerMetrics.on_round`, :meth:`ServerMetrics.observe_aggregation`). State
that lives elsewhere (devices, repository, jobs) is read by collectors on each scrape, so it can
never drift from its source. Names carry the ``fedsim_`` prefix and base units (seconds, bytes,
counts ending in ``_total``); no label takes a value from an unbounded set.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from fedsim.core.registry import DeviceRegistry, DeviceState
from fedsim.core.repository import ModelRepository, UnknownModel
from fedsim.real.protocol import Paths
from fedsim.real.server.errors import Handler
from fedsim.real.server.jobs_api import Jobs

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
JOB_STATES = ("running", "succeeded", "failed", "cancelled")  # docs/protocol.md's job states

# A round on a testbed takes from a second (loopback, a small net) to hours (YOLOv4 on a Pi).
ROUND_BUCKETS = (1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400)
AGGREGATION_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class DeviceCollector(Collector):
    """The fleet as the registry sees it at scrape time.

    ``fedsim_devices{state}``: devices per state; ``fedsim_group_devices{group,state}``: the
    same per group (sum by state is ``fedsim_devices``); ``fedsim_device_last_seen_age_seconds
    {device}``: seconds since each live device's last sign of life.
    """

    def __init__(self, *, devices: DeviceRegistry, clock: Callable[[], float]) -> None:
        self._devices = devices
        self._clock = clock

    def describe(self) -> Iterator[Metric]:
        # Describing without reading keeps registration from touching the registry.
        yield from self._families()

    def collect(self) -> Iterator[Metric]:
        live = self._devices.list()
        removed = self._devices.list(state=DeviceState.REMOVED)
        now = self._clock()
        totals = dict.fromkeys(DeviceState, 0)
        groups: dict[int, dict[DeviceState, int]] = {}
        for record in live + removed:
            totals[record.state] += 1
            groups.setdefault(record.group, dict.fromkeys(DeviceState, 0))[record.state] += 1
        devices, per_group, age = self._families()
        for state, count in totals.items():
            devices.add_metric([state.value], count)
        for group in sorted(groups):
            for state, count in groups[group].items():
                per_group.add_metric([str(group), state.value], count)
        # One series per device is bounded by the fleet: removed devices are left out, so an
        # id drops out when the device is retired, and a testbed's fleet is tens to thousands.
        # The registration counts as the first sign of life, as it does for the timeout.
        for record in live:
            age.add_metric([str(record.id)], max(0.0, now - record.last_alive))
        yield from (devices, per_group, age)

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, ...]:
        return (
            GaugeMetricFamily("fedsim_devices", "Registered devices by state.", labels=["state"]),
            GaugeMetricFamily(
                "fedsim_group_devices",
                "Registered devices by group and state.",
                labels=["group", "state"],
            ),
            GaugeMetricFamily(
                "fedsim_device_last_seen_age_seconds",
                "Seconds since the device's last heartbeat (or registration), live devices.",
                labels=["device"],
            ),
        )


class RepositoryCollector(Collector):
    """``fedsim_repository_versions{model}`` and ``fedsim_repository_bytes{model}`` (each
    distinct blob once, as stored), read from the model repository at scrape time."""

    def __init__(self, *, repository: ModelRepository) -> None:
        self._repository = repository

    def describe(self) -> Iterator[Metric]:
        yield from self._families()

    def collect(self) -> Iterator[Metric]:
        versions, nbytes = self._families()
        for model in self._repository.list_models():
            try:
                stats = self._repository.stats(model.name)
            except UnknownModel:  # gone between the listing and now
                continue
            versions.add_metric([model.name], stats.versions)
            nbytes.add_metric([model.name], stats.total_size)
        yield from (versions, nbytes)

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
        # Models are registered by the operator: their names are a bounded set.
        return (
            GaugeMetricFamily(
                "fedsim_repository_versions", "Stored versions per model.", labels=["model"]
            ),
            GaugeMetricFamily(
                "fedsim_repository_bytes",
                "Bytes stored per model, each distinct blob counted once.",
                labels=["model"],
            ),
        )


class JobCollector(Collector):
    """``fedsim_jobs{state}``: the job manager's jobs per state, read at scrape time."""

    def __init__(self, *, jobs: Jobs) -> None:
        self._jobs = jobs

    def describe(self) -> Iterator[Metric]:
        yield self._family()

    def collect(self) -> Iterator[Metric]:
        counts = dict.fromkeys(JOB_STATES, 0)
        for job in self._jobs.list():
            state = str(job.get("state"))
            counts[state] = counts.get(state, 0) + 1
        family = self._family()
        for state, count in counts.items():
            family.add_metric([state], count)
        yield family

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily("fedsim_jobs", "Jobs by state.", labels=["state"])


class LastRoundCollector(Collector):
    """The model quality of the last round that measured it: ``fedsim_round_accuracy_ratio``,
    ``fedsim_round_eval_loss`` (evaluated rounds) and ``fedsim_round_train_loss`` (the
    participants' mean). No sample until a round reports one, since a zero would read as a
    measurement."""

    FIELDS = (
        ("accuracy", "fedsim_round_accuracy_ratio", "Accuracy of the last evaluated round."),
        ("eval_loss", "fedsim_round_eval_loss", "Evaluation loss of the last evaluated round."),
        ("train_loss", "fedsim_round_train_loss", "Mean training loss of the last round."),
    )

    def __init__(self) -> None:
        self._last: dict[str, float] = {}

    def update(self, row: Mapping[str, Any]) -> None:
        values = {key: float(row[key]) for key, _, _ in self.FIELDS if row.get(key) is not None}
        self._last = {**self._last, **values}  # one assignment: a scrape sees all or nothing

    def describe(self) -> Iterator[Metric]:
        for _, name, doc in self.FIELDS:
            yield GaugeMetricFamily(name, doc)

    def collect(self) -> Iterator[Metric]:
        last = self._last
        for key, name, doc in self.FIELDS:
            family = GaugeMetricFamily(name, doc)
            if key in last:
                family.add_metric([], last[key])
            yield family


class ServerMetrics:
    """The registry ``/metrics`` exposes, the counters handlers update, and the observer the
    coordinator reports rounds and aggregations to.

    ``repository`` and ``jobs``, when given, are read on each scrape. ``clock`` must be the
    registry's clock (Unix time unless a test says otherwise): it dates the last-seen ages.
    """

    def __init__(
        self,
        *,
        devices: DeviceRegistry,
        repository: ModelRepository | None = None,
        jobs: Jobs | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.registry = CollectorRegistry()
        self.http_requests = Counter(
            "fedsim_http_requests",
            "HTTP requests answered, by route template, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.heartbeats = Counter(
            "fedsim_heartbeats", "Heartbeats accepted from devices.", registry=self.registry
        )
        self.tasks = Counter(
            "fedsim_tasks",
            "Task results filed, by task kind and outcome (succeeded, failed).",
            ["kind", "outcome"],
            registry=self.registry,
        )
        self.bytes_received = Counter(
            "fedsim_bytes_received",
            "Bytes of blobs received: model versions, updates, training data.",
            ["kind"],
            registry=self.registry,
        )
        self.bytes_sent = Counter(
            "fedsim_bytes_sent",
            "Bytes of blobs sent: model versions.",
            ["kind"],
            registry=self.registry,
        )
        self.round_duration = Histogram(
            "fedsim_round_duration_seconds",
            "Wall-clock duration of federated rounds.",
            buckets=ROUND_BUCKETS,
            registry=self.registry,
        )
        self.round_participants = Gauge(
            "fedsim_round_participants",
            "Devices whose work the last round received.",
            registry=self.registry,
        )
        self.round_failures = Counter(
            "fedsim_round_failures",
            "Devices that failed their work in a round, summed over rounds.",
            registry=self.registry,
        )
        self.aggregation = Histogram(
            "fedsim_aggregation_seconds",
            "Time spent aggregating updates into a new global model.",
            buckets=AGGREGATION_BUCKETS,
            registry=self.registry,
        )
        self.last_round = LastRoundCollector()
        self.registry.register(self.last_round)
        self.registry.register(DeviceCollector(devices=devices, clock=clock))
        if repository is not None:
            self.registry.register(RepositoryCollector(repository=repository))
        if jobs is not None:
            self.registry.register(JobCollector(jobs=jobs))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    # -- the coordinator's side; safe from any thread ---------------------------------------

    def observe_round(self, *, duration_s: float, participants: int, failures: int) -> None:
        """Record a finished round: how long it took, who took part, who failed."""
        self.round_duration.observe(duration_s)
        self.round_participants.set(participants)
        self.round_failures.inc(failures)

    def on_round(self, row: Mapping[str, Any]) -> None:
        """:meth:`observe_round`, and :meth:`observe_aggregation` when the round aggregated,
        from a round's row (``RoundRow`` as a dict: ``total_s``, ``completed``, ``failed``,
        ``aggregated``, ``aggregation_s``; ``accuracy``, ``eval_loss`` and ``train_loss`` when
        measured), the shape ``run_federated``'s ``on_round`` hands out.
        """
        self.observe_round(
            duration_s=float(row["total_s"]),
            participants=int(row["completed"]),
            failures=int(row["failed"]),
        )
        if row.get("aggregated"):
            self.observe_aggregation(float(row["aggregation_s"]))
        self.last_round.update(row)

    def observe_aggregation(self, seconds: float) -> None:
        """Record one aggregation that took ``seconds``."""
        self.aggregation.observe(seconds)

    # -- requests -------------------------------------------------------------------------

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Count every answered request, and every accepted heartbeat; runs outside the error
        middleware, so it sees the final status."""
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except asyncio.CancelledError:
            status = 499  # nginx's "client closed request": the answer was never given
            raise
        finally:
            resource = request.match_info.route.resource
            # The template, not the path: one series per route, whatever the ids.
            route = resource.canonical if resource is not None else "unmatched"
            self.http_requests.labels(route, request.method, str(status)).inc()
            if route == Paths.HEARTBEAT and status == 200:
                self.heartbeats.inc()
