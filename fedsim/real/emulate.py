"""The topology emulated on this Linux host: network namespaces, shaped links and CPU quotas.

``mode=emulated`` runs every trainer's agent in a network namespace of its own, joined to the
server by the topology's tree: each group is a namespace holding a bridge (its switch), joined
to a backbone namespace's bridge by a veth pair (the group's uplink, shared by all the group's
flows); each device is a namespace whose veth pair joins its group's bridge (or, for a device
attached to another device, that device's bridge). The server stays in the root namespace, on
one veth into its own group. Every directed link is shaped where it leaves its sending end: an
HTB class at the link's rate and, where the kernel has ``sch_netem``, netem's delay and loss;
on a link that several agents' paths cross (a group's uplink, the server's), each agent's
traffic has a class of its own under the link's, and the classes take turns a packet at a
time, so that the agents share the link evenly, as the simulator's max-min model has them
share it; every interface takes packets of one TCP segment (no GSO), so that htb holds short
transfers to the rate too. Where the kernel has no netem, latency comes from a relay instead
(:mod:`fedsim.real.delay_relay`): each agent dials its own port of it on the server's address,
and it holds the bytes of each direction for the one-way latency of the agent's path to the
server (:meth:`Emulation.route`); loss and jitter then stay unemulated.
Each agent runs in a CPU cgroup whose CFS quota gives it the share of one of this host's cores
that its profile's speed is of the host's, over a period short enough (:func:`cfs_period_us`)
that the agent runs in small slices, as a slower processor would, not in bursts of a whole
long period. When a profile would need more than the host has,
the whole run is slowed by one factor: quotas divided by it, link rates divided by it, delays
multiplied by it, so that every time in the run is that factor times the time it emulates.

Everything made carries the prefix ``fse`` and a run tag, and a state file per run under
:data:`STATE_DIR` names its owner; a run removes all it made on exit, and any start removes
what dead runs left behind. Needs root, iproute2 (``ip``, ``tc``) and the cgroup cpu controller.
No Hydra here: :mod:`fedsim.runtimes.emulated` hands this module the topology and the figures.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import math
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from fedsim.core.topology import LinkProfile, Node, Topology

log = logging.getLogger(__name__)

PREFIX = "fse"  # every namespace, root-namespace link and run cgroup of an emulation
STATE_DIR = Path("/run/fedsim-emulated")  # one JSON file per live emulation: its tag and owner
CGROUP_V1 = Path("/sys/fs/cgroup/cpu")
CGROUP_V2 = Path("/sys/fs/cgroup")
CGROUP_PARENT = "fedsim-emulated"  # the cgroup under which each run makes its own
# The kernel's bounds on a CFS period (cpu.cfs_period_us, cpu.max) and its smallest quota.
MIN_PERIOD_US, MAX_PERIOD_US = 1_000, 1_000_000
MIN_QUOTA_US = 1_000
# The processor an agent may run for at a stretch before it is throttled (cfs_period_us).
QUOTA_SLICE_US = 2_000
RELAY_CGROUP = "relay"  # the run's latency relay: in the run's cgroup, without a quota
# How an emulation delays its links (``latency_mechanism``); NONE: it does not.
NETEM, RELAY, NONE = "netem", "relay", "none"
# Without netem, the relay delays the links only where some agent's path to the server is at
# least this slow one way: the relay is a process of its own whose processor time the agents'
# share of the host pays, and below a few milliseconds that costs a run more than the delay it
# would add (keti's 2-3 ms paths: rounds 20-60 ms longer with the relay, bench_fidelity).
RELAY_MIN_DELAY_S = 0.005
# Links carry TCP segments of 1448 payload bytes (1500-byte MTU, less IP and TCP headers with
# timestamps, Linux's default) in 1514-byte frames, which is what tc counts: the rate a link is
# shaped at is its profile's goodput times this.
FRAME_OVERHEAD = 1514 / 1448
# Bytes an agent's class of a shared link sends in its turn: one frame, so that the agents
# take turns a packet at a time.
LEAF_QUANTUM = 1514
SUBNETS = [ipaddress.ip_network(f"10.{n}.0.0/16") for n in range(200, 250)]  # private, /16 each


class EmulationUnavailable(RuntimeError):
    """This host cannot emulate: the message is one line saying what is missing."""


def cgroup_root() -> tuple[Path, int]:
    """Where CPU cgroups are made and the cgroup version: v1's cpu hierarchy, else v2."""
    if (CGROUP_V1 / "cpu.cfs_quota_us").exists():
        return CGROUP_V1, 1
    return CGROUP_V2, 2


def check_host() -> None:
    """Raise :class:`EmulationUnavailable` unless this process may emulate on this host."""
    if os.geteuid() != 0:
        raise EmulationUnavailable(
            "mode=emulated needs root (network namespaces, tc and cgroups); "
            "run as root, or use mode=real"
        )
    missing = [tool for tool in ("ip", "tc") if shutil.which(tool) is None]
    if missing:
        raise EmulationUnavailable(f"mode=emulated needs iproute2: {', '.join(missing)} not found")
    root, version = cgroup_root()
    if version == 2 and "cpu" not in (root / "cgroup.controllers").read_text().split():
        raise EmulationUnavailable(
            "mode=emulated needs the cgroup cpu controller (/sys/fs/cgroup/cpu on v1, "
            "'cpu' in /sys/fs/cgroup/cgroup.controllers on v2)"
        )


def measure_host_flops(size: int = 384, repeats: int = 7) -> float:
    """One core's float32 matmul speed in FLOP/s: the best of ``repeats`` products."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # an agent trains on one thread
    try:
        a, b = torch.randn(size, size), torch.randn(size, size)
        torch.mm(a, b)  # warm up
        best = math.inf
        for _ in range(repeats):
            start = time.perf_counter()
            torch.mm(a, b)
            best = min(best, time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)
    return 2 * size**3 / best


def cfs_period_us(cores: float) -> int:
    """The CFS period, in microseconds, that holds a group to ``cores`` with a quota of
    :data:`QUOTA_SLICE_US` (2 ms), within the kernel's bounds on a period (1 ms to 1 s).

    A quota is handed out afresh at the start of every period, so a task that wakes after a
    pause runs unthrottled until it has used up one period's quota. On this host, with a 100 ms
    period, 20 ms of work at 0.25 core took 20 ms, not 80, and a round took two or three
    periods depending on where in a period its work began. A short quota bounds such a burst.
    A short quota may have a price: each time a throttled agent runs again, its caches hold
    what ran meanwhile, so a training step can cost more processor (a probe measured 1.1-1.2x
    with 2 ms, 1.0-1.1x with 10 ms, for three agents). What holding the agents costs their
    step is measured in every run (:mod:`fedsim.real.cpu_probe`) and charged in its
    prediction. Of 1, 2, 5 and 10 ms, 2 ms gave the smallest p90 error in bench_fidelity
    (benchmarks/README.md).
    """
    if not cores > 0:
        raise ValueError(f"a CPU quota must be > 0 cores, got {cores!r}")
    return min(MAX_PERIOD_US, max(MIN_PERIOD_US, math.ceil(QUOTA_SLICE_US / cores)))


def usable_cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0))


# ---------------------------------------------------------------------------------------------
# The plan: what each agent's quota and each link's shaping is, and the slow-down factor.


@dataclass(frozen=True)
class Shaping:
    """One directed link as tc shapes it: rate in bit/s, one-way delay and its jitter in s."""

    rate_bps: float
    delay_s: float
    jitter_s: float
    loss: float


def shaping(profile: LinkProfile, factor: float) -> Shaping:
    """``profile`` slowed ``factor`` times, in tc's terms (wire rate, not goodput)."""
    return Shaping(
        rate_bps=profile.bandwidth * 8 * FRAME_OVERHEAD / factor,
        delay_s=profile.latency * factor,
        jitter_s=profile.latency_jitter * factor,
        loss=profile.loss,
    )


@dataclass(frozen=True)
class Plan:
    """An emulation's figures: ``quotas`` in cores per agent, after the slow-down ``factor``."""

    topology: Topology
    agents: tuple[int, ...]
    host_flops: float  # one of this host's cores, FLOP/s
    cores: float  # what the agents may use together
    factor: float  # every time in the run is this many times the time it emulates
    shares: dict[int, float]  # cores each agent's profile is worth, before the factor
    quotas: dict[int, float]  # cores each agent gets: share / factor
    periods_us: dict[int, int]  # each agent's CFS period, by cfs_period_us

    def describe(self) -> dict[str, Any]:
        """The figures a report states (JSON-ready)."""
        return {
            "slowdown_factor": self.factor,
            "host_gflops": self.host_flops / 1e9,
            "cores": self.cores,
            "cpu_quota_cores": {str(d): q for d, q in self.quotas.items()},
            "cpu_period_s": {str(d): p / 1e6 for d, p in self.periods_us.items()},
            "profile_cores": {str(d): s for d, s in self.shares.items()},
        }


def plan(topology: Topology, agents: Sequence[int], *, host_flops: float, cores: float) -> Plan:
    """Quotas and the slow-down factor for ``agents`` on a host whose core does ``host_flops``.

    An agent trains on one thread, so it may get at most one core, and the agents together
    at most ``cores``; the factor is the least that keeps both true (1 when neither binds).
    """
    if not host_flops > 0:
        raise ValueError(f"host speed must be > 0 FLOP/s, got {host_flops!r}")
    if not cores > 0:
        raise ValueError(f"cores must be > 0, got {cores!r}")
    unknown = [d for d in agents if d not in topology.devices]
    if unknown:
        raise ValueError(f"agents {unknown} are not devices of topology {topology.name!r}")
    shares = {
        d: topology.devices[d].hardware.effective_flops * topology.devices[d].speed / host_flops
        for d in agents
    }
    factor = max([1.0, *shares.values(), sum(shares.values()) / cores])
    quotas = {d: s / factor for d, s in shares.items()}
    periods = {d: cfs_period_us(q) for d, q in quotas.items()}
    return Plan(topology, tuple(agents), host_flops, cores, factor, shares, quotas, periods)


# ---------------------------------------------------------------------------------------------
# Running commands, and the state that lets a later start clean up after a crash.


def _run(
    *cmd: str, check: bool = True, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, input=stdin)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {proc.stderr.strip() or proc.returncode}")
    return proc


def _start_time(pid: int) -> str | None:
    """The start time of process ``pid`` (to tell it from a later one with the same id)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _alive(state: dict[str, Any]) -> bool:
    return _start_time(int(state["pid"])) == state["start"]


def _namespaces() -> list[str]:
    out = _run("ip", "netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(PREFIX)]


def _root_links() -> list[str]:
    out = _run("ip", "-o", "link", "show", check=False).stdout
    names = [line.split(":")[1].strip().split("@")[0] for line in out.splitlines()]
    return [n for n in names if n.startswith(PREFIX)]


def _kill_all(pids: Sequence[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _remove_cgroup(group: Path) -> None:
    """Remove ``group`` and its children, ending the processes still in them."""
    if not group.exists():
        return
    for child in sorted((p for p in group.iterdir() if p.is_dir()), reverse=True):
        _remove_cgroup(child)
    for _ in range(50):  # the killed take a moment to leave
        pids = [int(p) for p in (group / "cgroup.procs").read_text().split()]
        if not pids:
            break
        _kill_all(pids)
        time.sleep(0.02)
    with contextlib.suppress(OSError):
        group.rmdir()


def remove_run(tag: str, state_dir: Path = STATE_DIR) -> None:
    """Remove everything emulation ``tag`` made: its agents, namespaces, links, cgroups."""
    names = [ns for ns in _namespaces() if ns.startswith(f"{PREFIX}{tag}-")]
    for ns in names:  # processes keep a deleted namespace alive
        pids = _run("ip", "netns", "pids", ns, check=False).stdout.split()
        _kill_all([int(p) for p in pids])
    for ns in names:
        _run("ip", "netns", "del", ns, check=False)
    for link in _root_links():
        if link.startswith(f"{PREFIX}{tag}"):
            _run("ip", "link", "del", link, check=False)
    root, _ = cgroup_root()
    _remove_cgroup(root / CGROUP_PARENT / f"{PREFIX}{tag}")
    with contextlib.suppress(OSError):
        (root / CGROUP_PARENT).rmdir()  # only when no other run uses it
    (state_dir / f"{tag}.json").unlink(missing_ok=True)


def _tag_of(name: str) -> str:
    return name[len(PREFIX) : len(PREFIX) + 6]


def clean_leftovers(state_dir: Path = STATE_DIR) -> list[str]:
    """Remove what emulations whose owner is gone left behind; the tags removed.

    A run is live while the process named in its state file runs; anything with the prefix
    whose tag no live run claims is a leftover (of a crash, or of a SIGKILL).
    """
    live = set()
    if state_dir.exists():
        for path in state_dir.glob("*.json"):
            with contextlib.suppress(OSError, ValueError, KeyError):
                if _alive(json.loads(path.read_text())):
                    live.add(path.stem)
    root, _ = cgroup_root()
    tags = {_tag_of(n) for n in _namespaces() + _root_links()}
    if (root / CGROUP_PARENT).exists():
        tags |= {_tag_of(p.name) for p in (root / CGROUP_PARENT).iterdir() if p.is_dir()}
    if state_dir.exists():
        tags |= {p.stem for p in state_dir.glob("*.json")}
    dead = sorted(tags - live)
    for tag in dead:
        log.warning("emulated mode: removing what an ended run left behind (%s%s)", PREFIX, tag)
        remove_run(tag, state_dir)
    return dead


def netem_available(ns: str) -> bool:
    """Whether this kernel has ``sch_netem`` (delay and loss), tried on scratch namespace ``ns``."""
    try:
        _run("ip", "netns", "add", ns)
        ok = _run("ip", "-n", ns, "link", "set", "lo", "up", check=False).returncode == 0
        ok = (
            ok
            and _run(
                "ip",
                "netns",
                "exec",
                ns,
                "tc",
                "qdisc",
                "add",
                "dev",
                "lo",
                "root",
                "netem",
                "delay",
                "1ms",
                check=False,
            ).returncode
            == 0
        )
        return ok
    finally:
        _run("ip", "netns", "del", ns, check=False)


# ---------------------------------------------------------------------------------------------
# The emulation itself.


@dataclass
class _Node:
    """A namespace of the emulated tree: the backbone, a group's switch, or a device."""

    ns: str
    bridge: bool  # holds a bridge (the backbone, a switch, a device others attach to)
    address: str | None = None  # a device's address


@dataclass
class Emulation:
    """The emulated network and CPU cgroups of ``plan``, for the duration of a ``with`` block.

    ``server_address`` is where the server must listen (in the root namespace);
    :meth:`launcher` is the command prefix that starts a device's agent in its namespace and
    its cgroup; :meth:`route` is the URL the agent dials for the server (the latency relay's,
    without netem); :meth:`apply_quotas` holds every agent to its quota.
    """

    plan: Plan
    state_dir: Path = STATE_DIR
    tag: str = field(default_factory=lambda: secrets.token_hex(3))
    use_netem: bool = True  # False: the relay delays the links even where netem could
    # Without netem: the least one-way delay of some agent's path for which the relay runs.
    relay_min_delay_s: float = RELAY_MIN_DELAY_S
    netem: bool = field(init=False, default=False)
    # Whether the relay delays the agents' traffic (set on entering): no netem, and some
    # agent's path to the server at least ``relay_min_delay_s`` one way.
    relayed: bool = field(init=False, default=False)
    # Without netem: the latency relay and each agent's port on it (started by route()).
    relay: subprocess.Popen[str] | None = field(init=False, default=None)
    relay_ports: dict[int, int] = field(init=False, default_factory=dict)
    server_address: str = field(init=False, default="")
    nodes: dict[Node, _Node] = field(init=False, default_factory=dict)
    shaped: dict[str, dict[str, Shaping]] = field(init=False, default_factory=dict)
    cgroup: Path = field(init=False)
    # Each agent's cgroup counters when its quota was applied (cpu_stats counts from there).
    _held_from: dict[int, dict[str, float]] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        root, self._cgroup_version = cgroup_root()
        self.cgroup = root / CGROUP_PARENT / f"{PREFIX}{self.tag}"

    # -- lifetime -----------------------------------------------------------------------------

    def __enter__(self) -> Emulation:
        check_host()
        clean_leftovers(self.state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        state = {"tag": self.tag, "pid": os.getpid(), "start": _start_time(os.getpid())}
        # Written before anything is made: a crash from here on leaves a state file that
        # names a dead owner, and the next start removes all with this tag.
        (self.state_dir / f"{self.tag}.json").write_text(json.dumps(state))
        try:
            self.netem = self.use_netem and netem_available(f"{PREFIX}{self.tag}-probe")
            delays = [max(self.one_way_delay(d).values()) for d in self.plan.agents]
            slowest = max(delays, default=0.0)
            self.relayed = not self.netem and slowest >= self.relay_min_delay_s
            self._build_network()
            self._make_cgroups()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        if not self.netem:
            latency = (
                "their latency comes from a relay"
                if self.relayed
                else f"their latency (all paths under {self.relay_min_delay_s * 1e3:g} ms one "
                "way) is not emulated"
            )
            log.warning(
                "emulated mode: this kernel has no sch_netem; links are rate-shaped by tc, "
                "%s, their loss and jitter are not emulated",
                latency,
            )
        return self

    def __exit__(self, *exc: object) -> None:
        if self.relay is not None:
            # Asked to end first: remove_run would kill it anyway, as it is in the run's cgroup.
            self.relay.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.relay.wait(timeout=5)
        remove_run(self.tag, self.state_dir)
        if self.relay is not None:
            self.relay.wait()
            self.relay = None

    def describe(self) -> dict[str, Any]:
        """What is emulated, for the run's summary (JSON-ready)."""
        return {
            **self.plan.describe(),
            # netem delays and drops packets; the relay delays the agents' traffic to and
            # from the server and loses nothing.
            "latency_mechanism": NETEM if self.netem else RELAY if self.relayed else NONE,
            "latency_and_loss_emulated": self.netem,
            "loss_emulated": self.netem,
            "one_way_delay_s": {str(d): self.one_way_delay(d) for d in self.plan.agents},
            "server_address": self.server_address,
            "links": {
                name: {d: asdict(s) for d, s in directions.items()}
                for name, directions in self.shaped.items()
            },
        }

    # -- network ------------------------------------------------------------------------------

    def _free_subnet(self) -> ipaddress.IPv4Network:
        routes = _run("ip", "-4", "route", "show", "table", "all", check=False).stdout
        used = []
        for line in routes.split("\n"):
            word = line.split()[0] if line.split() else ""
            with contextlib.suppress(ValueError):
                used.append(ipaddress.ip_network(word, strict=False))
        for net in SUBNETS:
            if not any(net.overlaps(u) for u in used if u.prefixlen > 0):
                return net
        raise EmulationUnavailable("mode=emulated: no free private /16 in 10.200-249.0.0")

    def _build_network(self) -> None:
        topo = self.plan.topology
        net = self._free_subnet()
        hosts = net.hosts()
        self.server_address = str(next(hosts))
        chains = {dev: _chain(topo, dev) for dev in [topo.server, *self.plan.agents]}
        server_node: Node = ("device", topo.server)
        for dev, chain in chains.items():
            if dev != topo.server and server_node in chain:
                raise ValueError(
                    f"mode=emulated: device {dev} is attached to the server; the server "
                    "runs in the root namespace and cannot be a switch"
                )
        # Parents before children: the backbone, then each chain from the top down.
        order: list[Node] = [("backbone", 0)]
        for chain in chains.values():
            for node in reversed(chain):
                if node not in order:
                    order.append(node)
        parents = {c[i]: c[i + 1] for c in chains.values() for i in range(len(c) - 1)}
        with_children = set(parents.values())
        shape_later: list[tuple[Node, tuple[str | None, str], tuple[str | None, str]]] = []
        for node in order:
            if node == server_node:
                continue
            kind, ident = node
            ns = f"{PREFIX}{self.tag}-{kind[0]}{ident}"
            is_device = kind == "device"
            self.nodes[node] = _Node(
                ns,
                bridge=node in with_children or not is_device,
                address=str(next(hosts)) if is_device else None,
            )
            _run("ip", "netns", "add", ns)
            _run("ip", "-n", ns, "link", "set", "lo", "up")
            if self.nodes[node].bridge:
                _run("ip", "-n", ns, "link", "add", "name", "br0", "type", "bridge")
                _one_segment(ns, "br0")
                _run("ip", "-n", ns, "link", "set", "br0", "up")
            if node in parents:
                shape_later.append(self._join(node, parents[node], net.prefixlen))
        # The server: one veth from the root namespace into its parent's bridge.
        parent = self.nodes[parents[server_node]]
        root_end, child_end = f"{PREFIX}{self.tag}s", f"d{topo.server}"
        _run(
            "ip",
            "link",
            "add",
            "name",
            root_end,
            "type",
            "veth",
            "peer",
            "name",
            child_end,
            "netns",
            parent.ns,
        )
        _run("ip", "addr", "add", f"{self.server_address}/{net.prefixlen}", "dev", root_end)
        _one_segment(None, root_end)
        _one_segment(parent.ns, child_end)
        _run("ip", "link", "set", root_end, "up")
        _run("ip", "-n", parent.ns, "link", "set", child_end, "master", "br0", "up")
        shape_later.append((server_node, (None, root_end), (parent.ns, child_end)))
        # Shaped once every device has its address: a link's agents (those whose path to the
        # server crosses it) share it by their addresses.
        for node, up, down in shape_later:
            crossing = (
                self.plan.agents
                if node == server_node
                else [d for d in self.plan.agents if node in chains[d]]
            )
            agents = [self.nodes[("device", d)].address for d in crossing]
            self._shape_link(node, up=up, down=down, agents=[a for a in agents if a])

    def _join(
        self, node: Node, parent_node: Node, prefixlen: int
    ) -> tuple[Node, tuple[str | None, str], tuple[str | None, str]]:
        """The veth pair of ``node``'s link to ``parent_node``, addressed and bridged; the
        interfaces to shape each direction on (up, down)."""
        child, parent = self.nodes[node], self.nodes[parent_node]
        kind, ident = node
        up_end, down_end = "uplink", f"{kind[0]}{ident}"
        _run(
            "ip",
            "link",
            "add",
            "name",
            up_end,
            "netns",
            child.ns,
            "type",
            "veth",
            "peer",
            "name",
            down_end,
            "netns",
            parent.ns,
        )
        _one_segment(child.ns, up_end)
        _one_segment(parent.ns, down_end)
        _run("ip", "-n", parent.ns, "link", "set", down_end, "master", "br0", "up")
        if child.bridge:
            _run("ip", "-n", child.ns, "link", "set", up_end, "master", "br0", "up")
        else:
            _run("ip", "-n", child.ns, "link", "set", up_end, "up")
        if child.address is not None:
            where = "br0" if child.bridge else up_end
            _run("ip", "-n", child.ns, "addr", "add", f"{child.address}/{prefixlen}", "dev", where)
        return node, (child.ns, up_end), (parent.ns, down_end)

    def _shape_link(
        self,
        node: Node,
        *,
        up: tuple[str | None, str],
        down: tuple[str | None, str],
        agents: Sequence[str],
    ) -> None:
        """Shape both directions of ``node``'s link, each on the interface it leaves by;
        ``agents``: the addresses of the agents whose traffic crosses it."""
        profile = self.plan.topology.link_profile(node)
        shape = shaping(profile, self.plan.factor)
        self.shaped[f"{node[0]} {node[1]}"] = {"up": shape, "down": shape}
        for ns, dev in (up, down):
            self._qdisc(ns, dev, shape, agents if len(agents) > 1 else [])

    def _qdisc(self, ns: str | None, dev: str, s: Shaping, agents: Sequence[str]) -> None:
        """Shape ``dev`` to ``s``; with ``agents`` (the addresses of the agents whose traffic
        crosses it), each agent's traffic gets a class of its own under the link's, served in
        turn a packet at a time: the agents share the link evenly, as the flow model shares
        it (max-min), where one queue for all would let whichever TCP flow got ahead keep its
        lead (a shared uplink's downloads then ended one after the other, not together).
        Traffic of no agent (ARP, say) takes a class of its own too."""
        rate = f"{max(1, round(s.rate_bps))}bit"
        leaves = ["1:1"]
        default = "1"
        if agents:
            default = "2"
            share = f"{max(1, round(s.rate_bps / (len(agents) + 1)))}bit"
            leaves = [f"1:{minor:x}" for minor in range(2, 2 + len(agents) + 1)]
        # One tc process reads them all (-batch): a fleet's shared links take hundreds.
        lines = [
            f"qdisc add dev {dev} root handle 1: htb default {default}",
            f"class add dev {dev} parent 1: classid 1:1 htb rate {rate} ceil {rate}",
        ]
        if agents:
            lines += [
                f"class add dev {dev} parent 1:1 classid {leaf} htb rate {share} ceil {rate} "
                f"quantum {LEAF_QUANTUM}"
                for leaf in leaves
            ]
            lines += [
                f"filter add dev {dev} parent 1: protocol ip prio 1 u32 "
                f"match ip {end} {address}/32 flowid {leaf}"
                for address, leaf in zip(agents, leaves[1:], strict=True)
                for end in ("src", "dst")  # the agent's packets either way
            ]
        if self.netem and (s.delay_s > 0 or s.loss > 0):
            netem = f"netem limit 100000 delay {round(s.delay_s * 1e6)}us"
            if s.jitter_s > 0:
                netem += f" {round(s.jitter_s * 1e6)}us distribution normal"
            if s.loss > 0:
                netem += f" loss {100 * s.loss:.6f}%"
            lines += [
                f"qdisc add dev {dev} parent {leaf} handle {0x10 + i:x}: {netem}"
                for i, leaf in enumerate(leaves)
            ]
        tc = ["tc"] if ns is None else ["ip", "netns", "exec", ns, "tc"]
        _run(*tc, "-batch", "-", stdin="\n".join(lines) + "\n")

    def one_way_delay(self, dev: int) -> dict[str, float]:
        """The latency of agent ``dev``'s path to the server (``up``) and back (``down``), in
        s, slowed by the plan's factor: what the relay holds each direction's bytes for."""
        topo, factor = self.plan.topology, self.plan.factor
        return {
            "up": topo.latency(topo.path(dev, topo.server)) * factor,
            "down": topo.latency(topo.path(topo.server, dev)) * factor,
        }

    def route(self, dev: int, url: str) -> str:
        """The URL agent ``dev`` dials for the server at ``url``: ``url`` itself where netem
        delays the links or no path is slow enough for the relay (``relayed``), else the
        agent's port on the latency relay (which the first call starts, towards ``url``'s port
        on the server's address)."""
        if not self.relayed:
            return url
        if self.relay is None:
            port = urlsplit(url).port
            if port is None:
                raise ValueError(f"the server's url {url!r} names no port")
            self._start_relay(port)
        parts = urlsplit(url)
        netloc = f"{self.server_address}:{self.relay_ports[dev]}"
        return urlunsplit(parts._replace(netloc=netloc))

    def _start_relay(self, port: int) -> None:
        """The run's latency relay, in the run's cgroup (so that removing the run, or the
        next start after a crash, ends it), one port per agent."""
        group = self.cgroup / RELAY_CGROUP
        group.mkdir(exist_ok=True)
        routes = []
        for dev in self.plan.agents:
            delay = self.one_way_delay(dev)
            routes += ["--route", f"{dev}:{delay['up']!r}:{delay['down']!r}"]
        cmd = [sys.executable, "-m", "fedsim.real.delay_relay"]
        cmd += ["--upstream", f"{self.server_address}:{port}", "--listen", self.server_address]
        enter = 'echo $$ > "$0" && exec "$@"'
        # Its errors go to an unnamed file: nothing to leave behind, and no pipe to fill up.
        with tempfile.TemporaryFile("w+") as errors:
            self.relay = subprocess.Popen(
                ["sh", "-c", enter, str(group / "cgroup.procs"), *cmd, *routes],
                stdout=subprocess.PIPE,
                stderr=errors,
                stdin=subprocess.DEVNULL,
                text=True,
            )
            assert self.relay.stdout is not None
            line = self.relay.stdout.readline()  # the ports, once it listens; "" if it failed
            if not line:
                self.relay.wait()
                errors.seek(0)
                last = (errors.read().strip().splitlines() or [""])[-1]
                raise RuntimeError(f"the latency relay did not start: {last}")
        self.relay_ports = {int(d): p for d, p in json.loads(line)["ports"].items()}

    def relay_cpu_s(self) -> float | None:
        """The processor seconds the latency relay has used (host time the agents' quotas do
        not hold and the prediction does not charge); None without a relay."""
        if self.relay is None:
            return None
        try:
            return _processes_cpu_s(self.cgroup / RELAY_CGROUP)
        except OSError:
            return None

    def namespace(self, dev: int) -> str:
        """The network namespace of agent ``dev``."""
        return self.nodes[("device", dev)].ns

    def address(self, dev: int) -> str:
        """Agent ``dev``'s address."""
        address = self.nodes[("device", dev)].address
        assert address is not None
        return address

    # -- CPU ----------------------------------------------------------------------------------

    def _make_cgroups(self) -> None:
        if self._cgroup_version == 2:
            # v2 hands the cpu controller down one level at a time.
            parent = self.cgroup.parent
            parent.mkdir(exist_ok=True)
            for level in (parent.parent, parent):
                (level / "cgroup.subtree_control").write_text("+cpu")
            self.cgroup.mkdir()
            (self.cgroup / "cgroup.subtree_control").write_text("+cpu")
        else:
            self.cgroup.mkdir(parents=True)
        for dev in self.plan.agents:
            (self.cgroup / f"d{dev}").mkdir()

    def launcher(self, dev: int) -> list[str]:
        """The prefix that starts a command as agent ``dev``: in its cgroup, then its
        namespace (``ip netns exec`` execs the command in place, so the pid stays)."""
        procs = self.cgroup / f"d{dev}" / "cgroup.procs"
        enter = 'echo $$ > "$0" && exec "$@"'
        return ["sh", "-c", enter, str(procs), "ip", "netns", "exec", self.namespace(dev)]

    def apply_quotas(self) -> None:
        """Hold each agent to its quota (agents start unthrottled: starting up is not part
        of the device being emulated)."""
        self.count_cpu_from_now()  # what starting up used is not the held device's
        for dev, cores in self.plan.quotas.items():
            period = self.plan.periods_us[dev]
            quota = max(MIN_QUOTA_US, round(cores * period))
            group = self.cgroup / f"d{dev}"
            if self._cgroup_version == 2:
                (group / "cpu.max").write_text(f"{quota} {period}")
            else:
                (group / "cpu.cfs_period_us").write_text(str(period))
                (group / "cpu.cfs_quota_us").write_text(str(quota))

    def lift_quotas(self) -> None:
        """Let every agent use the CPU unthrottled again: stopping is not part of the emulated
        device either, and an agent held to a few per cent of a core takes seconds to exit."""
        for dev in self.plan.agents:
            group = self.cgroup / f"d{dev}"
            if self._cgroup_version == 2:
                (group / "cpu.max").write_text(f"max {self.plan.periods_us[dev]}")
            else:
                (group / "cpu.cfs_quota_us").write_text("-1")

    def count_cpu_from_now(self) -> None:
        """Start :meth:`cpu_stats`'s count afresh: what the agents' cgroups ran until now
        (starting up, a probe run in them) is not the held devices' work."""
        for dev in self.plan.agents:
            usage = self._usage(dev)
            if usage is not None:
                self._held_from[dev] = usage

    def cpu_stats(self) -> dict[str, dict[str, float]]:
        """How each agent's cgroup fared while held to its quota (since
        :meth:`count_cpu_from_now`, which :meth:`apply_quotas` calls),
        by device id (JSON-ready): the kernel's ``nr_periods`` (CFS periods in which it ran),
        ``nr_throttled`` (periods whose quota it used up) and ``throttled_s`` (time spent
        throttled) from ``cpu.stat``, and ``cpu_s``, the processor seconds its processes used
        (v2: the group's ``usage_usec``; v1, whose cpu hierarchy does not count usage: the
        user and system time of its processes, from /proc, in clock ticks, so that an agent
        restarted meanwhile, by an outage, is not counted right)."""
        stats = {}
        for dev in self.plan.agents:
            now = self._usage(dev)
            if now is None:
                continue  # the group is gone (a run ending abnormally): nothing to tell
            before = self._held_from.get(dev, dict.fromkeys(now, 0.0))
            stats[str(dev)] = {key: now[key] - before.get(key, 0.0) for key in now}
        return stats

    def _usage(self, dev: int) -> dict[str, float] | None:
        """Agent ``dev``'s cgroup's counters as :meth:`cpu_stats` reports them, from its
        creation; None when it cannot be read."""
        group = self.cgroup / f"d{dev}"
        try:
            fields = {
                key: int(value)
                for key, value in (
                    line.split() for line in (group / "cpu.stat").read_text().splitlines()
                )
            }
            if self._cgroup_version == 2:
                throttled_s = fields.get("throttled_usec", 0) / 1e6
                cpu_s = fields.get("usage_usec", 0) / 1e6
            else:
                throttled_s = fields.get("throttled_time", 0) / 1e9
                cpu_s = _processes_cpu_s(group)
        except (OSError, ValueError):
            return None
        return {
            "nr_periods": fields.get("nr_periods", 0),
            "nr_throttled": fields.get("nr_throttled", 0),
            "throttled_s": throttled_s,
            "cpu_s": cpu_s,
        }

    def quota(self, dev: int) -> float:
        """The cores agent ``dev``'s cgroup allows now (inf when unlimited)."""
        group = self.cgroup / f"d{dev}"
        if self._cgroup_version == 2:
            quota, period = (group / "cpu.max").read_text().split()
            return math.inf if quota == "max" else int(quota) / int(period)
        quota_us = int((group / "cpu.cfs_quota_us").read_text())
        period_us = int((group / "cpu.cfs_period_us").read_text())
        return math.inf if quota_us < 0 else quota_us / period_us


def _processes_cpu_s(group: Path) -> float:
    """User + system seconds of the processes in cgroup ``group`` (from /proc/PID/stat)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in (group / "cgroup.procs").read_text().split():
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile
        total += int(fields[11]) + int(fields[12])  # utime, stime: fields 14 and 15 of stat
    return total / ticks


def _one_segment(ns: str | None, dev: str) -> None:
    """Make ``dev`` (in namespace ``ns``, or the root one) take packets of one TCP segment.

    By default TCP hands a veth super-packets of up to 64 kB (GSO) that are cut into segments
    only where they leave the host, and htb lets a packet through whenever its class has any
    tokens left, whatever its size: a link then carries a short transfer faster than its rate
    (a 154 kB model over 20 Mbit/s in 52 ms instead of 61.5 ms, measured on this host). With
    one segment per packet, as on a physical link, htb keeps the rate (61.4 ms)."""
    ip = ["ip"] if ns is None else ["ip", "-n", ns]
    _run(*ip, "link", "set", "dev", dev, "gso_max_segs", "1")


def _chain(topology: Topology, dev: int) -> list[Node]:
    """``dev``'s node and its ancestors up to the backbone."""
    # A path from a device to a peer under the backbone goes up through every ancestor.
    node: Node = ("device", dev)
    chain = [node]
    while chain[-1] != ("backbone", 0):
        kind, ident = chain[-1]
        if kind == "device":
            d = topology.devices[ident]
            chain.append(("switch", d.group) if d.attach_to is None else ("device", d.attach_to))
        else:
            chain.append(("backbone", 0))
    return chain


@contextlib.contextmanager
def sigterm_as_exit() -> Iterator[None]:
    """While open, SIGTERM ends this process as Ctrl-C would: through every ``finally``, so
    that the emulation is removed. Only the main thread may set handlers; elsewhere a no-op."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
