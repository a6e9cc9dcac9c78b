"""The typed experiment spec: everything a run needs, checked, in the engine's own types.

:func:`fedsim.config.build_spec` makes one from the composed Hydra config; the scenarios and the
runtimes read only this, never a ``DictConfig``. ``config`` keeps the resolved config as plain
data, for the run's record and for handing the experiment to a running server as a job.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fedsim.core.experiment import CrossoverGrid
from fedsim.core.faults import FaultPlan
from fedsim.core.privacy import PrivacyConfig
from fedsim.core.secagg import SecAggParams
from fedsim.core.topology import Topology
from fedsim.core.workload import WorkloadSpec
from fedsim.schema import FLConf, ModeConf, PaperConf, PartitionConf, ScaleConf


@dataclass(frozen=True, kw_only=True)
class ExperimentSpec:
    """One experiment, ready to run: ``kind`` picks the scenario, ``mode.name`` the runtime."""

    name: str
    kind: str  # comparison (Table II) | federated (FL rounds)
    mode: ModeConf
    seed: int
    topology: Topology
    clients: tuple[int, ...]
    workload_name: str
    workload: WorkloadSpec
    scale: ScaleConf | None = None  # the smaller job real runtimes run (comparison)
    repetitions: int = 1
    crossover: CrossoverGrid | None = None
    paper: PaperConf | None = None
    fl: FLConf = field(default_factory=FLConf)
    strategy: Mapping[str, Any] = field(default_factory=lambda: {"name": "fedavg"})
    group_strategy: Mapping[str, Any] | None = None
    partition: PartitionConf = field(default_factory=PartitionConf)
    faults: FaultPlan = field(default_factory=FaultPlan)
    # Client-level DP; a noise multiplier chosen from target_epsilon is filled in by build_spec.
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    config: Mapping[str, Any] = field(default_factory=dict)
    secagg: SecAggParams | None = None  # secure aggregation's settings; None: off
