"""Transfers that share nothing: each crosses its path alone (``mode.network=independent``).

A transfer waits its path's latency, as in :class:`fedsim.sim.network.FlowNetwork`, then sends
its bytes at the rate of the narrowest link of its path (and at most its own cap), whatever
else crosses the same links. This is the model of simulators that give each client a bandwidth
of its own and nothing shared: FedScale takes a client's communication time as (download size
+ upload size) / its bandwidth (``ClientMetadata.get_completion_time`` in
``fedscale/cloud/internal/client_metadata.py``). Set beside the default max-min sharing, it
shows how much of a round's time the shared links account for: where a thousand uploads fill a
server link, each takes up to a thousand times longer there than here.

A transfer is one entry in SimPy's queue, O(log N), from its start to its end; a link whose
capacity changes re-times the transfers in flight over it, O(N) once per change.

setup.py compiles this module with mypyc, as it compiles the network it subclasses.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from typing import Any

import simpy
from simpy.events import NORMAL

from fedsim.sim.network import FlowNetworkBase, _Flow


class _Retimed:
    """A transfer's end after a capacity change moved it: an event of SimPy's queue itself,
    as a flow is (see ``_Flow``); ``seq`` says which of the transfer's timings it is for."""

    __slots__ = ("_ok", "callbacks", "flow", "seq")

    def __init__(self, flow: _Flow, seq: int, callbacks: list[Callable[[_Retimed], None]]):
        self.flow = flow
        self.seq = seq
        self.callbacks: list[Callable[[_Retimed], None]] | None = callbacks
        self._ok = True


class IndependentNetwork(FlowNetworkBase):
    """Directed links with capacities (bytes/s) and latencies (s); each transfer alone on them.

    A transfer is one event in SimPy's queue, at its end: its path's latency and then its
    bytes at its rate, which is known when it leaves (nothing else changes it but a link's
    capacity, which re-times it).
    """

    def __init__(
        self,
        env: simpy.Environment,
        *,
        capacity: Mapping[Hashable, float],
        latency: Mapping[Hashable, float] | None = None,
    ):
        super().__init__(env, capacity=capacity, latency=latency)
        # Each transfer in flight and its rate, in the order they left (a capacity change
        # re-times them in that order).
        self._flying: dict[_Flow, float] = {}
        # A flow's first end is the flow itself in SimPy's queue (its seq 0); a later one, after
        # a capacity change, is a _Retimed with the flow's new seq.
        self._on_end: list[Callable[[_Flow], None]] = [self._end]
        self._on_retimed: list[Callable[[_Retimed], None]] = [self._retimed]
        self.active_flows = 0
        """Transfers in flight, their latency included."""

    def rates(self) -> dict[object, float]:
        """Rate of each transfer in flight (its rate once past its latency), keyed by its
        transfer() event or its send() callback (a debug view, O(N))."""
        return {flow.waiter(): rate for flow, rate in self._flying.items()}

    def _rate(self, flow: _Flow) -> float:
        narrowest = self.narrowest(flow.path)
        return flow.cap if flow.cap < narrowest else narrowest

    def _depart(self, flow: _Flow) -> None:
        rate = self._rate(flow)
        self._flying[flow] = rate
        self.active_flows += 1
        delay = self._delay(flow) + flow.nbytes / rate
        flow.finish = flow.start + delay
        flow.callbacks = self._on_end
        env: Any = self.env  # the flow is the event (see _Flow), which SimPy's types do not say
        env.schedule(flow, NORMAL, delay)

    def _end(self, flow: _Flow) -> None:
        if flow.seq == 0:  # else a capacity change moved its end: a _Retimed ends it
            self._done(flow)

    def _retimed(self, event: _Retimed) -> None:
        if event.seq == event.flow.seq:  # else moved again since
            self._done(event.flow)

    def _done(self, flow: _Flow) -> None:
        del self._flying[flow]
        self.active_flows -= 1
        self._complete(flow)

    def _reshare(self, link: Hashable) -> None:
        # A transfer still within its latency sends all its bytes at the new rate; one past
        # it, what is left.
        now = self.env.now
        env: Any = self.env
        for flow, rate in self._flying.items():
            if link not in flow.path:
                continue
            new = self._rate(flow)
            if new == rate:
                continue
            self._flying[flow] = new
            sending = flow.start + self._delay(flow)
            if now <= sending:
                flow.finish = sending + flow.nbytes / new
            else:
                flow.finish = now + (flow.finish - now) * rate / new
            flow.seq += 1
            env.schedule(_Retimed(flow, flow.seq, self._on_retimed), NORMAL, flow.finish - now)
