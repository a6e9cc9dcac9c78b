"""Flow-level network model: transfers share directed links max-min fairly (SimGrid's model).

A transfer waits its path's latency, then its bytes flow at a rate that is recomputed whenever a
flow starts or ends. An update costs O(K log K + K x L) for K classes over L shared links, and
O(log N) for the N flows:

- flows with the same path and per-flow cap form a *bundle* (they always get the same rate);
- a link used by one bundle only is *private*: it caps that bundle at capacity / flows;
- bundles with the same shared links and the same cap form a *class*, and progressive filling
  runs over classes weighted by their flow counts;
- each class has a virtual clock (bytes one of its flows has received), each bundle an offset
  into it, each flow a virtual finish in a heap per bundle; a rate change only changes a slope.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from operator import attrgetter

import simpy

# A flow is done once what is left is below this share of its size: rounding must not split
# flows that end together into two events, nor leave a sliver to be sent later.
REL_EPS = 1e-9
# Constraints this close are hit at the same level of progressive filling.
_TIE = 1 + 1e-12


@dataclass(frozen=True)
class FlowRecord:
    """A finished transfer: when transfer() was called, when its last byte arrived, its size."""

    start: float
    end: float
    nbytes: float


class _Flow:
    __slots__ = ("cap", "done", "nbytes", "path", "start")

    def __init__(self, path: tuple, nbytes: float, cap: float, start: float, done: simpy.Event):
        self.path = path
        self.nbytes = nbytes
        self.cap = cap
        self.start = start
        self.done = done


class FlowNetworkBase:
    """What every flow model shares: validation, latency, records and counters."""

    def __init__(
        self,
        env: simpy.Environment,
        *,
        capacity: Mapping[Hashable, float],
        latency: Mapping[Hashable, float] | None = None,
    ):
        latency = dict(latency or {})
        if any(not c > 0 for c in capacity.values()):
            raise ValueError("link capacities must be positive")
        if set(latency) - set(capacity):
            raise ValueError(f"latency for unknown links: {set(latency) - set(capacity)}")
        if any(not d >= 0 for d in latency.values()):
            raise ValueError("link latencies must be non-negative")
        self.env = env
        self._capacity = dict(capacity)
        self._latency = latency
        self.bytes_delivered = 0.0
        """Bytes of finished transfers that crossed at least one link."""

    def transfer(
        self, path: Sequence[Hashable], nbytes: float, *, cap: float = math.inf
    ) -> simpy.Event:
        """Send ``nbytes`` over the directed links of ``path`` at most at ``cap`` bytes/s.

        The event's value is a FlowRecord. An empty path is a transfer within one host.
        """
        path = tuple(path)
        if not nbytes >= 0:
            raise ValueError(f"nbytes must be non-negative, got {nbytes}")
        if not cap > 0:
            raise ValueError(f"cap must be positive, got {cap}")
        unknown = [link for link in path if link not in self._capacity]
        if unknown:
            raise ValueError(f"unknown links {unknown}")
        if len(set(path)) != len(path):
            raise ValueError(f"path crosses a link twice: {path}")
        done = self.env.event()
        flow = _Flow(path, float(nbytes), float(cap), self.env.now, done)
        if not path:
            done.succeed(FlowRecord(flow.start, flow.start, flow.nbytes))
            return done
        delay = sum(self._latency.get(link, 0.0) for link in path)
        self.env.timeout(delay).callbacks.append(lambda _: self._arrive(flow))
        return done

    def capacity(self, link: Hashable) -> float:
        """The link's capacity now, in bytes/s."""
        return self._capacity[link]

    def set_capacity(self, link: Hashable, capacity: float) -> None:
        """Change ``link``'s capacity from now on (a link that degrades or recovers)."""
        if link not in self._capacity:
            raise ValueError(f"unknown link {link!r}")
        if not capacity > 0:
            raise ValueError(f"link capacities must be positive, got {capacity}")
        self._capacity[link] = capacity
        self._reshare(link)

    def _reshare(self, link: Hashable) -> None:
        raise NotImplementedError

    def _arrive(self, flow: _Flow) -> None:
        if flow.nbytes == 0:
            self._complete(flow)
        else:
            self._admit(flow)

    def _complete(self, flow: _Flow) -> None:
        self.bytes_delivered += flow.nbytes
        flow.done.succeed(FlowRecord(flow.start, self.env.now, flow.nbytes))

    @staticmethod
    def _due(flow: _Flow, remaining: float, rate: float, now: float) -> bool:
        # The second test stops a sliver too small to move the clock from looping forever.
        return remaining <= REL_EPS * flow.nbytes or now + remaining / rate <= now

    def _admit(self, flow: _Flow) -> None:
        raise NotImplementedError


class _Class:
    """Bundles with the same shared links and cap; ``key`` is (frozenset of links, cap)."""

    __slots__ = ("bundles", "cap", "frozen", "heap", "key", "rate", "shared", "t0", "v0", "weight")

    def __init__(self, key: tuple[frozenset, float], now: float):
        self.key = key
        self.shared, self.cap = key
        self.frozen = False  # scratch for _fill
        self.heap: list[tuple[float, int, _Bundle]] = []  # (bundle's next finish, entry id)
        self.bundles = 0
        self.weight = 0  # flows in the class
        self.rate = 0.0
        self.v0 = 0.0
        self.t0 = now

    def vclock(self, now: float) -> float:
        return self.v0 + self.rate * (now - self.t0)


class _Bundle:
    """Flows with one path and per-flow cap; their finishes count on the bundle's clock."""

    __slots__ = ("cap", "cls", "counted", "entry", "flows", "n", "offset", "path")

    def __init__(self, path: tuple, cap: float):
        self.path = path
        self.cap = cap
        self.flows: list[tuple[float, int, _Flow]] = []
        self.n = 0
        self.cls: _Class | None = None
        self.offset = 0.0  # bundle clock = class clock + offset
        self.counted = 0  # flows counted in cls.weight
        self.entry = -1  # id of the live entry in cls.heap; others are stale


class FlowNetwork(FlowNetworkBase):
    """Directed links with capacities (bytes/s) and latencies (s), shared max-min fairly."""

    def __init__(
        self,
        env: simpy.Environment,
        *,
        capacity: Mapping[Hashable, float],
        latency: Mapping[Hashable, float] | None = None,
    ):
        super().__init__(env, capacity=capacity, latency=latency)
        self._bundles: dict[tuple, _Bundle] = {}
        # Bundles per link, in a dict rather than a set: the order in which bundles are placed
        # decides the order of same-instant completions, so it must not depend on object ids.
        self._users: dict[Hashable, dict[_Bundle, None]] = {link: {} for link in self._capacity}
        self._classes: dict[tuple, _Class] = {}
        self._ids = itertools.count()
        self._generation = 0  # timeouts of older generations are stale
        self.active_flows = 0
        """Flows past their latency that have bytes left to send."""

    def rates(self) -> dict[simpy.Event, float]:
        """Current rate of each active flow, keyed by its transfer() event (a debug view, O(N))."""
        return {f.done: b.cls.rate for b in self._bundles.values() for _, _, f in b.flows}

    def _admit(self, flow: _Flow) -> None:
        now = self.env.now
        key = (flow.path, flow.cap)
        bundle = self._bundles.get(key)
        dirty = {}
        if bundle is None:
            bundle = self._bundles[key] = _Bundle(flow.path, flow.cap)
            for link in flow.path:
                users = self._users[link]
                users[bundle] = None
                if len(users) == 2:  # the former sole user loses a private link
                    dirty.update(dict.fromkeys(users))
        finish = self._bundle_clock(bundle, now) + flow.nbytes
        heapq.heappush(bundle.flows, (finish, next(self._ids), flow))
        bundle.n += 1
        self.active_flows += 1
        dirty[bundle] = None
        self._update(dirty, now)

    def _reshare(self, link: Hashable) -> None:
        # Classes keep their clocks up to now before rates change; a bundle alone on the link
        # changes its private cap, so it is placed again.
        self._update(dict.fromkeys(self._users[link]), self.env.now)

    def _wake(self, generation: int) -> None:
        if generation != self._generation:
            return
        now = self.env.now
        finished: list[_Flow] = []
        dirty: dict[_Bundle, None] = {}
        for cls in self._classes.values():
            clock = cls.vclock(now)
            heap = cls.heap
            while heap:
                _, entry, bundle = heap[0]
                if entry != bundle.entry:
                    heapq.heappop(heap)
                    continue
                bundle_clock = clock + bundle.offset
                flows = bundle.flows
                before = len(finished)
                while flows and self._due(flows[0][2], flows[0][0] - bundle_clock, cls.rate, now):
                    finished.append(heapq.heappop(flows)[2])
                if len(finished) == before:
                    break  # the heap is ordered by what is left, so nothing else is due
                heapq.heappop(heap)
                bundle.n -= len(finished) - before
                dirty[bundle] = None
        for bundle in list(dirty):
            if bundle.n == 0:
                del self._bundles[(bundle.path, bundle.cap)]
                for link in bundle.path:
                    users = self._users[link]
                    users.pop(bundle, None)
                    if len(users) == 1:  # the last user gains a private link
                        dirty.update(dict.fromkeys(users))
        self.active_flows -= len(finished)
        self._update(dirty, now)
        for flow in finished:
            self._complete(flow)

    def _update(self, dirty: dict[_Bundle, None], now: float) -> None:
        for bundle in dirty:
            self._place(bundle, now)
        self._fill(now)
        self._schedule(now)

    def _bundle_clock(self, bundle: _Bundle, now: float) -> float:
        return 0.0 if bundle.cls is None else bundle.cls.vclock(now) + bundle.offset

    def _place(self, bundle: _Bundle, now: float) -> None:
        """Put the bundle in the class its links and count call for; re-key its heap entry."""
        if bundle.n == 0:
            self._detach(bundle)
            return
        shared = []
        cap = bundle.cap
        for link in bundle.path:
            if len(self._users[link]) > 1:
                shared.append(link)
            else:
                cap = min(cap, self._capacity[link] / bundle.n)
        key = (frozenset(shared), cap)
        cls = bundle.cls
        if cls is None or cls.key != key:
            clock = self._bundle_clock(bundle, now)
            self._detach(bundle)
            cls = self._classes.get(key)
            if cls is None:
                cls = self._classes[key] = _Class(key, now)
            bundle.cls = cls
            cls.bundles += 1
            bundle.offset = clock - cls.vclock(now)
        cls.weight += bundle.n - bundle.counted
        bundle.counted = bundle.n
        bundle.entry = next(self._ids)
        heapq.heappush(cls.heap, (bundle.flows[0][0] - bundle.offset, bundle.entry, bundle))

    def _detach(self, bundle: _Bundle) -> None:
        cls = bundle.cls
        if cls is None:
            return
        cls.weight -= bundle.counted
        cls.bundles -= 1
        if cls.bundles == 0:
            del self._classes[cls.key]
        bundle.cls = None
        bundle.counted = 0
        bundle.entry = -1

    def _fill(self, now: float) -> None:
        """Progressive filling over classes: raise all rates together, freeze at constraints.

        Caps are visited in increasing order and each class freezes once, so the cost is
        O(K log K + K x L) for K classes over L shared links, not O(K^2).
        """
        by_cap = sorted(self._classes.values(), key=attrgetter("cap"))
        links: dict[Hashable, list] = {}  # link -> [capacity left, flows not frozen, classes]
        for cls in by_cap:
            cls.frozen = False
            for link in cls.shared:
                state = links.setdefault(link, [self._capacity[link], 0, []])
                state[1] += cls.weight
                state[2].append(cls)

        def freeze(cls: _Class, rate: float) -> None:
            cls.frozen = True
            self._set_rate(cls, rate, now)
            for link in cls.shared:
                links[link][1] -= cls.weight

        level = 0.0
        next_cap = 0
        while True:
            while next_cap < len(by_cap) and by_cap[next_cap].frozen:
                next_cap += 1
            if next_cap == len(by_cap):
                return
            step = by_cap[next_cap].cap - level
            for left, weight, _ in links.values():
                if weight:
                    step = min(step, left / weight)
            level += step
            full = []
            for state in links.values():
                if state[1]:
                    if state[0] / state[1] <= step * _TIE:
                        full.append(state[2])
                    state[0] -= step * state[1]
            while next_cap < len(by_cap) and by_cap[next_cap].cap <= level * _TIE:
                if not by_cap[next_cap].frozen:
                    freeze(by_cap[next_cap], by_cap[next_cap].cap)
                next_cap += 1
            for users in full:
                for cls in users:
                    if not cls.frozen:
                        freeze(cls, level)

    @staticmethod
    def _set_rate(cls: _Class, rate: float, now: float) -> None:
        if rate != cls.rate:
            cls.v0 = cls.vclock(now)
            cls.t0 = now
            cls.rate = rate

    def _schedule(self, now: float) -> None:
        self._generation += 1
        soonest = math.inf
        for cls in self._classes.values():
            heap = cls.heap
            while heap[0][1] != heap[0][2].entry:
                heapq.heappop(heap)
            if len(heap) > 2 * cls.bundles + 32:  # drop stale entries before they pile up
                cls.heap = heap = [e for e in heap if e[1] == e[2].entry]
                heapq.heapify(heap)
            soonest = min(soonest, (heap[0][0] - cls.vclock(now)) / cls.rate)
        if soonest < math.inf:
            generation = self._generation
            timeout = self.env.timeout(max(soonest, 0.0))
            timeout.callbacks.append(lambda _: self._wake(generation))
