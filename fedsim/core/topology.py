"""Devices, their hardware and links, and the network tree that joins them.

The network is a tree: each device hangs off its group's switch (or off another device, as an IP
camera hangs off its recorder), and each group's switch hangs off a common backbone through the
group's uplink. Every physical link is full duplex: it is two directed links, ``up`` (towards the
backbone) and ``down``, which do not share bandwidth.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

from fedsim.core.calibration import StepModel

SERVER = "server"
TRAINER = "trainer"
DEVICE = "device"
ROLES = (SERVER, TRAINER, DEVICE)

MSS_BYTES = 1460  # TCP payload per segment on Ethernet (1500-byte MTU)

# Where a hardware profile's figures come from: a data sheet, or timings on the device itself.
SPEC = "spec"
MEASURED = "measured"
PROFILE_KINDS = (SPEC, MEASURED)


class TopologyError(ValueError):
    """A topology that cannot be built; the message names the offending field."""


# A TCP segment's payload on a 1500-byte MTU with timestamps: what a link carries a body in,
# and what ``segment_cpu_s`` is per.
SEGMENT_BYTES = 1448
# The seconds figures only a measured profile carries (0 when not measured).
MEASURED_SECONDS = (
    "cold_start_s",
    "request_cpu_s",
    "segment_cpu_s",
    "persist_cpu_s",
    "persist_io_s",
    "round_overhead_s",
    "task_overhead_s",
)


@dataclass(frozen=True, kw_only=True)
class HardwareProfile:
    """Compute capability of a device, in base units (FLOP/s, bytes, bytes/s).

    ``peak_flops`` is the total fp32 peak of what trains (all GPUs, or the CPU). Training reaches
    ``efficiency`` of it; with several accelerators data-parallel training loses a further
    ``1 - scaling_efficiency``. ``jitter`` is the coefficient of variation of a compute step.

    ``kind`` says where the figures come from, and ``source`` names it: a ``spec`` profile is
    read off data sheets; a ``measured`` one was timed on the device (``fedsim calibrate``).
    A measured profile carries ``steps``, a fitted step model per model name, which times
    training of that model in place of FLOPs / effective FLOP/s. It may carry ``eval_steps``,
    a fitted step model per model name of evaluating it (forward passes in batches, as the
    server evaluates each round's model), which times such an evaluation likewise, and the
    measured safetensors serialization and load throughput and the aggregation throughput (memory
    traffic per second as ``aggregation_cost`` counts it), all in bytes/s, and ``cold_start_s``,
    what the device's first training task of a run takes beyond a steady one (building the
    model and trainer, the framework's first-step warm-up). ``request_cpu_s`` is the seconds of
    the device's own processor one HTTP request it makes costs beyond its bytes (the client's
    work on the request and its answer), paid on every transfer it makes; ``segment_cpu_s`` is
    the seconds of its processor each :data:`SEGMENT_BYTES` of a transfer's body costs it when
    the link paces the body (an event-loop wake-up and a read per segment), paid while the
    bytes flow; ``persist_cpu_s`` and
    ``persist_io_s`` are what keeping one update on disk before uploading it costs (as the agent
    keeps each result, with fsyncs): seconds of the processor, and seconds waiting for the disk
    beyond them; ``round_overhead_s``
    is the seconds of work a server does outside aggregation and evaluation to start a round:
    deploying the round's model version (serializing and hashing it, finding it among the
    stored versions) and posting the round's tasks; ``task_overhead_s`` is what each training
    task costs beyond its steps (the trainer setting the parameters, building its optimizer,
    drawing the sample order, reading the parameters back).
    """

    name: str
    description: str = ""
    kind: str = SPEC
    source: str = ""
    peak_flops: float
    units: int = 1
    efficiency: float
    scaling_efficiency: float = 1.0
    memory_bytes: float
    memory_bandwidth: float
    disk_bandwidth: float
    jitter: float = 0.0
    # Not hashed: a dict cannot be, and the other fields already tell profiles apart.
    steps: Mapping[str, StepModel] = field(default_factory=dict, hash=False)
    eval_steps: Mapping[str, StepModel] = field(default_factory=dict, hash=False)
    serialize_bytes_per_s: float | None = None
    load_bytes_per_s: float | None = None
    aggregate_bytes_per_s: float | None = None
    cold_start_s: float = 0.0
    request_cpu_s: float = 0.0
    segment_cpu_s: float = 0.0
    persist_cpu_s: float = 0.0
    persist_io_s: float = 0.0
    round_overhead_s: float = 0.0
    task_overhead_s: float = 0.0

    def __post_init__(self) -> None:
        where = f"hardware {self.name}"
        for key in MEASURED_SECONDS:
            seconds = getattr(self, key)
            if not (math.isfinite(seconds) and seconds >= 0):
                raise TopologyError(f"{where}: {key} must be finite and >= 0")
        if self.kind not in PROFILE_KINDS:
            raise TopologyError(f"{where}: kind must be one of {', '.join(PROFILE_KINDS)}")
        if self.kind == MEASURED and not self.steps:
            raise TopologyError(f"{where}: a measured profile needs at least one step model")
        if self.kind == SPEC and self.steps:
            raise TopologyError(f"{where}: only a measured profile carries step models")
        if self.kind == SPEC and self.eval_steps:
            raise TopologyError(f"{where}: only a measured profile carries evaluation step models")
        if self.kind == SPEC and any(getattr(self, key) for key in MEASURED_SECONDS):
            raise TopologyError(
                f"{where}: only a measured profile carries a cold start, a request cost, a "
                "persistence cost or a round overhead"
            )

    @property
    def effective_flops(self) -> float:
        scaling = self.scaling_efficiency if self.units > 1 else 1.0
        return self.peak_flops * self.efficiency * scaling


@dataclass(frozen=True, kw_only=True, slots=True)
class CpuQuota:
    """A CFS bandwidth limit on a device's processor (Linux's ``cpu.cfs_quota_us`` over
    ``cpu.cfs_period_us``, or ``cpu.max``): in every period of ``period_s`` seconds the device
    runs at full speed until it has used ``cores`` x ``period_s`` seconds of processor, then
    waits for the next period. An emulated device is held so; the simulator's prediction of
    an emulated run charges it (``fedsim.sim.compute.QuotaClock``). ``host_cores``, when
    known, is how many cores the host has for all the devices held so: their bursts at a whole
    core's speed wait for one of them, as the emulated agents share the emulating host.
    """

    cores: float
    period_s: float
    host_cores: int | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.cores) and self.cores > 0):
            raise TopologyError(f"cpu quota: cores must be finite and > 0, got {self.cores}")
        if not (math.isfinite(self.period_s) and self.period_s > 0):
            raise TopologyError(f"cpu quota: period_s must be finite and > 0, got {self.period_s}")
        if self.host_cores is not None and self.host_cores < 1:
            raise TopologyError(f"cpu quota: host_cores must be >= 1, got {self.host_cores}")


# slots: a heterogeneous fleet holds one link per device, so each costs as little as it can.
@dataclass(frozen=True, kw_only=True, slots=True)
class LinkProfile:
    """A kind of link: goodput in bytes/s, one-way latency in s, packet loss, latency jitter."""

    name: str
    bandwidth: float
    latency: float
    loss: float = 0.0
    latency_jitter: float = 0.0

    def __post_init__(self) -> None:
        if not (self.bandwidth > 0 and math.isfinite(self.bandwidth)):
            raise TopologyError(f"network {self.name}: bandwidth must be finite and > 0")
        if not (0 <= self.latency < math.inf and 0 <= self.latency_jitter < math.inf):
            raise TopologyError(f"network {self.name}: latency must be finite and >= 0")
        if not 0 <= self.loss < 1:
            raise TopologyError(f"network {self.name}: loss must be in [0, 1)")


@dataclass(frozen=True, kw_only=True)
class Group:
    """A network group of Fig. 3(a): devices behind one switch with one uplink."""

    id: int
    description: str
    uplink: LinkProfile


@dataclass(frozen=True, kw_only=True, slots=True)
class Device:
    """A device of Fig. 3(a). ``attach_to`` is a device id, or None for the group's switch.

    ``speed`` scales everything the device computes against its hardware profile: 2 trains
    twice as fast as the profile says, 0.5 half as fast. A fleet drawn from distributions or
    traces (:mod:`fedsim.core.fleet`) gives each device its own, and its own ``link``, while
    devices of a kind share one profile.

    ``cpu_quota``, when set, holds the device's processor to a CFS quota: its ``speed`` is
    then its average over long stretches, and a short burst of work runs faster (at the
    speed of a whole core, ``speed / cpu_quota.cores``) until the period's quota is spent.
    """

    id: int
    description: str
    group: int
    id_in_group: int
    role: str
    hardware: HardwareProfile
    link: LinkProfile
    attach_to: int | None = None
    speed: float = 1.0
    cpu_quota: CpuQuota | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.speed) and self.speed > 0):
            raise TopologyError(f"device {self.id}: speed must be finite and > 0")

    def with_traits(self, *, hardware: HardwareProfile, link: LinkProfile, speed: float) -> Device:
        """This device with its own hardware, link and speed (a fleet's draws); itself when
        they change nothing. ``dataclasses.replace`` spelled out, which costs about twice as
        much: a fleet of a million devices makes a million of them."""
        if (
            (hardware is self.hardware or hardware == self.hardware)
            and (link is self.link or link == self.link)
            and speed == self.speed
        ):
            return self
        return Device(
            id=self.id,
            description=self.description,
            group=self.group,
            id_in_group=self.id_in_group,
            role=self.role,
            hardware=hardware,
            link=link,
            attach_to=self.attach_to,
            speed=speed,
            cpu_quota=self.cpu_quota,
        )


# Nodes of the network tree: ("device", id), ("switch", group id) and the backbone.
Node = tuple[str, int]
BACKBONE: Node = ("backbone", 0)
# A directed link: (owner node, "up" | "down"); the owner is the lower end of the physical link.
DirectedLink = tuple[Node, str]


@dataclass(frozen=True)
class Topology:
    """A validated device tree with routing between any two devices."""

    name: str
    groups: Mapping[int, Group]
    devices: Mapping[int, Device]
    # Each node below the backbone: its parent, and its two directed links to it (up, down),
    # made once here, so that every path and the network's link tables share them rather
    # than each making tuples of its own (a path in flight per device, at scale).
    _parent: dict[Node, tuple[Node, DirectedLink, DirectedLink]] = field(
        init=False, repr=False, compare=False
    )
    # The chain of nodes from each parent of a device up to the backbone, as path() asks.
    _chains: dict[Node, tuple[Node, ...]] = field(
        init=False, repr=False, compare=False, default_factory=dict
    )
    _server: int = field(init=False, repr=False, compare=False)  # the one server's id
    # Devices that others attach to, by id: a path from or to any other device is its own
    # link, the hops between the two parents, and the other's link.
    _hubs: frozenset[int] = field(init=False, repr=False, compare=False)
    # The hops between two parents, kept per pair that path() asked for (a fleet has few).
    _between: dict[tuple[Node, Node], tuple[DirectedLink, ...]] = field(
        init=False, repr=False, compare=False, default_factory=dict
    )

    def __post_init__(self) -> None:
        # The devices of a group share its switch's node as their parent (equal either way,
        # but one tuple a group rather than one a device).
        switch: dict[int, Node] = {g: ("switch", g) for g in self.groups}
        parent = {node: (BACKBONE, (node, "up"), (node, "down")) for node in switch.values()}
        for d in self.devices.values():
            where = f"topology.devices[id={d.id}]"
            if d.group not in self.groups:
                raise TopologyError(f"{where}.group: no group {d.group}")
            if d.role not in ROLES:
                raise TopologyError(f"{where}.role: {d.role!r} is not one of {', '.join(ROLES)}")
            if d.attach_to is None:
                above = switch[d.group]
            elif d.attach_to not in self.devices:
                raise TopologyError(f"{where}.link.to: no device {d.attach_to}")
            else:
                above = ("device", d.attach_to)
            node: Node = ("device", d.id)
            parent[node] = (above, (node, "up"), (node, "down"))
        object.__setattr__(self, "_parent", parent)
        hubs = {d.attach_to for d in self.devices.values() if d.attach_to is not None}
        object.__setattr__(self, "_hubs", frozenset(hubs))
        # A device's chain is itself and its parent's: walking each parent's once (a fleet has
        # few) finds any cycle, and keeps the chains path() asks for.
        for d in self.devices.values():
            self._above(parent[("device", d.id)][0])  # raises on a cycle
        servers = [d.id for d in self.devices.values() if d.role == SERVER]
        if len(servers) != 1:
            raise TopologyError(f"topology.devices: need exactly one server, found {servers}")
        object.__setattr__(self, "_server", servers[0])

    @property
    def server(self) -> int:
        return self._server

    @property
    def trainers(self) -> list[int]:
        return [d.id for d in self.devices.values() if d.role == TRAINER]

    def link_profile(self, owner: Node) -> LinkProfile:
        """The profile of the physical link between ``owner`` and its parent."""
        kind, ident = owner
        return self.devices[ident].link if kind == "device" else self.groups[ident].uplink

    def link_profiles(self) -> list[LinkProfile]:
        """The profile of every physical link: each device's own link and each group's uplink."""
        return [d.link for d in self.devices.values()] + [g.uplink for g in self.groups.values()]

    def links(self) -> dict[DirectedLink, LinkProfile]:
        """Every directed link with its profile."""
        return {
            link: self.link_profile(n)
            for n, (_, up, down) in self._parent.items()
            for link in (up, down)
        }

    def path(self, src: int, dst: int) -> list[DirectedLink]:
        """Directed links from device ``src`` to device ``dst``: up to the meeting point, down."""
        devices = self.devices
        for end in (src, dst):
            if end not in devices:
                raise TopologyError(f"no device {end}")
        if src == dst:
            return []
        parent = self._parent
        a: Node = ("device", src)
        b: Node = ("device", dst)
        above_a, up_a, _ = parent[a]
        above_b, _, down_b = parent[b]
        if above_a == above_b:  # siblings (a group's devices): one hop up, one down
            return [up_a, down_b]
        hubs = self._hubs
        if src not in hubs and dst not in hubs:
            # Neither lies on the other's way up: between their own links, the hops between
            # their parents, the same for every such pair of devices under those parents.
            key = (above_a, above_b)
            between = self._between.get(key)
            if between is None:
                between = self._between[key] = tuple(self._hops(above_a, above_b))
            return [up_a, *between, down_b]
        return self._hops(a, b)

    def _hops(self, a: Node, b: Node) -> list[DirectedLink]:
        """The directed links from node ``a`` up to where its chain meets ``b``'s, then down to
        ``b``: each chain runs up to the backbone, and they meet where their common tail begins.
        The chains above a device are its parent's, kept (a fleet has few parents)."""
        parent = self._parent
        up = (a, *self._above(parent[a][0]))
        down = (b, *self._above(parent[b][0]))
        i, j = len(up), len(down)
        while i and j and up[i - 1] == down[j - 1]:
            i -= 1
            j -= 1
        hops = [parent[n][1] for n in up[:i]]
        hops += [parent[n][2] for n in reversed(down[:j])]
        return hops

    def _above(self, node: Node) -> tuple[Node, ...]:
        """``node`` and its ancestors up to the backbone, made once per node asked for: path()
        asks only for the parents of devices (switches, and devices others attach to)."""
        chain = self._chains.get(node)
        if chain is None:
            chain = self._chains[node] = tuple(self._chain(node))
        return chain

    def _chain(self, node: Node) -> list[Node]:
        """``node`` and its ancestors up to the backbone; raises where they form a cycle."""
        parent = self._parent
        chain = [node]
        while node != BACKBONE:
            node = parent[node][0]
            chain.append(node)
            if len(chain) > len(parent) + 1:
                raise TopologyError(f"topology: device links form a cycle at {chain[0]}")
        return chain

    def latency(self, path: list[DirectedLink]) -> float:
        return sum(self.link_profile(n).latency for n, _ in path)

    def flow_cap(self, path: list[DirectedLink]) -> float:
        """The rate one TCP flow can reach on a lossy path (Mathis et al., CCR 1997).

        Throughput <= MSS / RTT * sqrt(3 / (2 p)); infinite when the path loses nothing.
        """
        keep = math.prod(1.0 - self.link_profile(n).loss for n, _ in path)
        loss = 1.0 - keep
        rtt = 2 * self.latency(path)
        if loss <= 0 or rtt <= 0:
            return math.inf
        return MSS_BYTES / rtt * math.sqrt(3.0 / (2.0 * loss))


def map_profiles(
    topology: Topology,
    *,
    hardware: Callable[[HardwareProfile], HardwareProfile] = lambda h: h,
    link: Callable[[LinkProfile], LinkProfile] = lambda p: p,
) -> Topology:
    """A copy of ``topology`` with every hardware and link profile passed through a function."""
    groups = {g.id: replace(g, uplink=link(g.uplink)) for g in topology.groups.values()}
    devices = {
        d.id: replace(d, hardware=hardware(d.hardware), link=link(d.link))
        for d in topology.devices.values()
    }
    return Topology(topology.name, groups, devices)


def with_cpu_quotas(topology: Topology, quotas: Mapping[int, CpuQuota]) -> Topology:
    """A copy of ``topology`` whose devices in ``quotas`` are held to their CPU quota."""
    unknown = sorted(set(quotas) - set(topology.devices))
    if unknown:
        raise TopologyError(f"cpu quotas for devices {unknown}, which the topology does not have")
    devices = {
        d.id: replace(d, cpu_quota=quotas[d.id]) if d.id in quotas else d
        for d in topology.devices.values()
    }
    return Topology(topology.name, dict(topology.groups), devices)


def with_speeds_scaled(topology: Topology, factors: Mapping[int, float]) -> Topology:
    """A copy of ``topology`` whose devices in ``factors`` compute that many times as fast."""
    unknown = sorted(set(factors) - set(topology.devices))
    if unknown:
        raise TopologyError(f"speed factors for devices {unknown}, not in the topology")
    bad = {d: f for d, f in factors.items() if not (math.isfinite(f) and f > 0)}
    if bad:
        raise TopologyError(f"speed factors must be finite and > 0, got {bad}")
    devices = {
        d.id: replace(d, speed=d.speed * factors[d.id]) if d.id in factors else d
        for d in topology.devices.values()
    }
    return Topology(topology.name, dict(topology.groups), devices)


def without_jitter(topology: Topology) -> Topology:
    """The same topology with its random variation switched off: expected times only."""
    return map_profiles(
        topology,
        hardware=lambda h: replace(h, jitter=0.0),
        link=lambda p: replace(p, latency_jitter=0.0),
    )
