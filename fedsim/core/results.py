"""What a run produces: its rows (repetitions or rounds), the event log, the crossover grid.

:class:`RunResult` is the one contract between the scenarios and the report layer, which turns
it into ``runs.csv``, ``events.csv``, ``summary.json``, ``report.md`` and plots. Both kinds of
row carry the same :class:`TimeSplit` of their time along the critical path.
"""

from __future__ import annotations

from array import array
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from fedsim.core.critical_path import critical_path
from fedsim.core.events import Event, EventColumns
from fedsim.core.fidelity import Fidelity

CLOUD = "cloud_based"  # t_ref: the devices ship their data, the cloud server trains
CLIENT = "client_based"  # t_new: one federated round on the devices


@dataclass(frozen=True, kw_only=True)
class TimeSplit:
    """A span of time split along its critical path, and the bytes moved in it.

    ``transfer_s + compute_s + aggregation_s + waiting_s == total_s``: ``waiting_s`` is time on
    the critical path when no step of it was running (queueing, idling for stragglers).
    """

    total_s: float
    transfer_s: float
    compute_s: float
    aggregation_s: float
    waiting_s: float
    bytes_moved: int


def _columns(cols: EventColumns, keep: np.ndarray) -> EventColumns:
    out = EventColumns()
    for name in EventColumns.__slots__:
        column = getattr(cols, name)
        kept = np.frombuffer(column, dtype=column.typecode)[keep]
        setattr(out, name, array(column.typecode, kept.tobytes()))
    return out


def time_fields(
    events: Sequence[Event] | EventColumns,
    start: float,
    end: float,
    *,
    unanswered: Collection[int] = (),
) -> dict[str, Any]:
    """The :class:`TimeSplit` fields of ``[start, end]`` over the ``events`` inside it.

    The steps of the ``unanswered`` devices (whose results never reached the server: dropped
    out, cut by a deadline) move bytes but stay off the critical path: the end did not wait
    for them, and the time spent on them is waiting for stragglers. A measured run has no
    such steps at all (an agent reports its steps with its result), so a simulated round and
    its measured twin split their time the same way.
    """
    cols = events if isinstance(events, EventColumns) else EventColumns(events)
    inside = path = EventColumns()
    if len(cols):
        keep = (np.frombuffer(cols.start) >= start - 1e-9) & (np.frombuffer(cols.end) <= end + 1e-9)
        inside = path = _columns(cols, keep)
        if unanswered and len(inside):
            devices = np.frombuffer(inside.device, dtype=np.int64)
            answered = ~np.isin(devices, np.fromiter(unanswered, dtype=np.int64))
            if not answered.all():
                path = _columns(inside, answered)
    parts = critical_path(path, start, end)
    return {
        "total_s": end - start,
        "transfer_s": parts.transfer,
        "compute_s": parts.compute,
        "aggregation_s": parts.aggregation,
        "waiting_s": parts.waiting,
        "bytes_moved": int(np.frombuffer(inside.nbytes, dtype=np.int64).sum()),
    }


TIME_FIELDS = [f.name for f in fields(TimeSplit)]


@dataclass(frozen=True, kw_only=True)
class ScenarioRun(TimeSplit):
    """One repetition of one scenario of the comparison."""

    repetition: int
    scenario: str


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


FEDERATED = "federated"
# A federated run's duration in its summary: the simulator's clock, or a measured run's wall
# clock, each under its own key so that neither is taken for the other.
SIMULATED_TIME_KEY = "simulated_time_s"
WALL_TIME_KEY = "wall_time_s"


@dataclass(frozen=True, kw_only=True)
class RoundRow(TimeSplit):
    """One round of a federated run (in async mode, one aggregation), in the runtime's seconds.

    ``accuracy`` and ``eval_loss`` are None in rounds without evaluation.
    """

    round: int
    version: int | None
    started_s: float
    finished_s: float
    selected: int
    completed: int
    failed: int
    rejected: int
    aggregated: bool
    train_loss: float | None = None
    accuracy: float | None = None
    eval_loss: float | None = None
    staleness: float | None = None
    # The mean processor seconds a device spent on its task in the round, and of those in
    # training (RoundReport's); None where no device's was counted.
    device_cpu_s: float | None = None
    device_train_cpu_s: float | None = None


def to_target(rows: Sequence[RoundRow], target: float | None) -> tuple[int | None, float | None]:
    """The first round whose accuracy reaches ``target``, and when it finished; Nones when
    none does or there is no target."""
    if target is None:
        return None, None
    for row in rows:
        if row.accuracy is not None and row.accuracy >= target:
            return row.round, row.finished_s
    return None, None


COMPARISON = "comparison"


@dataclass(kw_only=True)
class RunResult:
    """Everything a run hands to the report layer, whichever scenario ran.

    ``rows`` are the comparison's repetitions x scenarios or the federated rounds; ``events``
    one log per (repetition, scenario). ``crossover`` belongs to the comparison;
    ``label_counts`` (each client's samples per class) and ``failures`` ((round, device,
    reason) for every lost or rejected update) to federated runs. ``fidelity`` pairs a measured
    run's rows with the simulator's prediction of them; empty for a simulated run.
    ``events_file`` is the CSV (``events.csv``'s columns) a run wrote its events to as they
    happened, instead of holding them in ``events``, which is then empty.
    """

    kind: str  # COMPARISON or FEDERATED
    summary: dict[str, Any]
    rows: Sequence[ScenarioRun] | Sequence[RoundRow]
    events: list[RepetitionEvents]
    assumptions: list[str] = field(default_factory=list)
    crossover: list[CrossoverPoint] = field(default_factory=list)
    crossover_link: str = ""
    label_counts: dict[int, list[int]] = field(default_factory=dict)
    # Why ``label_counts`` is empty, as the report says it: a run that modelled its training had
    # no data; one that trained on data says its own reason when it has no counts.
    label_counts_absent: str = "training without data has none"
    failures: list[tuple[int, int, str]] = field(default_factory=list)
    fidelity: list[Fidelity] = field(default_factory=list)
    events_file: Path | None = None

    def all_events(self) -> list[Event]:
        """Every event of every log, in order (none when they went to ``events_file``)."""
        return [e for log in self.events for e in log.events]
