"""Structured configs (the YAML's schema) and their conversion into the engine's types.

Hydra composes ``conf/`` against these dataclasses, so an unknown key or a wrong type is an error
at composition. :func:`build` then checks values and references (bandwidths, profiles, device
ids) and turns the config into plain core objects; every problem is a :class:`ConfigError` whose
message starts with the path of the offending field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from fedsim.core.experiment import CrossoverGrid
from fedsim.core.topology import (
    Device,
    Group,
    HardwareProfile,
    LinkProfile,
    Topology,
    TopologyError,
)
from fedsim.core.workload import DatasetSpec

GB = 1e9
MB = 1e6


class ConfigError(ValueError):
    """A configuration value or reference that cannot work; the message names the field."""


# -- schema ---------------------------------------------------------------------------------


@dataclass
class AcceleratorConf:
    model: str = MISSING
    count: int = 1
    peak_tflops: float = MISSING  # fp32 peak of one unit
    memory_gb: float = 0.0
    memory_bandwidth_gbps: float = MISSING


@dataclass
class HardwareConf:
    description: str = ""
    cpu_model: str = ""
    cpu_cores: int = 1
    cpu_ghz: float = 1.0
    cpu_peak_gflops: float = MISSING
    memory_gb: float = MISSING
    memory_bandwidth_gbps: float = MISSING
    disk_write_mbps: float = 500.0
    accelerator: AcceleratorConf | None = None
    train_on: str = "accelerator"
    efficiency: float = MISSING
    scaling_efficiency: float = 1.0
    jitter: float = 0.0


@dataclass
class NetworkConf:
    description: str = ""
    bandwidth_mbps: float = MISSING
    latency_ms: float = MISSING
    loss: float = 0.0
    jitter_ms: float = 0.0


@dataclass
class LinkConf:
    network: str = MISSING
    to: int | None = None  # a device to attach to; by default the group's switch


@dataclass
class DeviceConf:
    id: int = MISSING
    description: str = MISSING
    group: int = MISSING
    id_in_group: int = MISSING
    role: str = "device"
    hardware: str = MISSING
    link: LinkConf = field(default_factory=LinkConf)


@dataclass
class GroupConf:
    id: int = MISSING
    description: str = MISSING
    uplink: str = MISSING


@dataclass
class GenerateConf:
    """A generated fleet: a server in group 0, ``groups`` x ``devices_per_group`` trainers.

    Trainer hardware cycles through ``hardware``; every trainer joins its group with ``link``,
    every edge group reaches the backbone through ``uplink``.
    """

    groups: int = MISSING
    devices_per_group: int = MISSING
    hardware: list[str] = MISSING
    link: str = MISSING
    uplink: str = MISSING
    server_hardware: str = MISSING
    server_link: str = MISSING
    cloud_uplink: str = MISSING


@dataclass
class TopologyConf:
    name: str = MISSING
    description: str = ""
    groups: list[GroupConf] = field(default_factory=list)
    devices: list[DeviceConf] = field(default_factory=list)
    generate: GenerateConf | None = None


@dataclass
class DatasetConf:
    name: str = MISSING
    samples: int = MISSING
    total_gb: float = MISSING


@dataclass
class ScaleConf:
    """A smaller job for mode=real, so that real training fits a small host."""

    input_size: int = MISSING
    samples_per_device: int = MISSING


@dataclass
class WorkloadConf:
    name: str = MISSING
    model: str = MISSING
    num_classes: int = MISSING
    input_size: int = MISSING
    batch_size: int = MISSING
    samples_per_device: int = MISSING
    epochs: int = 1
    dataset: DatasetConf = field(default_factory=DatasetConf)
    scale: ScaleConf | None = None  # applied in mode=real only


@dataclass
class RangeConf:
    start: float = MISSING
    stop: float = MISSING
    num: int = MISSING


@dataclass
class CrossoverConf:
    link: str = MISSING
    bandwidth_mbps: RangeConf = field(default_factory=RangeConf)
    samples_per_device: RangeConf = field(default_factory=RangeConf)


@dataclass
class PaperConf:
    source: str = ""
    t_ref_s: float = MISSING
    t_new_s: float = MISSING
    time_saving_rate: float = MISSING


@dataclass
class ExperimentConf:
    name: str = "default"
    description: str = ""
    kind: str = "comparison"  # comparison: cloud vs client (Table II); federated: FL rounds
    clients: list[int] = field(default_factory=list)  # empty: every trainer of the topology


@dataclass
class FederatedConf:
    """Multi-round federated training (``experiment.kind: federated``)."""

    training: str = "real"  # real: PyTorch trains on each shard; modelled: time only
    rounds: int = 20
    clients_per_round: int | None = None  # a count; when null, fraction_per_round of them
    fraction_per_round: float = 1.0
    min_fit: int = 1
    deadline_s: float | None = None
    local_epochs: int = 1
    batch_size: int = 16
    learning_rate: float = 0.05
    eval_every: int = 1
    target_accuracy: float | None = None
    max_update_norm: float | None = None
    selection: str = "all"  # all | random | resource | oort
    balance: bool = False
    hierarchical: bool = False
    group_deadline_s: float | None = None
    mode: str = "sync"  # sync | async
    buffer_size: int = 4
    concurrency: int = 0
    max_staleness: int = 5
    staleness_exponent: float = 0.5
    max_events: int = 200_000  # events kept for events.csv; later ones are summarised only


@dataclass
class PartitionConf:
    kind: str = "dirichlet"  # dirichlet | iid
    alpha: float = 0.5
    test_fraction: float = 0.2


@dataclass
class OutageConf:
    device: int = MISSING
    start_s: float = MISSING
    end_s: float | None = None


@dataclass
class LinkChangeConf:
    network: str = MISSING
    start_s: float = MISSING
    end_s: float | None = None
    factor: float = MISSING


@dataclass
class FaultsConf:
    dropout: float = 0.0
    outages: list[OutageConf] = field(default_factory=list)
    link_changes: list[LinkChangeConf] = field(default_factory=list)


@dataclass
class ModeConf:
    """sim: the SimPy runtime. real: a fedsim server and one agent process per client on
    loopback, doing the work for real."""

    name: str = "sim"
    host: str = "127.0.0.1"
    port: int = 0  # 0: any free port
    startup_timeout_s: float = 120.0
    heartbeat_interval_s: float = 1.0
    patience_s: float = 10.0
    server_url: str | None = None  # a running fedsim server: run there as a job
    admin_token_file: str | None = None  # its admin token (else $FEDSIM_ADMIN_TOKEN)


@dataclass
class Config:
    experiment: ExperimentConf = field(default_factory=ExperimentConf)
    mode: ModeConf = field(default_factory=ModeConf)
    seed: int = 0
    repetitions: int = 50
    topology: TopologyConf = field(default_factory=TopologyConf)
    hardware: dict[str, HardwareConf] = field(default_factory=dict)
    network: dict[str, NetworkConf] = field(default_factory=dict)
    workload: WorkloadConf = field(default_factory=WorkloadConf)
    crossover: CrossoverConf | None = None
    paper: PaperConf | None = None
    fl: FederatedConf = field(default_factory=FederatedConf)
    strategy: dict[str, Any] = field(default_factory=lambda: {"name": "fedavg"})
    partition: PartitionConf = field(default_factory=PartitionConf)
    faults: FaultsConf = field(default_factory=FaultsConf)


def register_configs() -> None:
    ConfigStore.instance().store(name="fedsim_schema", node=Config)


# -- conversion -----------------------------------------------------------------------------


def _positive(where: str, value: float, *, allow_zero: bool = False) -> float:
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{where}: must be {'>= 0' if allow_zero else '> 0'}, got {value}")
    return value


def _fraction(where: str, value: float) -> float:
    if not 0 < value <= 1:
        raise ConfigError(f"{where}: must be in (0, 1], got {value}")
    return value


def _load_profile(kind: str, name: str, schema: type, conf_dir: Path | None) -> Any:
    """A profile by name from ``conf/<kind>/<name>.yaml`` when the config did not include it."""
    path = None if conf_dir is None else conf_dir / kind / f"{name}.yaml"
    if path is None or not path.is_file():
        return None
    try:
        return OmegaConf.merge(OmegaConf.structured(schema), OmegaConf.load(path))
    except OmegaConfBaseException as e:
        raise ConfigError(f"{kind}.{name} ({path}): {e.msg}") from None


def hardware_profile(name: str, c: Any) -> HardwareProfile:
    where = f"hardware.{name}"
    if c.train_on == "accelerator":
        acc = c.accelerator
        if acc is None:
            raise ConfigError(f"{where}.accelerator: train_on is 'accelerator' but none is given")
        units = _positive(f"{where}.accelerator.count", acc.count)
        peak = _positive(f"{where}.accelerator.peak_tflops", acc.peak_tflops) * 1e12 * units
    elif c.train_on == "cpu":
        units, peak = 1, _positive(f"{where}.cpu_peak_gflops", c.cpu_peak_gflops) * 1e9
    else:
        raise ConfigError(f"{where}.train_on: must be 'accelerator' or 'cpu', got {c.train_on!r}")
    return HardwareProfile(
        name=name,
        description=c.description,
        peak_flops=peak,
        units=int(units),
        efficiency=_fraction(f"{where}.efficiency", c.efficiency),
        scaling_efficiency=_fraction(f"{where}.scaling_efficiency", c.scaling_efficiency),
        memory_bytes=_positive(f"{where}.memory_gb", c.memory_gb) * GB,
        memory_bandwidth=_positive(f"{where}.memory_bandwidth_gbps", c.memory_bandwidth_gbps) * GB,
        disk_bandwidth=_positive(f"{where}.disk_write_mbps", c.disk_write_mbps) * MB,
        jitter=_positive(f"{where}.jitter", c.jitter, allow_zero=True),
    )


def link_profile(name: str, c: Any) -> LinkProfile:
    where = f"network.{name}"
    if not 0 <= c.loss < 1:
        raise ConfigError(f"{where}.loss: must be in [0, 1), got {c.loss}")
    return LinkProfile(
        name=name,
        bandwidth=_positive(f"{where}.bandwidth_mbps", c.bandwidth_mbps) * MB / 8,
        latency=_positive(f"{where}.latency_ms", c.latency_ms, allow_zero=True) / 1e3,
        loss=c.loss,
        latency_jitter=_positive(f"{where}.jitter_ms", c.jitter_ms, allow_zero=True) / 1e3,
    )


class _Profiles:
    """Profiles by name: those in the config first, else ``conf/<kind>/<name>.yaml``."""

    def __init__(self, kind: str, configured: Any, schema: type, make, conf_dir: Path | None):
        self.kind, self.configured, self.schema = kind, configured, schema
        self.make, self.conf_dir = make, conf_dir
        self.cache: dict[str, Any] = {}

    def __call__(self, name: str, where: str) -> Any:
        if name not in self.cache:
            c = self.configured.get(name) if name in self.configured else None
            if c is None:
                c = _load_profile(self.kind, name, self.schema, self.conf_dir)
            if c is None:
                known = sorted(self.configured) if self.configured else []
                raise ConfigError(
                    f"{where}: unknown {self.kind} profile {name!r} (known: {', '.join(known)})"
                )
            self.cache[name] = self.make(name, c)
        return self.cache[name]


def build_topology(cfg: Any, conf_dir: Path | None = None) -> Topology:
    """The validated topology of ``cfg`` with its hardware and link profiles resolved."""
    hw = _Profiles("hardware", cfg.hardware, HardwareConf, hardware_profile, conf_dir)
    net = _Profiles("network", cfg.network, NetworkConf, link_profile, conf_dir)
    t = cfg.topology
    if t.generate is not None:
        return _generated(t.name, t.generate, hw, net)
    groups: dict[int, Group] = {}
    for i, g in enumerate(t.groups):
        if g.id in groups:
            raise ConfigError(f"topology.groups[{i}].id: group {g.id} appears twice")
        groups[g.id] = Group(
            id=g.id, description=g.description, uplink=net(g.uplink, f"topology.groups[{i}].uplink")
        )
    devices: dict[int, Device] = {}
    for i, d in enumerate(t.devices):
        where = f"topology.devices[{i}]"
        if d.id in devices:
            raise ConfigError(f"{where}.id: device {d.id} appears twice")
        if d.group not in groups:
            raise ConfigError(f"{where}.group: no group {d.group} in topology.groups")
        if d.link.to is not None and d.link.to not in {x.id for x in t.devices}:
            raise ConfigError(f"{where}.link.to: links to device {d.link.to}, which does not exist")
        devices[d.id] = Device(
            id=d.id,
            description=d.description,
            group=d.group,
            id_in_group=d.id_in_group,
            role=d.role,
            hardware=hw(d.hardware, f"{where}.hardware"),
            link=net(d.link.network, f"{where}.link.network"),
            attach_to=d.link.to,
        )
    try:
        return Topology(t.name, groups, devices)
    except TopologyError as e:
        raise ConfigError(str(e)) from None


def _generated(name: str, g: Any, hw: _Profiles, net: _Profiles) -> Topology:
    where = "topology.generate"
    if g.groups < 1 or g.devices_per_group < 1:
        raise ConfigError(f"{where}: groups and devices_per_group must be >= 1")
    if not g.hardware:
        raise ConfigError(f"{where}.hardware: name at least one profile")
    kinds = [hw(h, f"{where}.hardware") for h in g.hardware]
    link, uplink = net(g.link, f"{where}.link"), net(g.uplink, f"{where}.uplink")
    groups = {
        0: Group(
            id=0, description="cloud group", uplink=net(g.cloud_uplink, f"{where}.cloud_uplink")
        )
    }
    devices = {
        0: Device(
            id=0,
            description="server",
            group=0,
            id_in_group=0,
            role="server",
            hardware=hw(g.server_hardware, f"{where}.server_hardware"),
            link=net(g.server_link, f"{where}.server_link"),
        )
    }
    for gid in range(1, g.groups + 1):
        groups[gid] = Group(id=gid, description=f"edge group {gid}", uplink=uplink)
        for j in range(g.devices_per_group):
            dev = len(devices)
            devices[dev] = Device(
                id=dev,
                description=f"trainer {dev}",
                group=gid,
                id_in_group=j,
                role="trainer",
                hardware=kinds[dev % len(kinds)],
                link=link,
            )
    return Topology(name, groups, devices)


def build_dataset(c: Any) -> DatasetSpec:
    return DatasetSpec(
        name=c.name,
        samples=int(_positive("workload.dataset.samples", c.samples)),
        total_bytes=round(_positive("workload.dataset.total_gb", c.total_gb) * GB),
    )


def check_workload(c: Any) -> None:
    for key in ("num_classes", "input_size", "batch_size", "samples_per_device", "epochs"):
        _positive(f"workload.{key}", getattr(c, key))


def clients_of(cfg: Any, topology: Topology) -> list[int]:
    clients = list(cfg.experiment.clients) or topology.trainers
    if not clients:
        raise ConfigError("experiment.clients: empty, and the topology has no trainers")
    for c in clients:
        if c not in topology.devices:
            raise ConfigError(f"experiment.clients: no device {c} in topology {topology.name}")
        if c == topology.server:
            raise ConfigError(f"experiment.clients: device {c} is the server")
    if len(set(clients)) != len(clients):
        raise ConfigError("experiment.clients: a device is listed twice")
    return clients


def _logspace(where: str, r: Any, *, integer: bool) -> tuple:
    import numpy as np

    _positive(f"{where}.start", r.start)
    if r.stop <= r.start or r.num < 2:
        raise ConfigError(f"{where}: need stop > start and num >= 2")
    values = np.geomspace(r.start, r.stop, int(r.num))
    if integer:
        return tuple(sorted({round(v) for v in values}))
    return tuple(float(v) for v in values)


def crossover_grid(c: Any) -> CrossoverGrid:
    return CrossoverGrid(
        link=c.link,
        bandwidth_mbps=_logspace("crossover.bandwidth_mbps", c.bandwidth_mbps, integer=False),
        samples_per_device=_logspace(
            "crossover.samples_per_device", c.samples_per_device, integer=True
        ),
    )


def as_container(cfg: DictConfig) -> dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
