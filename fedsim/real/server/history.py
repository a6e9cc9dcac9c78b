"""Each device's recent resource readings, kept in memory for the dashboard's charts.

Heartbeats carry a device's CPU, memory, bandwidth, GPU, disk and network traffic and whether it
is working; the registry keeps
only the latest. This keeps a bounded window of them per device, for the monitoring view when no
Prometheus is configured: at most one sample per ``interval_s`` (heartbeats may come faster) and
at most ``samples`` per device, in preallocated arrays, so memory is fixed per device (about
63 KB at the default 1440 samples) whatever the heartbeat rate. History is not persisted: a
restarted server starts empty, as a fresh Prometheus would.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

# The fields the dashboard charts, in column order; each but bandwidth is a heartbeat's figure
# of that name (the agent's LoadMeter).
FIELDS = (
    "cpu_busy",
    "memory_available",
    "bandwidth",
    "busy",
    "gpu_util",
    "disk_read",
    "disk_write",
    "net_receive",
    "net_transmit",
)


def reading(resources: Mapping[str, Any]) -> tuple[float, ...]:
    """A heartbeat's resources as the chart's fields; NaN where the device did not say.
    ``bandwidth`` is the slower direction the bandwidth probe measured."""

    def number(key: str) -> float:
        value = resources.get(key)
        return float(value) if isinstance(value, (int, float)) else math.nan

    directions = [v for v in (number("bandwidth_up"), number("bandwidth_down")) if v == v]
    bandwidth = min(directions) if directions else math.nan
    return tuple(bandwidth if name == "bandwidth" else number(name) for name in FIELDS)


class _Ring:
    __slots__ = ("count", "head", "t", "values")

    def __init__(self, samples: int) -> None:
        self.t = np.zeros(samples, dtype=np.float64)
        self.values = np.full((samples, len(FIELDS)), np.nan, dtype=np.float32)
        self.head = 0  # where the next sample goes
        self.count = 0

    def append(self, t: float, values: tuple[float, ...]) -> None:
        self.t[self.head] = t
        self.values[self.head] = values
        self.head = (self.head + 1) % len(self.t)
        self.count = min(self.count + 1, len(self.t))

    def last_t(self) -> float:
        return -math.inf if not self.count else float(self.t[self.head - 1])

    def since(self, start: float) -> tuple[np.ndarray, np.ndarray]:
        """Samples at or after ``start``, oldest first."""
        order = (np.arange(self.count) + self.head - self.count) % len(self.t)
        t, values = self.t[order], self.values[order]
        keep = t >= start
        return t[keep], values[keep]


class HeartbeatHistory:
    """Recent readings per device; safe to use from any thread."""

    def __init__(self, *, samples: int = 1440, interval_s: float = 5.0) -> None:
        if samples < 1:
            raise ValueError(f"samples must be >= 1, got {samples}")
        if interval_s < 0:
            raise ValueError(f"interval_s must be >= 0, got {interval_s}")
        self.samples = samples
        self.interval_s = interval_s
        self._rings: dict[int, _Ring] = {}
        self._lock = threading.Lock()

    def record(self, device: int, at: float, resources: Mapping[str, Any]) -> None:
        """Keep ``device``'s reading at Unix time ``at``, unless one was kept within
        ``interval_s`` before it."""
        with self._lock:
            ring = self._rings.get(device)
            if ring is None:
                ring = self._rings[device] = _Ring(self.samples)
            if at - ring.last_t() >= self.interval_s:  # most heartbeats stop here
                ring.append(at, reading(resources))

    def forget(self, device: int) -> None:
        with self._lock:
            self._rings.pop(device, None)

    def series(self, devices: Iterable[int], *, since: float) -> dict[int, dict[str, list]]:
        """``{device: {"t": [...], field: [...]}}`` of the readings at or after ``since``
        (Unix seconds), oldest first; a field the device did not report is None."""
        out: dict[int, dict[str, list]] = {}
        with self._lock:
            picked = {d: self._rings[d].since(since) for d in devices if d in self._rings}
        for device, (t, values) in picked.items():
            series: dict[str, list] = {"t": [round(float(x), 3) for x in t]}
            for i, name in enumerate(FIELDS):
                series[name] = [None if v != v else float(v) for v in values[:, i].tolist()]
            out[device] = series
        return out
