"""Flow-level network model: transfers share directed links max-min fairly (SimGrid's model).

A transfer waits its path's latency, then its bytes flow at a rate that is recomputed whenever a
flow starts or ends. Flows are grouped so that an update costs O(log N) amortized for N flows,
also when every device has its own access-link capacity:

- flows with the same path and per-flow cap form a *bundle* (they always get the same rate);
- a link used by one bundle only is *private*: it caps that bundle at capacity / flows;
- bundles with the same shared links and the same cap form a *class*; classes with the same
  shared links form a *route*, which keeps its classes in a CapTree ordered by cap;
- max-min sharing gives each route a *level* L (infinite when none of its shared links fills),
  and each class the rate min(cap, L): progressive filling runs over routes, not classes, and
  a link's level is found by Newton steps on the route sums that CapTree.query returns;
- classes at the level (cap >= L) count on their route's virtual clock, so a level change is
  one slope change; classes under it run at their own cap on a clock of their own, in one heap
  of finish times. Only classes whose cap lies between a route's old and new level switch
  between the two, so an event costs O((1 + k) log N) for k such classes;
- each bundle has an offset into its class's clock, each flow a virtual finish in a heap per
  bundle.

A fill redoes only the routes joined through shared links to one that changed: one route in a
star, the G routes of one direction in a tree of G groups. A shared link of one route (a group's
uplink) fills at a level of its own, the route's *roof*, solved only when the route or the link
changes; links of several routes (the server's) fill with each route's load capped at its roof.
So an event costs O(log N) for the route that changed, plus, per Newton step on the server's
link, a stored sum for each route at its roof and an O(log N) query for each one under it, plus
O(k log N) for the classes a level passes: it grows with the number of groups, not of devices,
and with G routes under their roofs is O((G + k) log N), as before the roofs. k is small in
rounds like those of benchmarks/bench_network.py, but one level change can pass many caps at
once (a link whose capacity changes, caps packed just around a level that swings), so the
O(log N) is amortized over such workloads, not a worst-case bound.

The network keeps one wake-up at a time, for the first flow due: capped classes wait in a heap
of finish times, routes in heaps of when their first flow is due and of the earliest time a
wake-up could find it due, so a wake-up looks only at the routes that may be due and the
scheduling redoes only the routes that changed; a wake-up whose time has not moved stays set.

setup.py compiles this module with mypyc (see :mod:`fedsim.sim`): it must type-check, and a
class defined outside the compiled modules cannot subclass its classes.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import simpy
from simpy.events import NORMAL

from fedsim.sim.captree import CapTree

# A flow is done once what is left is below this share of its size: rounding must not split
# flows that end together into two events, nor leave a sliver to be sent later.
REL_EPS = 1e-9


@dataclass(frozen=True)
class FlowRecord:
    """A finished transfer: when transfer() was called, when its last byte arrived, its size."""

    start: float
    end: float
    nbytes: float


# What send() calls when a transfer ends: with None, so that one object (a task's run) can be
# the callback of its transfers and of SimPy events alike.
Then = Callable[[None], object]


class _Flow:
    """A transfer; in its bundle's heap, ordered by its finish on the bundle's clock and then by
    when it was admitted (the flow itself is the heap's entry: no tuple, float and int a flow).

    While it waits out its path's latency the flow is itself the event in SimPy's queue: it has
    what ``simpy.Environment.step`` reads of an event (``callbacks``, then ``_ok``), so that no
    Timeout (an object, its attributes and its list of callbacks) is made for it, twice a
    device a round. It is scheduled as a Timeout is (``Environment.schedule``), so the order
    of events is the same.
    """

    __slots__ = (
        "_ok",
        "callbacks",
        "cap",
        "done",
        "finish",
        "nbytes",
        "path",
        "seq",
        "start",
        "then",
    )

    def __init__(
        self,
        path: tuple,
        nbytes: float,
        cap: float,
        start: float,
        done: simpy.Event | None,
        then: Then | None = None,
    ):
        self.path = path
        self.nbytes = nbytes
        self.cap = cap
        self.start = start
        self.done = done  # transfer()'s event, or None for send()
        self.then = then  # send()'s callback, or None for transfer()
        self.finish = 0.0  # on its bundle's clock, once admitted
        self.seq = 0  # the order of admission, for flows that finish together
        # As an event in SimPy's queue: the network's list of the one callback, shared by every
        # flow (SimPy sets it to None once it has called it), and a success.
        self.callbacks: list[Callable[[_Flow], None]] | None = None
        self._ok = True

    def __hash__(self) -> int:  # by identity, as without __lt__ (which mypyc's class drops it for)
        return id(self)

    def waiter(self) -> object:
        """What waits on the transfer: transfer()'s event, or send()'s callback."""
        return self.done if self.done is not None else self.then

    def __lt__(self, other: _Flow) -> bool:
        return self.finish < other.finish or (self.finish == other.finish and self.seq < other.seq)


class _Wake:
    """A wake-up of the network, itself the event in SimPy's queue as a flow is (see _Flow):
    one small object where a Timeout is three, about two a device a round."""

    __slots__ = ("_ok", "callbacks")

    def __init__(self, callbacks: list[Callable[[_Wake], None]]) -> None:
        self.callbacks: list[Callable[[_Wake], None]] | None = callbacks
        self._ok = True


class _Entry:
    """An entry of one of the network's heaps: its key, and the id that says whether it is
    still its item's live entry (an item gets a new entry when its key changes; the old one
    stays, stale, until it comes to the top). Ids grow with every entry, so they also order
    equal keys by when they were pushed, as a tuple (key, id, item) would. One native object
    where such a tuple is three (the tuple, a float and an int): about 64 bytes rather than
    120, an entry in two heaps for each device in flight, and one allocation rather than
    three each time an entry is renewed."""

    __slots__ = ("id", "key")

    def __init__(self, key: float, id: int) -> None:
        self.key = key
        self.id = id

    def __lt__(self, other: _Entry) -> bool:
        return self.key < other.key or (self.key == other.key and self.id < other.id)


class _BundleEntry(_Entry):
    """A bundle's next finish on its class's clock, in its class's heap."""

    __slots__ = ("bundle",)

    def __init__(self, key: float, id: int, bundle: _Bundle) -> None:
        super().__init__(key, id)
        self.bundle = bundle


class _ClassEntry(_Entry):
    """A class's next finish: on its route's clock (bound) or in seconds (capped)."""

    __slots__ = ("cls",)

    def __init__(self, key: float, id: int, cls: _Class) -> None:
        super().__init__(key, id)
        self.cls = cls


class _RouteEntry(_Entry):
    """When a route's first flow is due, or the earliest a wake-up could find it due."""

    __slots__ = ("route",)

    def __init__(self, key: float, id: int, route: _Route) -> None:
        super().__init__(key, id)
        self.route = route


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
        # One list holding one bound method for every transfer's arrival, rather than a
        # closure or a list each: a round of a million devices starts a million transfers at
        # once, each waiting its latency.
        self._on_arrival: list[Callable[[_Flow], None]] = [self._arrival]

    def transfer(
        self, path: Sequence[Hashable], nbytes: float, *, cap: float = math.inf
    ) -> simpy.Event:
        """Send ``nbytes`` over the directed links of ``path`` at most at ``cap`` bytes/s.

        The event's value is a FlowRecord. An empty path is a transfer within one host.
        """
        path = self._checked(path, nbytes, cap)
        done = self.env.event()
        flow = _Flow(path, float(nbytes), float(cap), self.env.now, done)
        if not path:
            done.succeed(FlowRecord(flow.start, flow.start, flow.nbytes))
            return done
        self._depart(flow)
        return done

    def send(
        self, path: Sequence[Hashable], nbytes: float, then: Then, *, cap: float = math.inf
    ) -> None:
        """:meth:`transfer`, with ``then(None)`` called when the last byte arrives in place of
        an event: from the network's own wake-up, in the order in which transfers that end at
        the same instant end, before any other event of that instant is processed. What a
        caller that waits on many transfers saves is an event, its scheduling and its step a
        transfer (a round of a million devices makes two million). An empty path calls
        ``then`` at once.
        """
        flow = _Flow(
            self._checked(path, nbytes, cap), float(nbytes), float(cap), self.env.now, None, then
        )
        if not flow.path:
            then(None)
            return
        self._depart(flow)

    def _checked(self, path: Sequence[Hashable], nbytes: float, cap: float) -> tuple:
        path = tuple(path)
        if not nbytes >= 0:
            raise ValueError(f"nbytes must be non-negative, got {nbytes}")
        if not cap > 0:
            raise ValueError(f"cap must be positive, got {cap}")
        # Checked without a list or a set made, as every transfer is: paths are a few links.
        capacity = self._capacity
        n = len(path)
        for i in range(n):
            link = path[i]
            if link not in capacity:
                raise ValueError(f"unknown links {[x for x in path if x not in capacity]}")
            for j in range(i):
                if path[j] == link:
                    raise ValueError(f"path crosses a link twice: {path}")
        return path

    def _depart(self, flow: _Flow) -> None:
        """The flow on its way: it reaches the network after its path's latency."""
        flow.callbacks = self._on_arrival
        env: Any = self.env  # the flow is the event (see _Flow), which SimPy's types do not say
        env.schedule(flow, NORMAL, self._delay(flow))

    def _delay(self, flow: _Flow) -> float:
        """The latency of the flow's path (a sum, without a generator: every transfer asks)."""
        delay = 0.0
        for link in flow.path:
            delay += self._latency.get(link, 0.0)
        return delay

    def capacity(self, link: Hashable) -> float:
        """The link's capacity now, in bytes/s."""
        return self._capacity[link]

    def narrowest(self, path: Sequence[Hashable]) -> float:
        """The smallest capacity now of the links of ``path`` (inf for no link): what one
        transfer alone on it reaches. A loop rather than min() over a generator: asked for
        every device when selection views them, and for every transfer not sharing links."""
        capacity = self._capacity
        rate = math.inf
        for link in path:
            c = capacity[link]
            if c < rate:
                rate = c
        return rate

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

    def _arrival(self, flow: _Flow) -> None:
        self._arrive(flow)

    def _arrive(self, flow: _Flow) -> None:
        if flow.nbytes == 0:
            self._complete(flow)
        else:
            self._admit(flow)

    def _complete(self, flow: _Flow) -> None:
        self.bytes_delivered += flow.nbytes
        if flow.then is not None:
            flow.then(None)
        else:
            assert flow.done is not None
            flow.done.succeed(FlowRecord(flow.start, self.env.now, flow.nbytes))

    @staticmethod
    def _is_due(flow: _Flow, remaining: float, rate: float, now: float) -> bool:
        # The second test stops a sliver too small to move the clock from looping forever.
        return remaining <= REL_EPS * flow.nbytes or now + remaining / rate <= now

    def _admit(self, flow: _Flow) -> None:
        raise NotImplementedError


class _Route:
    """Classes with the same shared links; ``level`` caps the rate of every one of them."""

    __slots__ = (
        "bound",
        "by_cap",
        "classes",
        "due_id",
        "full",
        "full_at",
        "heap",
        "level",
        "links",
        "roof",
        "seq",
        "shared",
        "t0",
        "tree",
        "v0",
    )

    def __init__(self, links: tuple, now: float, seq: int):
        self.shared = frozenset(links)
        # The same links in the order of the path that made the route: whatever is worked out
        # link by link goes in this order, never in a frozenset's, whose order follows the
        # links' hashes and so changes from one interpreter to the next (PYTHONHASHSEED).
        self.links = links
        self.seq = seq  # routes are drained in the order they were made
        self.due_id = 0  # id of its live entries in the network's due heaps; -1 once gone
        self.tree: CapTree[_Class] = CapTree()
        self.by_cap: dict[float, _Class] = {}  # its classes, by their cap
        self.classes = 0
        self.bound = 0  # classes at the level, on this route's clock
        self.level = math.inf
        self.roof = math.inf  # the level its links of one route let it reach, in a fill
        self.full = 0.0  # its load at that roof
        self.full_at = math.nan  # the roof that load is for; nan once its flows change
        self.heap: list[_ClassEntry] = []  # bound classes by next finish (vclock)
        self.v0 = 0.0
        self.t0 = now

    def vclock(self, now: float) -> float:
        # At an infinite level no class is bound, so the clock is never read for a rate.
        return self.v0 if self.level == math.inf else self.v0 + self.level * (now - self.t0)


class _Component:
    """Shared links joined by the routes they carry, as a fill takes them: the narrowest link
    of each set of routes, split into links of one route and links of several."""

    __slots__ = ("fresh", "multi", "route_of", "routes", "single_of")

    def __init__(self) -> None:
        self.route_of: dict[Hashable, _Route] = {}  # each counted link of one route: its route
        self.single_of: dict[_Route, list[Hashable]] = {}  # and back
        self.multi: list[tuple[Hashable, list[_Route]]] = []
        self.routes: dict[_Route, None] = {}
        self.fresh = True  # no fill has given its routes their roofs yet


class _Class:
    """Bundles with the same shared links (its route's) and cap.

    A bound class (cap >= its route's level) reads its clock as the route's plus ``offset``;
    a capped one as ``x0 + cap x (now - t0)``.
    """

    __slots__ = (
        "bound",
        "bundles",
        "cap",
        "entry",
        "heap",
        "offset",
        "route",
        "t0",
        "weight",
        "x0",
    )

    def __init__(self, route: _Route, cap: float, now: float):
        self.cap = cap
        self.route = route
        self.heap: list[_BundleEntry] = []  # its bundles by next finish (class clock)
        self.bundles = 0
        self.weight = 0  # flows in the class
        self.entry = -1  # id of the live entry in the route's or the network's heap
        self.bound = self.cap >= route.level
        self.offset = -route.vclock(now)  # the class clock starts at 0
        self.x0 = 0.0
        self.t0 = now

    def clock(self, now: float) -> float:
        if self.bound:
            return self.route.vclock(now) + self.offset
        return self.x0 + self.cap * (now - self.t0)

    @property
    def rate(self) -> float:
        return self.route.level if self.bound else self.cap


class _Bundle:
    """Flows with one path and per-flow cap; their finishes count on the bundle's clock."""

    __slots__ = ("cap", "cls", "counted", "entry", "flows", "mask", "n", "offset", "path")

    def __init__(self, path: tuple, cap: float):
        self.path = path
        self.cap = cap
        self.flows: list[_Flow] = []  # a heap
        self.n = 0
        self.cls: _Class | None = None
        # Which links of its path were shared (bit i: path[i]) when it was put in cls: while
        # they stay so, cls's route has its shared links, and _place makes no set of them.
        self.mask = -1
        self.offset = 0.0  # bundle clock = class clock + offset
        self.counted = 0  # flows counted in cls.weight
        self.entry = -1  # id of the live entry in cls.heap; others are stale


def _seq(route: _Route) -> int:
    return route.seq


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
        # Bundles by path, and those of flows with a cap of their own by (path, cap): a key
        # tuple a bundle fewer in the common case (a million devices in flight: 56 MB).
        self._bundles: dict[tuple, _Bundle] = {}
        self._capped: dict[tuple, _Bundle] = {}
        # Bundles per link in use: the bundle itself while it is the only one (most links are a
        # device's own, so a fleet holds no container per link), else a dict of them. A dict
        # rather than a set: the order in which bundles are placed decides the order of
        # same-instant completions, so it must not depend on object ids.
        self._users: dict[Hashable, _Bundle | dict[_Bundle, None]] = {}
        self._classes = 0  # classes of every route (each route finds its own by cap)
        self._routes: dict[frozenset, _Route] = {}
        self._link_routes: dict[Hashable, dict[_Route, None]] = {}  # routes per shared link
        # Shared links whose routes' levels must be redone; a dict, so that a fill goes through
        # them in the order they changed (it decides the order of same-instant completions).
        self._changed: dict[Hashable, None] = {}
        self._reloaded: dict[_Route, None] = {}  # routes whose flows changed since the last fill
        self._components: dict[Hashable, _Component] = {}  # each shared link's, once asked
        self._roofs: dict[Hashable, float] = {}  # level of each link of one route, alone
        self._last: dict[Hashable, float] = {}  # each link of several routes: its last level
        self._timed: list[_ClassEntry] = []  # capped classes by next finish time
        # Routes by when their first flow is due (_due) and by the earliest time at which a
        # wake-up could find one due (_ready: less the share of a flow's size that counts as
        # sent), so that a wake-up and the scheduling look at the routes that may be due and
        # that changed, not at every route. Routes whose entries must be redone: _moved.
        self._due: list[_RouteEntry] = []
        self._ready: list[_RouteEntry] = []
        self._moved: dict[_Route, None] = {}
        self._largest = 0.0  # the largest transfer admitted so far, in bytes
        self._touched: dict[_Class, None] = {}  # classes whose heap entry must be renewed
        self._ids = 0  # the next id of an entry, a flow or a route (see _id)
        self._pending: _Wake | None = None  # the wake-up due; earlier ones are stale
        self._pending_for = math.nan  # the due time it was set for
        # One list holding one bound method for every wake-up rather than a closure or a list
        # each: the stale ones wait in SimPy's queue until their time, one per rate change, so
        # each should cost little.
        self._on_timeout: list[Callable[[_Wake], None]] = [self._wake]
        self.active_flows = 0
        """Flows past their latency that have bytes left to send."""

    def _id(self) -> int:
        """The next of the ids that order entries, flows and routes: 0, 1, 2, ... A counter of
        the network's own rather than itertools.count, whose ints are objects: compiled, the
        ids stay machine integers, some ten a device in flight."""
        n = self._ids
        self._ids = n + 1
        return n

    def rates(self) -> dict[object, float]:
        """Current rate of each active flow, keyed by its transfer() event or its send()
        callback (a debug view, O(N))."""
        return {
            f.waiter(): b.cls.rate
            for b in [*self._bundles.values(), *self._capped.values()]
            if b.cls is not None
            for f in b.flows
        }

    def _table(self, path: tuple, cap: float) -> tuple[dict[tuple, _Bundle], tuple]:
        """Where the bundle of ``path`` and ``cap`` is kept, and under which key."""
        if cap == math.inf:
            return self._bundles, path
        return self._capped, (path, cap)

    def _admit(self, flow: _Flow) -> None:
        now = self.env.now
        if flow.nbytes > self._largest:  # every route's _ready entry counts with it
            self._largest = flow.nbytes
            self._moved.update(dict.fromkeys(self._routes.values()))
        table, key = self._table(flow.path, flow.cap)
        bundle = table.get(key)
        dirty: dict[_Bundle, None] = {}
        if bundle is None:
            bundle = table[key] = _Bundle(flow.path, flow.cap)
            for link in flow.path:
                users = self._users.get(link)
                if users is None:
                    self._users[link] = bundle
                elif isinstance(users, _Bundle):  # the former sole user loses a private link
                    self._users[link] = {users: None, bundle: None}
                    dirty[users] = dirty[bundle] = None
                else:
                    users[bundle] = None
        finish = self._bundle_clock(bundle, now) + flow.nbytes
        flow.finish, flow.seq = finish, self._id()
        heapq.heappush(bundle.flows, flow)
        bundle.n += 1
        self.active_flows += 1
        dirty[bundle] = None
        self._update(dirty, now)

    def _reshare(self, link: Hashable) -> None:
        # A bundle alone on the link changes its private cap, so it is placed again; a shared
        # link's routes get new levels.
        if link in self._link_routes:
            self._changed[link] = None
            self._components.clear()  # which of the link's twins is the narrowest may change
        users = self._users.get(link)
        bundles = () if users is None else (users,) if isinstance(users, _Bundle) else users
        self._update(dict.fromkeys(bundles), self.env.now)

    def _wake(self, timeout: _Wake) -> None:
        if timeout is not self._pending:
            return
        self._pending = None
        now = self.env.now
        finished: list[_Flow] = []
        dirty: dict[_Bundle, None] = {}
        # The capped classes, then the routes that may have a flow due, in the order the
        # routes were made (the order of same-instant completions must not change with which
        # routes are looked at). A route that is not picked has none due: see _schedule.
        ready, moved = self._ready, self._moved
        limit = now + 1e-9 * (1.0 + now)  # more than any rounding of the due times
        picked = []
        while ready and ready[0].key <= limit:
            top = heapq.heappop(ready)
            route = top.route
            if top.id == route.due_id:
                picked.append(route)
                moved[route] = None
        picked.sort(key=_seq)
        for heap in [self._timed] + [route.heap for route in picked]:
            while heap:
                cls = heap[0].cls
                if heap[0].id != cls.entry:
                    heapq.heappop(heap)
                    continue
                if not self._drain(cls, now, finished, dirty):
                    break  # heaps are ordered by finish, so nothing else in this one is due
                heapq.heappop(heap)
                cls.entry = -1
                self._touched[cls] = None
        for bundle in list(dirty):
            if bundle.n == 0:
                table, key = self._table(bundle.path, bundle.cap)
                del table[key]
                for link in bundle.path:
                    users = self._users[link]
                    if isinstance(users, _Bundle):  # this bundle, the link's only user
                        del self._users[link]
                        continue
                    del users[bundle]
                    if len(users) == 1:  # the last user gains a private link
                        (last,) = users
                        self._users[link] = last
                        dirty[last] = None
        self.active_flows -= len(finished)
        self._update(dirty, now)
        for flow in finished:
            self._complete(flow)

    def _drain(
        self, cls: _Class, now: float, finished: list[_Flow], dirty: dict[_Bundle, None]
    ) -> bool:
        """Take the class's due flows out; say whether there were any."""
        # cls.clock(now), cls.rate and _is_due spelled out: the same arithmetic, without the
        # calls, since every wake-up asks this of the top class of every route.
        if cls.bound:
            route = cls.route
            rate = route.level
            v = route.v0 if rate == math.inf else route.v0 + rate * (now - route.t0)
            clock = v + cls.offset
        else:
            rate = cls.cap
            clock = cls.x0 + rate * (now - cls.t0)
        heap = cls.heap
        before = len(finished)
        while heap:
            bundle = heap[0].bundle
            if heap[0].id != bundle.entry:
                heapq.heappop(heap)
                continue
            bundle_clock = clock + bundle.offset
            flows = bundle.flows
            popped = len(finished)
            while flows:
                flow = flows[0]
                remaining = flow.finish - bundle_clock
                # FlowNetworkBase._is_due: the second test stops a sliver too small to move the
                # clock from looping forever.
                if not (remaining <= REL_EPS * flow.nbytes or now + remaining / rate <= now):
                    break
                finished.append(heapq.heappop(flows))
            if len(finished) == popped:
                break
            heapq.heappop(heap)
            bundle.entry = -1
            bundle.n -= len(finished) - popped
            dirty[bundle] = None
        return len(finished) > before

    def _update(self, dirty: dict[_Bundle, None], now: float) -> None:
        for bundle in dirty:
            self._place(bundle, now)
        self._fill(now)
        for cls in self._touched:
            self._rekey(cls)
        self._touched.clear()
        self._schedule(now)

    def _bundle_clock(self, bundle: _Bundle, now: float) -> float:
        return 0.0 if bundle.cls is None else bundle.cls.clock(now) + bundle.offset

    def _place(self, bundle: _Bundle, now: float) -> None:
        """Put the bundle in the class its links and count call for; re-key its heap entry."""
        if bundle.n == 0:
            self._detach(bundle)
            return
        cap = bundle.cap
        mask = 0
        bit = 1
        users, capacity = self._users, self._capacity
        for link in bundle.path:
            if isinstance(users[link], dict):
                mask |= bit
            else:
                cap = min(cap, capacity[link] / bundle.n)
            bit <<= 1
        cls = bundle.cls
        if cls is None or cls.cap != cap or mask != bundle.mask:
            shared = [link for i, link in enumerate(bundle.path) if mask >> i & 1]
            links = frozenset(shared)
            if cls is None or cls.cap != cap or cls.route.shared != links:
                clock = self._bundle_clock(bundle, now)
                self._detach(bundle)
                route = self._routes.get(links)
                cls = None if route is None else route.by_cap.get(cap)
                if cls is None:  # made with the bundle's flows: one walk down its tree, not two
                    cls = self._new_class(links, cap, tuple(shared), now, bundle.n)
                    bundle.counted = bundle.n
                bundle.cls = cls
                cls.bundles += 1
                bundle.offset = clock - cls.clock(now)
            bundle.mask = mask
        if bundle.n != bundle.counted:
            cls.weight += bundle.n - bundle.counted
            bundle.counted = bundle.n
            cls.route.tree.set_weight(cls.cap, cls.weight)
            self._reload(cls.route)
        bundle.entry = self._id()
        heapq.heappush(
            cls.heap, _BundleEntry(bundle.flows[0].finish - bundle.offset, bundle.entry, bundle)
        )
        self._touched[cls] = None

    def _new_class(
        self, shared: frozenset, cap: float, links: tuple, now: float, weight: int
    ) -> _Class:
        route = self._routes.get(shared)
        if route is None:
            route = self._routes[shared] = _Route(links, now, self._id())
            for link in route.links:
                self._link_routes.setdefault(link, {})[route] = None
            self._components.clear()
        cls = route.by_cap[cap] = _Class(route, cap, now)
        self._classes += 1
        cls.weight = weight
        route.tree.insert(cls.cap, weight, cls)
        self._reload(route)
        route.classes += 1
        route.bound += cls.bound
        return cls

    def _detach(self, bundle: _Bundle) -> None:
        cls = bundle.cls
        if cls is None:
            return
        route = cls.route
        cls.weight -= bundle.counted
        cls.bundles -= 1
        bundle.cls = None
        bundle.counted = 0
        bundle.entry = -1
        if cls.bundles:
            route.tree.set_weight(cls.cap, cls.weight)
            self._reload(route)
            self._touched[cls] = None
            return
        del route.by_cap[cls.cap]
        self._classes -= 1
        self._touched.pop(cls, None)
        cls.entry = -1
        route.tree.remove(cls.cap)
        self._reload(route)
        route.classes -= 1
        route.bound -= cls.bound
        self._moved[route] = None
        if not route.classes:
            del self._routes[route.shared]
            del self._moved[route]
            route.due_id = -1
            self._components.clear()
            for link in route.links:
                routes = self._link_routes[link]
                del routes[route]
                if not routes:
                    del self._link_routes[link]
                    self._changed.pop(link, None)
                    self._roofs.pop(link, None)
                    self._last.pop(link, None)

    def _reload(self, route: _Route) -> None:
        """The route's flows changed: its links' levels must be redone, its load at its roof too."""
        changed = self._changed
        for link in route.links:
            changed[link] = None
        self._reloaded[route] = None
        route.full_at = math.nan

    def _component(self, link: Hashable) -> _Component:
        """The links joined to ``link`` by the routes they carry, sorted for a fill.

        It is kept until a route comes or goes or a shared link's capacity changes.
        """
        component = self._components.get(link)
        if component is not None:
            return component
        links: dict[Hashable, None] = {}
        todo = [link]
        while todo:
            link = todo.pop()
            if link not in links:
                links[link] = None
                for route in self._link_routes[link]:
                    todo.extend(route.links)
        # Of links that carry the same routes only the narrowest counts.
        narrowest: dict[frozenset[_Route], Hashable] = {}
        for link in links:
            routes = frozenset(self._link_routes[link])
            other = narrowest.setdefault(routes, link)
            if self._capacity[link] < self._capacity[other]:
                narrowest[routes] = link
        counted = set(narrowest.values())
        component = _Component()
        for link in links:
            self._components[link] = component
            if link not in counted:  # not solved while it does not count, so not kept
                self._roofs.pop(link, None)
                continue
            ordered = list(self._link_routes[link])  # in a fixed order: float sums follow it
            if len(ordered) == 1:
                component.route_of[link] = ordered[0]
                component.single_of.setdefault(ordered[0], []).append(link)
            else:
                component.multi.append((link, ordered))
            for route in ordered:
                component.routes[route] = None
        return component

    def _fill(self, now: float) -> None:
        """Progressive filling over the routes that share links with a changed one.

        All levels rise together; a link fills when its routes' sum of w x min(cap, level)
        reaches its capacity, and its routes stop at that level. A link that carries one route
        fills at a level of its own whatever the other routes do: that level is the route's
        *roof*, solved only when the route or the link changed. The links that carry several
        routes count each route's load as w x min(cap, level, roof), still concave and
        piecewise linear in the level, and wait in a heap by their level; stopping a route can
        only raise the level of its other links, so theirs stays in the heap as a lower bound
        and is solved again only if it comes to the top. Routes that share no link with a
        changed one keep their levels, and of links that carry the same routes only the
        narrowest counts. In a tree of G groups only the server's link goes through the heap,
        once per fill, rather than once per group link that fills before it.
        """
        changed = self._changed
        components = {self._component(link): None for link in changed}
        roofs, reloaded = self._roofs, self._reloaded
        # A route's roof is redone when one of its links of one route changed (its flows or
        # the link's capacity), and its load at the roof when that roof or its flows changed;
        # the other routes keep theirs. A component just made redoes every route.
        redo: dict[_Component, list[_Route]] = {}
        for component in components:
            if component.fresh:
                component.fresh = False
                todo = redo[component] = list(component.routes)
            else:
                route_of = component.route_of
                todo = list({route_of[link]: None for link in changed if link in route_of})
                redo[component] = todo + [r for r in reloaded if r in component.routes]
            for route in todo:
                route.roof = math.inf
                for link in component.single_of.get(route, ()):
                    roof = roofs.get(link)
                    if roof is None or link in changed:
                        roof = roofs[link] = self._solve([route], self._capacity[link], 0.0, None)
                    if roof < route.roof:
                        route.roof = roof
        changed.clear()
        reloaded.clear()
        for component, routes in redo.items():
            for route in routes:
                roof = route.roof
                if roof < math.inf and route.full_at != roof:
                    below, above, _ = route.tree.query(roof)
                    route.full, route.full_at = below + roof * above, roof
            self._fill_component(component, now)

    def _fill_component(self, component: _Component, now: float) -> None:
        """Progressive filling of one component's links of several routes, with roofs known."""
        if len(component.multi) == 1:
            # One such link (a star's or a tree's server link, in each direction): its level
            # is its routes' level, or their roofs, with no other link to share a route with.
            link, routes = component.multi[0]
            level = self._solve(routes, self._capacity[link], 0.0, self._last.get(link))
            if level < math.inf:
                self._last[link] = level
            # The link's routes first, then any others at their roofs, in the order of the
            # general case below: the order in which classes are touched decides that of
            # same-instant completions.
            rest = (
                [r for r in component.routes if r not in routes]
                if len(routes) < len(component.routes)
                else []
            )
            for route in routes + rest:
                new = level if level < route.roof else route.roof
                if new != route.level:
                    self._set_level(route, new, now)
            return
        users = {link: list(routes) for link, routes in component.multi}
        routes_in = dict.fromkeys(component.routes)
        left = {link: self._capacity[link] for link in users}
        heap = []
        ids = itertools.count()
        for link, routes in users.items():
            level = self._solve(routes, left[link], 0.0, self._last.get(link))
            heap.append((level, next(ids), link))
        heapq.heapify(heap)
        stale: set[Hashable] = set()
        while heap:
            level, _, link = heapq.heappop(heap)
            if not users[link]:
                continue
            if link in stale:
                stale.discard(link)
                level = self._solve(users[link], left[link], level, self._last.get(link))
                heapq.heappush(heap, (level, next(ids), link))
                continue
            if level == math.inf:
                break  # every other link's level is at least this bound: nothing else fills
            self._last[link] = level
            for route in users[link]:
                # A route under its roof stops here; one at its roof stopped there already, and
                # the other links counted it at its roof, so they need not be solved again.
                stops = level < route.roof
                if stops:
                    below, above, _ = route.tree.query(level)
                    load = below + level * above
                else:
                    load = route.full
                for other in route.links:
                    if other != link and other in users:
                        left[other] -= load
                        users[other].remove(route)
                        if stops:
                            stale.add(other)
                # min(level, roof), and no call when the level stays.
                new = level if level < route.roof else route.roof
                if new != route.level:
                    self._set_level(route, new, now)
                del routes_in[route]
            users[link] = []
        for route in routes_in:  # stopped by no link of several routes: at their roofs
            if route.roof != route.level:
                self._set_level(route, route.roof, now)

    @staticmethod
    def _solve(routes: list[_Route], left: float, start: float, guess: float | None) -> float:
        """The level >= start at which ``routes`` fill ``left`` bytes/s (inf if they never do).

        Their sum of w x min(cap, level, roof) is concave and piecewise linear in the level,
        so a Newton step from below never overshoots and a step from above lands below; each
        step from below passes at least one cap or roof. ``guess`` (the link's level at the
        last fill, if any) is the first guess.
        """
        level = start
        if guess is not None and start < guess < math.inf:
            load, slope, _ = FlowNetwork._load(routes, guess)
            if load <= left:
                level = guess
            elif slope:
                level = max(start, guess + (left - load) / slope)
        while True:
            load, slope, after = FlowNetwork._load(routes, level)
            if not slope:  # every flow is at its cap or roof: the link fills now or never
                return level if load >= left else math.inf
            step = level + (left - load) / slope
            if step <= after:
                return max(step, level)
            level = step

    @staticmethod
    def _load(routes: list[_Route], level: float) -> tuple[float, int, float]:
        """The routes' load at ``level``, its slope above it, and where that slope next drops."""
        load, slope, after = 0.0, 0, math.inf
        for route in routes:
            roof = route.roof
            if level >= roof:
                load += route.full
                continue
            below, above, cap = route.tree.query(level)
            load += below + level * above
            slope += above
            after = min(after, cap, roof)
        return load, slope, after

    def _set_level(self, route: _Route, level: float, now: float) -> None:
        """Give the route a new level; classes whose cap it passes change clocks."""
        old = route.level
        if level == old:
            return
        self._moved[route] = None
        route.v0 = route.vclock(now)
        route.t0 = now
        route.level = level
        for cls in route.tree.between(min(old, level), max(old, level)):
            if (cls.cap >= level) == cls.bound:
                continue
            clock = cls.clock(now)
            cls.bound = not cls.bound
            if cls.bound:
                cls.offset = clock - route.vclock(now)
                route.bound += 1
            else:
                cls.x0, cls.t0 = clock, now
                route.bound -= 1
            cls.entry = -1
            self._touched[cls] = None

    def _rekey(self, cls: _Class) -> None:
        """Push the class's next finish into its route's heap (bound) or the timed heap."""
        heap = cls.heap
        while heap and heap[0].id != heap[0].bundle.entry:
            heapq.heappop(heap)
        if len(heap) > 2 * cls.bundles + 32:  # drop stale entries before they pile up
            cls.heap = heap = [e for e in heap if e.id == e.bundle.entry]
            heapq.heapify(heap)
        if not heap:
            return
        cls.entry = self._id()
        if cls.bound:
            heapq.heappush(cls.route.heap, _ClassEntry(heap[0].key - cls.offset, cls.entry, cls))
            self._moved[cls.route] = None
        else:
            finish = cls.t0 + (heap[0].key - cls.x0) / cls.cap
            heapq.heappush(self._timed, _ClassEntry(finish, cls.entry, cls))

    def _schedule(self, now: float) -> None:
        """Wake up when the first flow is due: the capped classes' heap holds their finish
        times; of the routes, only those that changed (their level, or the class at the top of
        their heap) since the last scheduling get their entries in _due and _ready redone.

        A route's first flow is due after (top - vclock) / level seconds. A wake-up drains a
        flow whose bytes left are at most REL_EPS of its size, which for a route at that level
        is at most REL_EPS x the largest transfer / level seconds before it is due: that much
        earlier is the route's _ready time, before which no wake-up can find it due.
        """
        soonest = math.inf
        timed = self._timed = self._live(self._timed, self._classes)
        if timed:
            soonest = timed[0].key
        due, ready = self._due, self._ready
        for route in self._moved:
            heap = route.heap
            if len(heap) > 2 * route.bound + 32:
                heap = route.heap = self._live(heap, route.bound)
            while heap and heap[0].id != heap[0].cls.entry:
                heapq.heappop(heap)
            entry = route.due_id = self._id()
            if heap:
                # _Route.vclock spelled out (the same arithmetic).
                level = route.level
                v = route.v0 if level == math.inf else route.v0 + level * (now - route.t0)
                at = now + (heap[0].key - v) / level
                heapq.heappush(due, _RouteEntry(at, entry, route))
                ready_at = at - REL_EPS * self._largest / level
                heapq.heappush(ready, _RouteEntry(ready_at, entry, route))
        self._moved.clear()
        if len(due) > 4 * len(self._routes) + 64:  # drop stale entries before they pile up
            self._due = due = self._current(due)
            self._ready = self._current(ready)
        while due and due[0].id != due[0].route.due_id:
            heapq.heappop(due)
        if due:
            soonest = min(soonest, due[0].key)
        if soonest == self._pending_for and self._pending is not None:
            return  # the wake-up set for that time still stands: no new one, no stale one
        self._pending, self._pending_for = None, soonest
        if soonest < math.inf:
            timeout = self._pending = _Wake(self._on_timeout)
            env: Any = self.env  # the wake-up is the event (see _Wake)
            env.schedule(timeout, NORMAL, max(soonest - now, 0.0))

    @staticmethod
    def _current(heap: list[_RouteEntry]) -> list[_RouteEntry]:
        """A due heap with only the routes' live entries."""
        heap = [e for e in heap if e.id == e.route.due_id]
        heapq.heapify(heap)
        return heap

    @staticmethod
    def _live(heap: list[_ClassEntry], live: int) -> list[_ClassEntry]:
        """The heap with its stale top entries gone, rebuilt once stale ones pile up."""
        if len(heap) > 2 * live + 32:
            heap = [e for e in heap if e.id == e.cls.entry]
            heapq.heapify(heap)
        while heap and heap[0].id != heap[0].cls.entry:
            heapq.heappop(heap)
        return heap
