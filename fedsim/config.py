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
class TopologyConf:
    name: str = MISSING
    description: str = ""
    groups: list[GroupConf] = field(default_factory=list)
    devices: list[DeviceConf] = field(default_factory=list)


@dataclass
class DatasetConf:
    name: str = MISSING
    samples: int = MISSING
    total_gb: float = MISSING


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
    clients: list[int] = field(default_factory=list)  # empty: every trainer of the topology


@dataclass
class ModeConf:
    name: str = "sim"


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
