"""Heterogeneous fleets: each device's own link, compute speed and hours online.

A fleet starts from a topology whose devices carry profiles (a few kinds of hardware, a few
kinds of link) and gives each trainer its own figures:

- from a **device table** (:class:`DeviceTraits` rows: a trace such as FedScale's per-client
  compute and communication speeds, an empirical table, or the devices ``fedsim
  export-topology`` recorded), assigned to the trainers in order or drawn at random;
- from **distributions**: a log-normal factor of mean 1 and a given coefficient of variation
  on the compute speed, the link bandwidth and the latency of every trainer, around its profile
  or its table row;
- **availability**: when each device is online (:class:`Availability`), from a trace of online
  intervals or drawn as alternating online and offline periods of exponential length.

Every draw comes from a stream of its own, spawned from the fleet's seed, so the fleet is the
same under the same seed, and changing one spread leaves the others' draws as they were.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from fedsim.core.topology import HardwareProfile, Topology

ORDER = "order"
SAMPLE = "sample"
ASSIGNMENTS = (ORDER, SAMPLE)
# Children of the fleet's seed: one stream per kind of draw (the values only tell them apart).
_ASSIGN, _SPEED, _BANDWIDTH, _LATENCY, _AVAILABILITY = range(5)


class FleetError(ValueError):
    """A fleet that cannot be built; the message names what is wrong."""


@dataclass(frozen=True, kw_only=True)
class DeviceTraits:
    """What one device of a table has of its own; None keeps what its profile says.

    ``speed`` is its compute speed relative to its hardware profile (1: as profiled),
    ``bandwidth`` its link's goodput in bytes/s, ``latency`` its link's one-way latency in s,
    ``hardware`` the name of the hardware profile it has instead of its topology's.
    """

    speed: float | None = None
    bandwidth: float | None = None
    latency: float | None = None
    hardware: str | None = None

    def __post_init__(self) -> None:
        for name in ("speed", "bandwidth"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise FleetError(f"{name} must be finite and > 0, got {value}")
        if self.latency is not None and not (math.isfinite(self.latency) and self.latency >= 0):
            raise FleetError(f"latency must be finite and >= 0, got {self.latency}")


@dataclass(frozen=True, kw_only=True)
class Spreads:
    """Coefficients of variation of the log-normal factors on each trainer's figures (0: none)."""

    speed: float = 0.0
    bandwidth: float = 0.0
    latency: float = 0.0

    def __post_init__(self) -> None:
        for name in ("speed", "bandwidth", "latency"):
            cv = getattr(self, name)
            if not (math.isfinite(cv) and cv >= 0):
                raise FleetError(f"{name}: the coefficient of variation must be >= 0, got {cv}")


def lognormal_factors(rng: np.random.Generator, n: int, cv: float) -> np.ndarray:
    """``n`` log-normal factors with mean 1 and coefficient of variation ``cv`` (ones at 0).

    Log-normal because speeds are positive and skewed: a few devices are much slower than the
    typical one, none is slower than nothing. With sigma^2 = ln(1 + cv^2) and mu = -sigma^2/2
    the mean is exp(mu + sigma^2/2) = 1 and the variance (e^(sigma^2) - 1) = cv^2.
    """
    if cv <= 0:
        return np.ones(n)
    sigma2 = math.log1p(cv * cv)
    return rng.lognormal(mean=-sigma2 / 2, sigma=math.sqrt(sigma2), size=n)


def streams(seed: int | np.random.SeedSequence) -> list[np.random.Generator]:
    """The fleet's generators, one per kind of draw, from ``seed``."""
    ss = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
    return [np.random.default_rng(child) for child in ss.spawn(_AVAILABILITY + 1)]


def assignment(n_items: int, n_devices: int, how: str, rng: np.random.Generator) -> np.ndarray:
    """Which of ``n_items`` rows each of ``n_devices`` devices gets: in order, wrapping round
    when there are more devices than rows (``order``), or drawn uniformly with replacement
    (``sample``: the rows as an empirical distribution)."""
    if n_items < 1:
        raise FleetError("the table has no rows")
    if how == ORDER:
        return np.arange(n_devices) % n_items
    if how == SAMPLE:
        return rng.integers(0, n_items, size=n_devices)
    raise FleetError(f"assign must be one of {', '.join(ASSIGNMENTS)}, got {how!r}")


def heterogeneous(
    topology: Topology,
    devices: Sequence[int],
    *,
    seed: int | np.random.SeedSequence,
    table: Sequence[DeviceTraits] = (),
    assign: str = ORDER,
    spreads: Spreads = Spreads(),
    hardware: Mapping[str, HardwareProfile] | None = None,
) -> Topology:
    """``topology`` with each of ``devices`` given its own speed and link.

    Each device takes its row of ``table`` (see :func:`assignment`; none when the table is
    empty), whose ``hardware`` names a profile of ``hardware``, then log-normal factors of
    ``spreads`` multiply its speed, bandwidth and latency. Devices of ``topology`` not listed
    keep their own. A device left with its profile's link shares the profile's object.
    """
    order = sorted(devices)
    unknown = [d for d in order if d not in topology.devices]
    if unknown:
        raise FleetError(f"no devices {unknown} in topology {topology.name}")
    rng = streams(seed)
    n = len(order)
    rows = assignment(len(table), n, assign, rng[_ASSIGN]) if table else None
    speed = lognormal_factors(rng[_SPEED], n, spreads.speed)
    bandwidth = lognormal_factors(rng[_BANDWIDTH], n, spreads.bandwidth)
    latency = lognormal_factors(rng[_LATENCY], n, spreads.latency)
    profiles = hardware or {}
    out = dict(topology.devices)
    for i, dev in enumerate(order):
        d = topology.devices[dev]
        row = table[rows[i]] if rows is not None else DeviceTraits()
        hw = d.hardware
        if row.hardware is not None:
            if row.hardware not in profiles:
                raise FleetError(f"device {dev}: no hardware profile {row.hardware!r}")
            hw = profiles[row.hardware]
        bw = (d.link.bandwidth if row.bandwidth is None else row.bandwidth) * bandwidth[i]
        lat = (d.link.latency if row.latency is None else row.latency) * latency[i]
        link = d.link
        if bw != link.bandwidth or lat != link.latency:
            link = replace(link, bandwidth=float(bw), latency=float(lat))
        s = (1.0 if row.speed is None else row.speed) * float(speed[i])
        out[dev] = d.with_traits(hardware=hw, link=link, speed=s)
    return Topology(topology.name, topology.groups, out)


# -- availability ---------------------------------------------------------------------------


class Timeline:
    """When one device is online: intervals ``[on, off)``, repeating every ``period`` s if set.

    ``edges`` is ``[on_0, off_0, on_1, off_1, ...]``, ascending, each interval non-empty and
    apart from the next. Outside the intervals the device is offline; with a period, time
    ``t`` reads the trace at ``t mod period`` (FedScale's traces repeat the same way).
    """

    __slots__ = ("edges", "period")

    def __init__(self, edges: Sequence[float] | np.ndarray, period: float | None = None) -> None:
        e = np.asarray(edges, dtype=np.float64)
        if e.ndim != 1 or len(e) % 2:
            raise FleetError("an availability timeline needs pairs of online and offline times")
        if not np.isfinite(e).all() or (len(e) and e[0] < 0):
            raise FleetError("availability times must be finite and >= 0")
        ons, offs = e[0::2], e[1::2]
        if not (offs > ons).all():
            raise FleetError("an online interval must end after it starts")
        if not (ons[1:] > offs[:-1]).all():
            raise FleetError("online intervals must be in order and apart (merge touching ones)")
        if period is not None:
            if not (math.isfinite(period) and period > 0):
                raise FleetError(f"the period must be finite and > 0, got {period}")
            if len(e) and e[-1] > period:
                raise FleetError(f"an online interval ends at {e[-1]:g}, after the period")
        self.edges = e
        self.period = period

    def online(self, t: float) -> bool:
        """Whether the device is online at ``t``."""
        if self.period is not None:
            t = t % self.period
        return int(np.searchsorted(self.edges, t, side="right")) % 2 == 1

    def next_offline(self, t: float) -> float:
        """The first time from ``t`` on at which the device is offline (``inf``: never)."""
        if not self.online(t):
            return t
        if self.period is None:
            return float(self.edges[int(np.searchsorted(self.edges, t, side="right"))])
        base = math.floor(t / self.period) * self.period
        end = float(self.edges[int(np.searchsorted(self.edges, t - base, side="right"))])
        if end < self.period or self.edges[0] > 0:
            return base + end
        # Online up to the period's end and again from the next one's start: one interval.
        if len(self.edges) == 2:
            return math.inf
        return base + self.period + float(self.edges[1])

    def next_online(self, t: float) -> float:
        """The first time from ``t`` on at which the device is online (``inf``: never again)."""
        if self.online(t):
            return t
        if self.period is None:
            i = int(np.searchsorted(self.edges, t, side="right"))
            return float(self.edges[i]) if i < len(self.edges) else math.inf
        if not len(self.edges):
            return math.inf
        # The offset read as :meth:`online` reads it, so that edges[i] is an online edge.
        offset = t % self.period
        i = int(np.searchsorted(self.edges, offset, side="right"))
        ahead = self.edges[i] if i < len(self.edges) else self.period + self.edges[0]
        on = t + (float(ahead) - offset)
        # The sum rounds, and online() reads it modulo the period, which may then fall an ulp
        # short of the edge: step up to the first float it reads as online.
        while not self.online(on):
            on = math.nextafter(on, math.inf)
        return on

    def fraction_online(self) -> float:
        """The share of the period (or of the span up to the last interval's end) online."""
        if not len(self.edges):
            return 0.0
        span = self.period if self.period is not None else float(self.edges[-1])
        return float((self.edges[1::2] - self.edges[0::2]).sum()) / span


class Availability:
    """When each device is online. A device without a timeline is online throughout."""

    def __init__(self, timelines: Mapping[int, Timeline]) -> None:
        self.timelines = dict(timelines)

    def online(self, device: int, t: float) -> bool:
        tl = self.timelines.get(device)
        return tl is None or tl.online(t)

    def next_online(self, device: int, t: float) -> float:
        """The first time from ``t`` on at which ``device`` is online (``inf``: never again)."""
        tl = self.timelines.get(device)
        return t if tl is None else tl.next_online(t)

    def offline(self, device: int, start: float, end: float | None = None) -> bool:
        """Whether ``device`` is offline at ``start`` or at any time before ``end``."""
        tl = self.timelines.get(device)
        if tl is None:
            return False
        if end is None or end <= start:
            return not tl.online(start)
        return tl.next_offline(start) < end


def assign_timelines(
    timelines: Sequence[Timeline],
    devices: Sequence[int],
    *,
    seed: int | np.random.SeedSequence,
    assign: str = ORDER,
) -> Availability:
    """``devices`` (ascending) given ``timelines`` as :func:`assignment` says; timelines are
    shared, not copied, when devices outnumber them."""
    order = sorted(devices)
    rows = assignment(len(timelines), len(order), assign, streams(seed)[_ASSIGN])
    return Availability({dev: timelines[int(r)] for dev, r in zip(order, rows, strict=True)})


def _joined(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Edges of the intervals ``[starts[i], ends[i])``, in order, those that touch joined (an
    offline time too short for floating point to tell apart is no time offline)."""
    apart = np.concatenate(([True], starts[1:] > ends[:-1]))
    last = np.concatenate((apart[1:], [True]))
    return np.column_stack((starts[apart], ends[last])).ravel()


def alternating(
    devices: Sequence[int],
    *,
    seed: int | np.random.SeedSequence,
    mean_online_s: float,
    mean_offline_s: float,
    period_s: float,
) -> Availability:
    """Each device online and offline in turn for exponential times of the given means.

    A device starts online with the long-run probability ``mean_online / (mean_online +
    mean_offline)``; its timeline covers ``period_s`` and then repeats, as a trace does.
    """
    for name, value in (
        ("mean_online_s", mean_online_s),
        ("mean_offline_s", mean_offline_s),
        ("period_s", period_s),
    ):
        if not (math.isfinite(value) and value > 0):
            raise FleetError(f"{name} must be finite and > 0, got {value}")
    rng = streams(seed)[_AVAILABILITY]
    p_online = mean_online_s / (mean_online_s + mean_offline_s)
    # Enough periods in one draw to cover period_s nearly always; more are drawn if not.
    pairs = int(2 * period_s / (mean_online_s + mean_offline_s)) + 8
    timelines = {}
    for dev in sorted(devices):
        first_online = bool(rng.random() < p_online)
        lengths = np.empty(0)
        while lengths.sum() < period_s:
            on = rng.exponential(mean_online_s, pairs)
            off = rng.exponential(mean_offline_s, pairs)
            both = np.column_stack((on, off) if first_online else (off, on)).ravel()
            lengths = np.concatenate((lengths, both))
        ends = np.minimum(np.cumsum(lengths), period_s)
        starts = np.concatenate(([0.0], ends[:-1]))
        starts, ends = starts[0 if first_online else 1 :: 2], ends[0 if first_online else 1 :: 2]
        keep = ends > starts
        timelines[dev] = Timeline(_joined(starts[keep], ends[keep]), period=period_s)
    return Availability(timelines)
