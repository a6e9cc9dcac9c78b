"""The scheduler's view of devices read from Prometheus, over its HTTP API.

Prometheus scrapes what each device declared at registration (its agent's ``/metrics`` and its
node_exporter, found through the server's service discovery, which labels every series with
``fedsim_device``). :func:`monitoring_queries` are the dashboard's PromQL (the scheduler's,
and GPU, disk and network traffic). :class:`PrometheusResources` asks it for CPU busy, memory
available, measured bandwidth and ``up`` per device, and fills in everything else (group,
throughput) from a fallback view, usually the heartbeat one
(:class:`~fedsim.real.resources.RegistryResources`).
A device Prometheus knows nothing about is described by the fallback alone, and so is every
device while Prometheus cannot be reached.

The queries are blocking HTTP requests (``urllib``): the coordinator reads the view from its own
thread, not from an event loop.
"""

from __future__ import annotations

import json
import logging
import math
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import Any, TypeVar

from fedsim.core.scheduling import DeviceView, ResourceView

log = logging.getLogger(__name__)
T = TypeVar("T")

DEVICE_LABEL = "fedsim_device"
# What the agent exports when node_exporter's view is missing, and what only the agent measures.
AGENT_CPU_BUSY = "fedsim_agent_cpu_busy_ratio"
AGENT_MEMORY_AVAILABLE = "fedsim_agent_memory_available_bytes"
AGENT_BANDWIDTH = "fedsim_agent_probe_bandwidth_bytes_per_second"
AGENT_BUSY = "fedsim_agent_busy"
AGENT_GPU_UTILIZATION = "fedsim_agent_gpu_utilization_ratio"
# DCGM-exporter's GPU utilisation, in percent (github.com/NVIDIA/dcgm-exporter,
# default-counters.csv): used for a device whose agent reports none, when Prometheus scrapes
# a DCGM-exporter whose series carry the device's label.
DCGM_GPU_UTILIZATION = "DCGM_FI_DEV_GPU_UTIL"
# node_exporter's counter, else the agent's, for each traffic field (bytes since boot).
TRAFFIC_COUNTERS = {
    "disk_read": ("node_disk_read_bytes_total", "fedsim_agent_disk_read_bytes_total"),
    "disk_write": ("node_disk_written_bytes_total", "fedsim_agent_disk_written_bytes_total"),
    "net_receive": (
        "node_network_receive_bytes_total",
        "fedsim_agent_network_receive_bytes_total",
    ),
    "net_transmit": (
        "node_network_transmit_bytes_total",
        "fedsim_agent_network_transmit_bytes_total",
    ),
}


def device_selector(devices: Iterable[int]) -> str:
    """A label matcher for exactly ``devices``."""
    ids = "|".join(str(d) for d in sorted(set(devices)))
    return f'{DEVICE_LABEL}=~"{ids}"'


def resource_queries(sel: str, rate_window: str) -> dict[str, str]:
    """PromQL for each device's ``cpu_busy`` (0..1), ``memory_available`` (bytes),
    ``bandwidth`` (bytes/s, the probe's slower direction) and ``busy`` (1 while running a task),
    one series per device of the label matcher ``sel``."""
    by = f"by ({DEVICE_LABEL})"
    return {
        # Each "or" takes the agent's number only for devices node_exporter has none for.
        "cpu_busy": (
            f'1 - avg {by} (rate(node_cpu_seconds_total{{mode="idle",{sel}}}[{rate_window}]))'
            f" or max {by} ({AGENT_CPU_BUSY}{{{sel}}})"
        ),
        "memory_available": (
            f"max {by} (node_memory_MemAvailable_bytes{{{sel}}})"
            f" or max {by} ({AGENT_MEMORY_AVAILABLE}{{{sel}}})"
        ),
        "bandwidth": f"min {by} ({AGENT_BANDWIDTH}{{{sel}}})",
        "busy": f"max {by} ({AGENT_BUSY}{{{sel}}})",
    }


def monitoring_queries(sel: str, rate_window: str) -> dict[str, str]:
    """:func:`resource_queries` and, for the dashboard, ``gpu_util`` (0..1), ``disk_read``,
    ``disk_write``, ``net_receive`` and ``net_transmit`` (bytes/s over ``rate_window``).

    GPU utilisation is the agent's ``fedsim_agent_gpu_utilization_ratio`` (the GPU it trains
    on, through NVML), else DCGM-exporter's ``DCGM_FI_DEV_GPU_UTIL`` / 100 (the busiest of
    the host's GPUs); stock node_exporter has none. Disk traffic is node_exporter's over the
    disks it reports (by default whole disks, not partitions), network traffic its over every
    interface but loopback, as the agent counts them; each else the agent's own counters.
    """
    by = f"by ({DEVICE_LABEL})"
    queries = resource_queries(sel, rate_window)
    queries["gpu_util"] = (
        f"max {by} ({AGENT_GPU_UTILIZATION}{{{sel}}})"
        f" or max {by} ({DCGM_GPU_UTILIZATION}{{{sel}}}) / 100"
    )
    for field, (node, agent) in TRAFFIC_COUNTERS.items():
        only = ',device!="lo"' if field.startswith("net_") else ""
        queries[field] = (
            f"sum {by} (rate({node}{{{sel}{only}}}[{rate_window}]))"
            f" or sum {by} (rate({agent}{{{sel}}}[{rate_window}]))"
        )
    return queries


class PrometheusError(Exception):
    """Prometheus could not be asked, or answered something other than a result."""


class PrometheusResources(ResourceView):
    """Devices as Prometheus last scraped them, the rest from ``fallback``.

    Per device, each field Prometheus has replaces the fallback's:

    - ``cpu_busy``: ``1 - `` node_exporter's idle CPU share over ``rate_window``, else the
      agent's ``fedsim_agent_cpu_busy_ratio``;
    - ``memory_available``: node_exporter's ``MemAvailable``, else the agent's
      ``fedsim_agent_memory_available_bytes``;
    - ``bandwidth``: the slower direction of the agent's probe,
      ``fedsim_agent_probe_bandwidth_bytes_per_second{direction="up"|"down"}``;
    - ``online``: false when any of the device's scraped endpoints is down (``up == 0``).
      Prometheus only ever takes a device offline: node_exporter answering says the host is up,
      not that the agent is, so a device the fallback sees offline (no heartbeats) stays
      offline. What ``up`` adds is speed: a dead agent endpoint shows within a scrape interval,
      long before the heartbeat's patience runs out.

    ``timeout_s`` bounds each of the few queries a snapshot makes.
    """

    def __init__(
        self,
        *,
        url: str,
        fallback: ResourceView,
        timeout_s: float = 2.0,
        rate_window: str = "1m",
    ) -> None:
        self.url = url.rstrip("/")
        self.fallback = fallback
        self.timeout_s = timeout_s
        self.rate_window = rate_window
        self._reachable = True  # warn once when Prometheus goes away, not on every snapshot

    def snapshot(self, devices: Sequence[int]) -> dict[int, DeviceView]:
        views = self.fallback.snapshot(devices)
        if not devices:
            return views
        try:
            measured = self._measure(devices)
        except PrometheusError as e:
            if self._reachable:
                log.warning("Prometheus at %s: %s; using the fallback view", self.url, e)
            else:
                log.debug("Prometheus at %s still unavailable: %s", self.url, e)
            self._reachable = False
            return views
        if not self._reachable:
            log.info("Prometheus at %s answers again", self.url)
            self._reachable = True
        for device, fields in measured.items():
            view = views[device]
            if "online" in fields:
                fields["online"] = view.online and fields["online"]
            views[device] = replace(view, **fields)
        return views

    def _measure(self, devices: Sequence[int]) -> dict[int, dict]:
        """The fields Prometheus has for each of ``devices`` it knows; raises PrometheusError."""
        sel = device_selector(devices)
        queries = {
            "online": f"min by ({DEVICE_LABEL}) (up{{{sel}}})",
            **resource_queries(sel, self.rate_window),
        }
        del queries["busy"]  # the scheduler takes busy-ness from the registry's state
        at = time.time()  # one instant for every query, so the fields agree
        wanted = set(devices)
        fields: dict[int, dict] = {}
        for name, promql in queries.items():
            for device, value in self._query(promql, at).items():
                if device in wanted:
                    fields.setdefault(device, {})[name] = value
        for values in fields.values():
            if "online" in values:
                values["online"] = values["online"] >= 1.0
            if "cpu_busy" in values:  # rates of counters jitter a little past the bounds
                values["cpu_busy"] = min(max(values["cpu_busy"], 0.0), 1.0)
        return fields

    def _query(self, promql: str, at: float) -> dict[int, float]:
        """An instant query's finite values by device; raises PrometheusError."""
        body = urllib.parse.urlencode({"query": promql, "time": f"{at:.3f}"}).encode()
        # POST: the device list in the selector may outgrow a URL.
        request = urllib.request.Request(
            f"{self.url}/api/v1/query",
            data=body,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                answer = json.load(response)
        except urllib.error.HTTPError as e:
            raise PrometheusError(f"HTTP {e.code} for {promql!r}: {_error_text(e)}") from e
        except (OSError, ValueError) as e:  # refused, timed out, or not JSON
            raise PrometheusError(str(getattr(e, "reason", e))) from e
        values = by_device(answer, promql, lambda series: finite(series["value"][1]))
        return {device: value for device, value in values.items() if value is not None}


def finite(text: str) -> float | None:
    """A sample's value as Prometheus writes it ("0.5", "NaN", "+Inf"); None unless finite."""
    value = float(text)
    return value if math.isfinite(value) else None


def by_device(answer: Any, promql: str, read: Callable[[Any], T]) -> dict[int, T]:
    """``read(series)`` for every series of a query's answer labelled with a device id.
    Raises PrometheusError for a failed query, or an answer (or a series ``read`` is given)
    of another shape."""
    try:
        if answer["status"] != "success":
            raise PrometheusError(f"{promql!r}: {answer.get('error', answer['status'])}")
        return {
            int(series["metric"][DEVICE_LABEL]): read(series)
            for series in answer["data"]["result"]
            if series["metric"].get(DEVICE_LABEL, "").isdigit()
        }
    except (KeyError, TypeError, IndexError, ValueError, AttributeError) as e:
        raise PrometheusError(f"unexpected answer to {promql!r}: {e!r}") from e


def _error_text(e: urllib.error.HTTPError) -> str:
    """Prometheus's own message for a failed query, else the HTTP reason."""
    try:
        return str(json.load(e).get("error") or e.reason)
    except (OSError, ValueError, AttributeError):
        return str(e.reason)
