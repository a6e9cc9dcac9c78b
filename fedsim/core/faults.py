"""Faults a run injects: devices that drop out or go away, links that degrade.

One plan for every runtime. The simulator applies it to its modelled devices
(``fedsim.sim.runtime``); the real runtime marks dropped tasks for the agents to discard
(``fedsim.real.transport``) and stops and restarts agent processes for outages
(``fedsim.real.faults``). Times are seconds of the run's clock: simulated time, or wall time
since the transport started.

A device that drops out or is offline says nothing: its task simply never returns, as a crashed
or disconnected device behaves, and the server learns of it only through its round deadline.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fedsim.core.fleet import Availability

# Marks the dropout stream among the children of a run's seed (any constant would do).
_DROPOUT_STREAM = 0xD809


@dataclass(frozen=True, kw_only=True)
class Outage:
    """Device ``device`` is unreachable in ``[start, end)`` (seconds of the run's clock)."""

    device: int
    start: float
    end: float = float("inf")

    def __post_init__(self) -> None:
        if not 0 <= self.start < self.end:
            raise ValueError(f"outage of device {self.device}: need 0 <= start < end")

    def overlaps(self, start: float, end: float) -> bool:
        return (
            self.start < end and start < self.end if end > start else self.start <= start < self.end
        )


@dataclass(frozen=True, kw_only=True)
class LinkChange:
    """Every link of network profile ``network`` runs at ``factor`` of its bandwidth in
    ``[start, end)``: a degradation when factor < 1."""

    network: str
    start: float
    end: float = float("inf")
    factor: float

    def __post_init__(self) -> None:
        if not 0 <= self.start < self.end:
            raise ValueError(f"link change of {self.network}: need 0 <= start < end")
        if not self.factor > 0:
            raise ValueError(f"link change of {self.network}: factor must be > 0")


@dataclass(frozen=True, kw_only=True)
class FaultPlan:
    """What goes wrong in a run.

    ``dropout`` is the probability that a device given a training task drops out before it
    returns its update: one draw per training task, in the order tasks are submitted, from
    :meth:`dropout_draws`. ``availability`` is the fleet's hours online (a trace, or drawn):
    a device outside them is offline as in an outage, never selected, and a task it has when
    it goes offline never returns.
    """

    dropout: float = 0.0
    outages: Sequence[Outage] = ()
    link_changes: Sequence[LinkChange] = ()
    availability: Availability | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    def offline(self, device: int, start: float, end: float | None = None) -> bool:
        """Whether ``device`` is unreachable at ``start`` or at any time up to ``end``."""
        stop = start if end is None else end
        if self.availability is not None and self.availability.offline(device, start, end):
            return True
        # No generator to make when there are no outages, as in most runs (three asks a task).
        return bool(self.outages) and any(
            o.device == device and o.overlaps(start, stop) for o in self.outages
        )

    def next_online(self, device: int, t: float) -> float:
        """The first time from ``t`` on at which ``device`` is reachable (``inf``: never again):
        within its availability and outside its outages."""
        while math.isfinite(t):
            if self.availability is not None:
                t = self.availability.next_online(device, t)
            ends = [o.end for o in self.outages if o.device == device and o.start <= t < o.end]
            if not ends:
                return t
            t = max(ends)  # inf for an outage that never ends
        return t

    @staticmethod
    def dropout_draws(seed: np.random.SeedSequence | int) -> np.random.Generator:
        """The generator a transport seeded with ``seed`` draws its dropouts from.

        A stream of its own, derived from the seed without consuming it: the draws do not
        depend on how many other random numbers a runtime takes (the simulator's jitter), so
        every runtime drops the same tasks under the same seed.
        """
        ss = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
        own = np.random.SeedSequence(ss.entropy, spawn_key=(*ss.spawn_key, _DROPOUT_STREAM))
        return np.random.default_rng(own)
