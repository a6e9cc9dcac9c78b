"""The experiment config's schema: the YAML under ``conf/`` composes against these dataclasses.

Hydra's ConfigStore holds :class:`Config` as ``fedsim_schema`` (``conf/config.yaml`` lists it
first in its defaults), so an unknown key or a wrong type is an error at composition. The FL
settings are the engine's own :class:`~fedsim.core.coordinator.FederatedConfig`, extended by
what the experiment does around the rounds, so they are declared once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

from fedsim.core.attacks import AttackConfig
from fedsim.core.coordinator import FederatedConfig
from fedsim.core.plugins import split_target
from fedsim.core.privacy import PrivacyConfig
from fedsim.core.selection import SELECTIONS


@dataclass
class AcceleratorConf:
    model: str = MISSING
    count: int = 1
    peak_tflops: float = MISSING  # fp32 peak of one unit
    memory_gb: float = 0.0
    memory_bandwidth_gbps: float = MISSING


@dataclass
class StepConf:
    """A measured step model: one training step (or, in ``eval_steps``, one evaluation batch)
    of n samples takes overhead_s + per_sample_s n."""

    overhead_s: float = MISSING
    per_sample_s: float = MISSING
    residual_s: float = 0.0  # root mean square of the fit's residual
    flops_per_sample: float | None = None  # training FLOPs per sample of the calibrated model
    batch_sizes: list[int] = field(default_factory=list)  # the sizes the fit was measured at


@dataclass
class HardwareConf:
    """A device's hardware: spec-sheet figures (``kind: spec``) or measured ones (``measured``).

    A spec profile needs ``efficiency``, ``memory_bandwidth_gbps`` and the peak of what trains
    (``cpu_peak_gflops`` or ``accelerator``). A measured profile needs ``steps`` and ``source``;
    the spec-sheet figures are optional there (see ``fedsim.config.hardware_profile``).
    """

    kind: str = "spec"
    source: str = ""
    description: str = ""
    cpu_model: str = ""
    cpu_cores: int = 1
    cpu_ghz: float = 1.0
    cpu_peak_gflops: float | None = None
    memory_gb: float = MISSING
    memory_bandwidth_gbps: float | None = None
    disk_write_mbps: float = 500.0
    accelerator: AcceleratorConf | None = None
    train_on: str = "accelerator"
    efficiency: float | None = None
    scaling_efficiency: float = 1.0
    jitter: float = 0.0
    # Measured figures (kind: measured): step models by model name, throughputs in bytes/s,
    # the first training task's extra seconds over a steady one, the processor seconds of one
    # HTTP request the device makes and per TCP segment of a paced body, what keeping one
    # update on disk costs (processor seconds,
    # and seconds waiting for the disk), a server's own seconds of work to start a round, and
    # what a training task costs beyond its steps. ``eval_steps``: step models, by model name,
    # of evaluating the model (one batch of n samples; no flops_per_sample needed).
    steps: dict[str, StepConf] = field(default_factory=dict)
    eval_steps: dict[str, StepConf] = field(default_factory=dict)
    serialize_bytes_per_s: float | None = None
    load_bytes_per_s: float | None = None
    aggregate_bytes_per_s: float | None = None
    cold_start_s: float | None = None
    request_cpu_s: float | None = None
    segment_cpu_s: float | None = None
    persist_cpu_s: float | None = None
    persist_io_s: float | None = None
    round_overhead_s: float | None = None
    task_overhead_s: float | None = None


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
class DeviceTableConf:
    """Each trainer's figures from a device table or trace file (formats: docs/fleets.md)."""

    file: str | None = None  # .csv or .json; a relative path: from here, else under conf/
    assign: str = "order"  # order: i-th trainer, i-th row (wrapping round); sample: at random
    # The computation (ms per sample) at which a device runs at its profile's speed
    # (null: the table's median).
    reference_ms_per_sample: float | None = None


@dataclass
class SpreadConf:
    """Coefficients of variation of log-normal factors (mean 1) on each trainer's figures."""

    speed: float = 0.0
    bandwidth: float = 0.0
    latency: float = 0.0


@dataclass
class AvailabilityConf:
    """When trainers are online: a trace ``file`` (FedScale's format, docs/fleets.md), or
    online and offline periods of exponential length with the given means, repeating every
    ``period_s``; neither: online throughout."""

    file: str | None = None
    assign: str = "order"  # as in DeviceTableConf
    mean_online_s: float | None = None
    mean_offline_s: float | None = None
    period_s: float = 86400.0


@dataclass
class FleetConf:
    """A heterogeneous fleet: every trainer's own speed, link and hours online.

    Every part is off until set (no file, no spread, online throughout), so that each can be
    set from the command line: ``topology.fleet.spread.bandwidth=0.8``.
    """

    seed: int | None = None  # null: the experiment's seed
    devices: DeviceTableConf = field(default_factory=DeviceTableConf)
    spread: SpreadConf = field(default_factory=SpreadConf)
    availability: AvailabilityConf = field(default_factory=AvailabilityConf)


@dataclass
class TopologyConf:
    name: str = MISSING
    description: str = ""
    groups: list[GroupConf] = field(default_factory=list)
    devices: list[DeviceConf] = field(default_factory=list)
    generate: GenerateConf | None = None
    fleet: FleetConf = field(default_factory=FleetConf)  # varies the trainers defined above


@dataclass
class DatasetConf:
    name: str = MISSING  # real training: digits | synthetic | image_folder | npz, or a label
    samples: int = MISSING  # synthetic: how many it draws
    total_gb: float = MISSING
    path: str | None = None  # image_folder: the root holding one folder per class; npz: the file
    # Your own data set and partition: {_target_: mypkg.data.shards, ...its parameters}, a
    # function returning each client's (X, y) and the test set (docs/plugins.md).
    factory: Any = None  # Any: OmegaConf cannot merge a mapping onto a null typed dict


@dataclass
class ScaleConf:
    """A smaller job for mode=real, so that real training fits a small host."""

    input_size: int = MISSING
    samples_per_device: int = MISSING


@dataclass
class WorkloadConf:
    name: str = MISSING
    model: Any = MISSING  # a built-in name, or your own: {_target_: mypkg.models.MyNet}
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


TRAININGS = ("real", "modelled")


@dataclass(kw_only=True)
class FLConf(FederatedConfig):
    """``fl``: the coordinator's own settings (:class:`FederatedConfig`, written once, with its
    defaults and checks) plus what the experiment does around the rounds."""

    training: str = "real"  # real: PyTorch trains on each shard; modelled: time only
    # all | random | resource | oort, or your own policy: {_target_: mypkg.Policy, ...}
    selection: Any = "all"
    target_accuracy: float | None = None
    max_events: int = 200_000  # events kept for events.csv; later ones are summarised only
    attack: AttackConfig = field(default_factory=AttackConfig)  # Byzantine clients, if any

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.training not in TRAININGS:
            raise ValueError(f"training: {self.training!r} is not one of {', '.join(TRAININGS)}")
        if isinstance(self.selection, Mapping):
            split_target("selection", self.selection)  # build_spec imports and builds it
        elif self.selection not in SELECTIONS:
            raise ValueError(
                f"selection: {self.selection!r} is not one of {', '.join(SELECTIONS)} "
                "(or a _target_ naming your own policy)"
            )
        if self.target_accuracy is not None and not 0 < self.target_accuracy <= 1:
            raise ValueError(
                f"target_accuracy: must be null or in (0, 1], got {self.target_accuracy}"
            )
        if self.max_events < 0:
            raise ValueError(f"max_events: must be >= 0, got {self.max_events}")


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


TLS_MODES = ("off", "mutual")  # ModeConf.tls


@dataclass
class ModeConf:
    """sim: the SimPy runtime. real: a fedsim server and one agent process per client on
    loopback, doing the work for real. emulated: as real, each agent in a network namespace
    behind the topology's shaped links and held to its profile's CPU speed (needs root)."""

    name: str = "sim"
    host: str = "127.0.0.1"
    port: int = 0  # 0: any free port
    startup_timeout_s: float = 120.0
    heartbeat_interval_s: float = 1.0
    patience_s: float = 10.0
    server_url: str | None = None  # a running fedsim server: run there as a job
    admin_token_file: str | None = None  # its admin token (else $FEDSIM_ADMIN_TOKEN)
    # real and emulated: "off", plain HTTP on loopback; "mutual", HTTPS with client
    # certificates, made for the run under RUN_DIR/certs (fedsim.certs).
    tls: str = "off"
    # emulated: one core's speed here in GFLOP/s (null: measured at start) and the cores the
    # agents may share (null: every core this process may use).
    host_gflops: float | None = None
    cores: float | None = None
    # sim: latency as fedsim's agents pay it, a poll's answer before each task and a request
    # before each download (fedsim.sim.runtime); the prediction of a measured run sets it.
    polling: bool = False
    # sim: how transfers share links. shared: max-min fair sharing of every link they cross
    # (fedsim.sim.network); independent: each transfer alone at its path's narrowest capacity,
    # nothing shared, as FedScale models a client's network (fedsim.sim.independent).
    network: str = "shared"


@dataclass
class MlflowConf:
    """MLflow tracking: ``uri`` a tracking URI (``file:PATH``, ``sqlite:///PATH``) or a
    directory, which becomes a local file store; null: off."""

    uri: str | None = None
    experiment: str | None = None  # MLflow's experiment; null: the run's experiment.name


@dataclass
class TensorBoardConf:
    """TensorBoard: each run writes its event file under ``dir/RUN``; null: off."""

    dir: str | None = None


@dataclass
class TrackingConf:
    """Where a run is logged beside its run directory (``fedsim.tracking``); off by default."""

    mlflow: MlflowConf = field(default_factory=MlflowConf)
    tensorboard: TensorBoardConf = field(default_factory=TensorBoardConf)


@dataclass
class ReportConf:
    """What a run writes beside its tables and ``report.md``: ``plots`` false writes no
    ``plots/*.png`` (nor loads matplotlib), for sweeps of many runs or a quick look, where the
    figures cost more than the run; the report then says that no plots were written."""

    plots: bool = True


@dataclass
class SecAggConf:
    """Secure aggregation (``secagg=on``; docs/secagg.md): the server sees only the sum of
    the clients' masked updates. ``bits``: the modulus 2^bits of the masked values (16-62);
    ``clip``: each value's bound before fixed point; ``threshold``: the fraction of a client's
    neighbourhood whose shares recover its secrets; ``neighbours``: SecAgg+'s graph degree
    (null: every pair of clients, SecAgg); ``stage_timeout_s``: how long each protocol stage
    waits for its clients (null: until the round's deadline)."""

    enabled: bool = False
    bits: int = 32
    clip: float = 100.0
    threshold: float = 0.5
    neighbours: int | None = None
    stage_timeout_s: float | None = None


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
    fl: FLConf = field(default_factory=FLConf)
    strategy: dict[str, Any] = field(default_factory=lambda: {"name": "fedavg"})
    # Hierarchical rounds: how a group combines its members' updates; empty: as `strategy`.
    # An empty mapping rather than None: OmegaConf cannot merge a mapping onto a None dict
    # node, so `group_strategy={_target_: ...}` and `+group_strategy._target_=...` would fail.
    group_strategy: dict[str, Any] = field(default_factory=dict)
    partition: PartitionConf = field(default_factory=PartitionConf)
    faults: FaultsConf = field(default_factory=FaultsConf)
    tracking: TrackingConf = field(default_factory=TrackingConf)
    report: ReportConf = field(default_factory=ReportConf)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)  # client-level DP, if any
    secagg: SecAggConf = field(default_factory=SecAggConf)
