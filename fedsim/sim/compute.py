"""How long compute takes on a simulated device.

A step costs max(arithmetic, memory traffic) - the roofline's two ceilings - plus disk writes:
seconds = max(FLOPs / (peak x efficiency), bytes / memory bandwidth) + disk bytes / disk
bandwidth, scaled by a seeded jitter factor. Training a model for which the device's measured
profile has a step model takes, per epoch, batches x overhead + samples x per-sample cost in
place of the FLOPs term (``fedsim.core.calibration``); evaluating a model (``Cost.evaluation``)
is timed so by the profile's evaluation step model of it. A measured profile's serialization and
load throughputs time the update a device serializes and the model it loads.

A device held to a CFS quota (``Device.cpu_quota``, as an emulated device is) does not run at
its average speed all the time: :class:`QuotaClock` says when a burst of its work ends.
"""

from __future__ import annotations

import math

import numpy as np

from fedsim.core.runtime import Cost
from fedsim.core.topology import CpuQuota, HardwareProfile


def compute_seconds(cost: Cost, hw: HardwareProfile) -> float:
    """The modelled time of ``cost`` on ``hw``, without jitter."""
    steps = hw.eval_steps if cost.evaluation else hw.steps
    step = steps.get(cost.model) if cost.model else None
    if step is not None and cost.samples > 0:
        arithmetic = cost.epochs * step.epoch_seconds(cost.samples, cost.batch_size)
    else:
        arithmetic = cost.flops / hw.effective_flops
    arithmetic += cost.post_flops / hw.effective_flops
    memory = cost.memory_bytes / hw.memory_bandwidth
    return max(arithmetic, memory) + cost.disk_bytes / hw.disk_bandwidth


def load_seconds(nbytes: int, hw: HardwareProfile) -> float:
    """Loading (deserializing) ``nbytes`` of a model on ``hw``: 0 without a measured rate."""
    return nbytes / hw.load_bytes_per_s if hw.load_bytes_per_s else 0.0


def serialize_seconds(nbytes: int, hw: HardwareProfile) -> float:
    """Serializing ``nbytes`` of an update on ``hw``: 0 without a measured rate."""
    return nbytes / hw.serialize_bytes_per_s if hw.serialize_bytes_per_s else 0.0


def jitter_factor(rng: np.random.Generator, cv: float) -> float:
    """A log-normal factor with mean 1 and coefficient of variation ``cv`` (1.0 when cv is 0).

    Log-normal because run times are positive and skewed to the right: a step can take much
    longer than usual (contention, thermal throttling) but never less than nothing.
    """
    if cv <= 0:
        return 1.0
    sigma2 = math.log1p(cv * cv)
    return float(rng.lognormal(mean=-sigma2 / 2, sigma=math.sqrt(sigma2)))


class QuotaClock:
    """The processor of one device under a CFS bandwidth limit, as Linux runs it.

    The kernel refills a group's quota (``cores x period_s`` seconds of processor) at every
    period boundary and throttles the group from the moment it has used it until the next
    boundary; unused quota does not carry over (``cfs_burst_us`` is 0 by default); the
    boundaries keep one grid while the group idles (kernel/sched/fair.c,
    ``start_cfs_bandwidth`` forwards the period timer by whole periods). So a short burst runs
    at a whole core's speed when the period still has quota, and waits for the next period
    when it has none: a round's work of 25 ms under a quota of 10 ms per 100 ms takes
    three periods, not 250 ms. One thread is modelled (the agent trains on one), so a period
    gives at most ``period_s`` of work whatever the quota; the grid starts at time 0, since
    where the emulation's grid lies is not known. :meth:`run` times a burst of a device that
    has a core to itself, after the bursts asked for before it; :meth:`room`,
    :meth:`next_period` and :meth:`spend` let a caller run the burst step by step, as a device
    that shares its host's cores with others must (``CpuQuota.host_cores``).
    """

    def __init__(self, quota: CpuQuota) -> None:
        self.period_s = quota.period_s
        self.quota_s = quota.cores * quota.period_s
        self._period = 0  # the period in which quota was last used
        self._used = 0.0  # quota used in that period
        self._free_at = 0.0  # when the last burst ended

    def run(self, now: float, work: float) -> float:
        """When ``work`` seconds of a whole core's processor, asked for at ``now``, are done
        (after the bursts asked for before it)."""
        if not (math.isfinite(work) and work >= 0):
            raise ValueError(f"work: must be finite and >= 0 seconds, got {work}")
        period, per_period = self.period_s, min(self.quota_s, self.period_s)
        t = max(now, self._free_at)
        k = math.floor(t / period)
        used = self._used if k == self._period else 0.0
        while True:
            boundary = (k + 1) * period
            room = min(self.quota_s - used, boundary - t)
            if work <= room:
                t, used = t + work, used + work
                break
            # What the period still allows runs; the rest waits for the next boundary.
            work -= max(room, 0.0)
            t, k, used = boundary, k + 1, 0.0
            whole = math.ceil(work / per_period) - 1  # periods the rest fills entirely
            if whole > 0:
                t, k, work = t + whole * period, k + whole, work - whole * per_period
        self._period, self._used, self._free_at = k, used, t
        return t

    # One step at a time, for a device that also waits for one of its host's cores
    # (``SimTransport``): how much it may run from ``now``, and what it ran.

    def room(self, now: float) -> float:
        """Seconds of work the device may run from ``now`` before the period's quota runs out
        or the period ends (0 when throttled until :meth:`next_period`)."""
        k = self._index(now)
        used = self._used if k == self._period else 0.0
        return max(0.0, min(self.quota_s - used, (k + 1) * self.period_s - now))

    def next_period(self, now: float) -> float:
        """When the period after the one holding ``now`` begins (its quota full again)."""
        return (self._index(now) + 1) * self.period_s

    def spend(self, start: float, seconds: float) -> None:
        """Count ``seconds`` of work run from ``start`` (within :meth:`room`)."""
        k = self._index(start)
        if k != self._period:
            self._period, self._used = k, 0.0
        self._used += seconds
        self._free_at = max(self._free_at, start + seconds)

    def _index(self, t: float) -> int:
        # A time a rounding error short of a boundary is at it: the next period's quota.
        return math.floor(t / self.period_s + 1e-9)
