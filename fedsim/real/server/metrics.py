"""The server's Prometheus metrics, in a registry of its own (not the process-global one).

Counters are updated where things happen; the device gauge is built on each scrape from the
registry, so it can never drift from the registry's state. Names carry the ``fedsim_`` prefix
and base units (bytes, counts ending in ``_total``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from fedsim.core.registry import DeviceRegistry, DeviceState
from fedsim.real.server.errors import Handler

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class DeviceCollector(Collector):
    """``fedsim_devices{state}``: how many devices are in each state, read at scrape time."""

    def __init__(self, *, devices: DeviceRegistry) -> None:
        self._devices = devices

    def describe(self) -> Iterator[Metric]:
        # Describing without reading keeps registration from touching the registry.
        yield self._family()

    def collect(self) -> Iterator[Metric]:
        counts = dict.fromkeys(DeviceState, 0)
        for record in self._devices.list() + self._devices.list(state=DeviceState.REMOVED):
            counts[record.state] += 1
        family = self._family()
        for state, count in counts.items():
            family.add_metric([state.value], count)
        yield family

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily("fedsim_devices", "Registered devices by state.", labels=["state"])


class ServerMetrics:
    """The counters handlers update, and the registry ``/metrics`` exposes."""

    def __init__(self, *, devices: DeviceRegistry) -> None:
        self.registry = CollectorRegistry()
        self.http_requests = Counter(
            "fedsim_http_requests",
            "HTTP requests answered, by route template, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
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
        self.registry.register(DeviceCollector(devices=devices))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Count every answered request; runs outside the error middleware, so it sees the
        final status."""
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
