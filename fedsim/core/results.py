"""What an experiment produces: per-repetition timings, the event log, the crossover grid.

These plain records are the contract between the engine and the report layer, which turns them
into ``runs.csv``, ``events.csv``, ``summary.json``, ``report.md`` and plots.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fedsim.core.events import Event

CLOUD = "cloud_based"  # t_ref: the devices ship their data, the cloud server trains
CLIENT = "client_based"  # t_new: one federated round on the devices


@dataclass(frozen=True, kw_only=True)
class ScenarioRun:
    """One repetition of one scenario, with its time split along the critical path.

    ``transfer_s + compute_s + aggregation_s + waiting_s == total_s``: ``waiting_s`` is time on
    the critical path when no step of it was running (queueing, idling for stragglers).
    """

    repetition: int
    scenario: str
    total_s: float
    transfer_s: float
    compute_s: float
    aggregation_s: float
    waiting_s: float
    bytes_moved: int


@dataclass(frozen=True, kw_only=True)
class RepetitionEvents:
    """The event log of one scenario in one repetition."""

    repetition: int
    scenario: str
    events: tuple[Event, ...]


@dataclass(frozen=True, kw_only=True)
class CrossoverPoint:
    """Expected time of both scenarios at one (link bandwidth, data per device) point."""

    bandwidth_mbps: float
    samples_per_device: int
    t_ref_s: float
    t_new_s: float

    @property
    def time_saving_rate(self) -> float:
        return (self.t_ref_s - self.t_new_s) / self.t_ref_s


@dataclass(kw_only=True)
class ExperimentResult:
    """Everything a run hands to the report layer."""

    summary: dict[str, Any]
    runs: list[ScenarioRun]
    events: list[RepetitionEvents]
    crossover: list[CrossoverPoint] = field(default_factory=list)
    crossover_link: str = ""
    assumptions: list[str] = field(default_factory=list)


FEDERATED = "federated"


@dataclass(frozen=True, kw_only=True)
class RoundRow:
    """One round of a federated run (in async mode, one aggregation), in simulated seconds.

    The time split follows the round's critical path as in :class:`ScenarioRun`. ``accuracy``
    and ``eval_loss`` are None in rounds without evaluation.
    """

    round: int
    version: int | None
    started_s: float
    finished_s: float
    total_s: float
    transfer_s: float
    compute_s: float
    aggregation_s: float
    waiting_s: float
    bytes_moved: int
    selected: int
    completed: int
    failed: int
    rejected: int
    aggregated: bool
    train_loss: float | None = None
    accuracy: float | None = None
    eval_loss: float | None = None
    staleness: float | None = None


@dataclass(kw_only=True)
class FederatedResult:
    """Everything a federated run hands to the report layer.

    ``label_counts`` maps each client to its number of training samples per class (the non-IID
    split); ``failures`` lists (round, device, reason) for every lost or rejected update.
    """

    summary: dict[str, Any]
    rounds: list[RoundRow]
    events: tuple[Event, ...]
    label_counts: dict[int, list[int]] = field(default_factory=dict)
    failures: list[tuple[int, int, str]] = field(default_factory=list)
    assumptions: list[str] = field(default_factory=list)
