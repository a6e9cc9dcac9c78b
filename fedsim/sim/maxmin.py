"""Reference max-min fair sharing, flow by flow, and a naive flow simulator built on it.

Both are deliberately plain: tests check FlowNetwork against them, and the benchmark uses
NaiveFlowNetwork (every event recomputes every rate and advances every flow) as its baseline.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import simpy

from fedsim.sim.network import FlowNetworkBase

if TYPE_CHECKING:
    from fedsim.sim.network import _Flow

# Constraints this close are hit at the same level of progressive filling.
_TIE = 1 + 1e-12


def max_min_rates(
    paths: Sequence[tuple[Hashable, ...]],
    capacity: Mapping[Hashable, float],
    caps: Sequence[float],
) -> list[float]:
    """Max-min fair rates of flows over ``paths``, each at most its entry in ``caps``.

    Progressive filling: all unfrozen rates rise together; a flow freezes when one of its
    links is full or it reaches its cap.
    """
    index: dict[Hashable, int] = {}
    flows, links = [], []
    for i, path in enumerate(paths):
        for link in path:
            flows.append(i)
            links.append(index.setdefault(link, len(index)))
    flow_of, link_of = np.array(flows, dtype=int), np.array(links, dtype=int)
    left = np.array([capacity[link] for link in index], dtype=float)
    cap = np.asarray(caps, dtype=float)
    rates = np.zeros(len(paths))
    frozen = np.zeros(len(paths), dtype=bool)
    level = 0.0
    while not frozen.all():
        weight = np.bincount(link_of[~frozen[flow_of]], minlength=len(index))
        share = np.full(len(index), math.inf)
        np.divide(left, weight, out=share, where=weight > 0)
        step = min(share.min(initial=math.inf), cap[~frozen].min() - level)
        level += step
        full = (weight > 0) & (share <= step * _TIE)
        left -= step * weight
        blocked = np.zeros(len(paths), dtype=bool)
        blocked[flow_of[full[link_of]]] = True
        capped = cap <= level * _TIE
        newly = ~frozen & (capped | blocked)
        rates[newly] = np.where(capped[newly], cap[newly], level)
        frozen |= newly
    return rates.tolist()


class NaiveFlowNetwork(FlowNetworkBase):
    """FlowNetwork's behaviour at O(N) per event: recompute all rates, advance all flows."""

    def __init__(
        self,
        env: simpy.Environment,
        *,
        capacity: Mapping[Hashable, float],
        latency: Mapping[Hashable, float] | None = None,
    ):
        super().__init__(env, capacity=capacity, latency=latency)
        self._left: dict[_Flow, float] = {}  # bytes left per active flow
        self._rate: dict[_Flow, float] = {}
        self._since = env.now
        self._generation = 0

    @property
    def active_flows(self) -> int:
        return len(self._left)

    def rates(self) -> dict[object, float]:
        return {flow.waiter(): rate for flow, rate in self._rate.items()}

    def _admit(self, flow: _Flow) -> None:
        self._advance()
        self._left[flow] = flow.nbytes
        self._reschedule()

    def _reshare(self, link: Hashable) -> None:
        self._advance()
        self._reschedule()

    def _wake(self, generation: int) -> None:
        if generation != self._generation:
            return
        self._advance()
        now = self.env.now
        finished = [
            f for f, left in self._left.items() if self._is_due(f, left, self._rate[f], now)
        ]
        for flow in finished:
            del self._left[flow]
        self._reschedule()
        for flow in finished:
            self._complete(flow)

    def _advance(self) -> None:
        elapsed = self.env.now - self._since
        self._since = self.env.now
        for flow, rate in self._rate.items():
            self._left[flow] -= rate * elapsed

    def _reschedule(self) -> None:
        flows = list(self._left)
        rates = max_min_rates([f.path for f in flows], self._capacity, [f.cap for f in flows])
        self._rate = dict(zip(flows, rates, strict=True))
        self._generation += 1
        if flows:
            soonest = min(self._left[f] / self._rate[f] for f in flows)
            generation = self._generation
            timeout = self.env.timeout(max(soonest, 0.0))
            timeout.callbacks.append(lambda _: self._wake(generation))
