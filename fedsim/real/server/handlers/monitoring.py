"""``GET /monitoring``: each device's CPU, memory, bandwidth, activity, GPU utilisation, disk and
network traffic over a recent window.

The dashboard's monitoring view reads this one endpoint whatever the source: Prometheus
(range queries of the PromQL the scheduler's resource view uses, and of GPU, disk and network
traffic: :func:`~fedsim.monitor.promql.monitoring_queries`) when the server was
given its URL, else the server's own bounded heartbeat history. A Prometheus that fails to
answer is reported in ``warning`` and the heartbeats are served instead, so the view never goes
blank because monitoring is down.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import aiohttp
from aiohttp import web

from fedsim.core.registry import DeviceRegistry
from fedsim.monitor.promql import (
    PrometheusError,
    by_device,
    device_selector,
    finite,
    monitoring_queries,
)
from fedsim.real.server.handlers.common import query
from fedsim.real.server.history import FIELDS, HeartbeatHistory
from fedsim.real.server.offload import Offload
from fedsim.real.server.responses import json_response
from fedsim.real.server.schemas import MonitoringQuery

log = logging.getLogger(__name__)

POINTS = 240  # samples per series from Prometheus, whatever the window


class MonitoringHandlers:
    """``/monitoring``."""

    def __init__(
        self,
        *,
        registry: DeviceRegistry,
        history: HeartbeatHistory,
        offload: Offload,
        prometheus_url: str | None = None,
        prometheus_timeout_s: float = 5.0,
    ) -> None:
        self._registry = registry
        self._history = history
        self._offload = offload
        self._prometheus = prometheus_url.rstrip("/") if prometheus_url else None
        self._timeout = aiohttp.ClientTimeout(total=prometheus_timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def series(self, request: web.Request) -> web.Response:
        wanted = query(request, MonitoringQuery)
        window, group, device = wanted.window, wanted.group, wanted.device
        records = await self._offload(self._registry.list, group=group)
        ids = [r.id for r in records if device is None or r.id == device]
        end = time.time()
        start = end - window
        answer: dict[str, Any] = {"window_s": window}
        if self._prometheus is not None and ids:
            step = max(1.0, window / POINTS)
            try:
                devices = await self._from_prometheus(ids, start, end, step)
            except PrometheusError as e:
                log.warning("Prometheus at %s: %s; serving heartbeats", self._prometheus, e)
                answer["warning"] = f"Prometheus at {self._prometheus}: {e}"
            else:
                answer |= {"source": "prometheus", "step_s": step, "devices": devices}
                return json_response(answer)
        history = await self._offload(self._history.series, ids, since=start)
        answer |= {
            "source": "heartbeats",
            "step_s": self._history.interval_s,
            "devices": {str(d): history[d] for d in ids if d in history},
        }
        return json_response(answer)

    async def _from_prometheus(
        self, ids: list[int], start: float, end: float, step: float
    ) -> dict[str, dict[str, list]]:
        """Range queries per field, merged per device onto the timestamps any field has."""
        rate_window = f"{max(int(4 * step), 60)}s"  # enough samples for rate() at any step
        queries = monitoring_queries(device_selector(ids), rate_window)
        points: dict[int, dict[float, dict[str, float | None]]] = {}
        # At once: one refresh of the view asks for every field.
        answers = await asyncio.gather(
            *(self._range(queries[field], start, end, step) for field in FIELDS)
        )
        for field, answer in zip(FIELDS, answers, strict=True):
            for device, values in answer.items():
                for t, value in values:
                    points.setdefault(device, {}).setdefault(t, {})[field] = value
        devices = {}
        for device in sorted(points):
            times = sorted(points[device])
            series: dict[str, list] = {"t": times}
            for field in FIELDS:
                series[field] = [points[device][t].get(field) for t in times]
            devices[str(device)] = series
        return devices

    async def _range(
        self, promql: str, start: float, end: float, step: float
    ) -> dict[int, list[tuple[float, float | None]]]:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        form = {"query": promql, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step}"}
        try:
            async with self._session.post(
                f"{self._prometheus}/api/v1/query_range", data=form
            ) as response:
                answer = await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as e:
            raise PrometheusError(f"{type(e).__name__}: {e}") from e
        return by_device(
            answer,
            promql,
            lambda series: [(float(t), finite(text)) for t, text in series["values"]],
        )
