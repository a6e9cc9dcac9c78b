"""Pandas tables of a run: repetitions, the event log, the crossover grid and Table II."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from fedsim.core.results import (
    CLIENT,
    CLOUD,
    SIMULATED_TIME_KEY,
    WALL_TIME_KEY,
    CrossoverPoint,
    RepetitionEvents,
    ScenarioRun,
)

RUN_COLUMNS = [f.name for f in dataclasses.fields(ScenarioRun)]
EVENT_COLUMNS = [
    "repetition",
    "scenario",
    "device",
    "kind",
    "start_s",
    "end_s",
    "duration_s",
    "bytes",
    "task",
]
CROSSOVER_COLUMNS = [
    "bandwidth_mbps",
    "samples_per_device",
    "t_ref_s",
    "t_new_s",
    "time_saving_rate",
]
TABLE_II_ROWS = ["t_ref", "t_new", "time-saving rate"]
SCENARIO_LABELS = {CLOUD: "cloud-based (t_ref)", CLIENT: "client-based (t_new)"}


def short_number(value: float) -> str:
    """A grid value as tables and axes show it: ``0.5``, ``31.6``, ``1,000``."""
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def number_of_seconds(value: float) -> str:
    """Seconds to three significant digits below 10 (``0.0984``), else to 0.1 (``1,234.5``)."""
    return f"{value:.3g}" if abs(value) < 10 else f"{value:,.1f}"


def run_time(summary: Mapping[str, Any]) -> tuple[str, float | None]:
    """A federated run's duration and its clock: ``("simulated", s)`` or ``("wall-clock", s)``."""
    if WALL_TIME_KEY in summary:
        return "wall-clock", summary[WALL_TIME_KEY]
    return "simulated", summary.get(SIMULATED_TIME_KEY)


def scenario_order(scenarios: Iterable[str]) -> list[str]:
    """The scenarios present, cloud-based first as in Table II, then any others by name."""
    present = set(scenarios)
    known = [s for s in (CLOUD, CLIENT) if s in present]
    return known + sorted(present - set(known))


def runs_frame(runs: Sequence[ScenarioRun]) -> pd.DataFrame:
    """One row per (repetition, scenario) with the critical-path split of its time."""
    return pd.DataFrame([dataclasses.asdict(r) for r in runs], columns=RUN_COLUMNS)


def events_frame(events: Sequence[RepetitionEvents]) -> pd.DataFrame:
    """One row per event of every repetition and scenario; ``kind`` is the EventKind's value."""
    rows = [
        (
            rep.repetition,
            rep.scenario,
            e.device,
            e.kind.value,
            e.start,
            e.end,
            e.duration,
            e.nbytes,
            e.task,
        )
        for rep in events
        for e in rep.events
    ]
    return pd.DataFrame(rows, columns=EVENT_COLUMNS)


def crossover_frame(points: Sequence[CrossoverPoint]) -> pd.DataFrame:
    """One row per grid point, with the time-saving rate (a fraction) of formula (1)."""
    rows = [
        (p.bandwidth_mbps, p.samples_per_device, p.t_ref_s, p.t_new_s, p.time_saving_rate)
        for p in points
    ]
    return pd.DataFrame(rows, columns=CROSSOVER_COLUMNS)


def table_ii(summary: dict[str, Any]) -> pd.DataFrame:
    """fedsim's Table II, beside the paper's when the summary has it: rows t_ref, t_new, rate.

    Times are in seconds, the rate in percent. Without ``summary["paper"]`` (an experiment with
    no reference figures) the columns are ``unit`` and ``fedsim`` only. With it, ``paper`` comes
    before ``fedsim``, and ``difference`` (fedsim - paper) of the rate is in percentage points.
    ``relative difference`` (a fraction of the paper's value) is given for the times only:
    relative to a rate that may sit near zero it would mislead.
    """
    fedsim_values = [
        float(summary["t_ref_s"]["mean"]),
        float(summary["t_new_s"]["mean"]),
        100.0 * float(summary["time_saving_rate"]),
    ]
    table = pd.DataFrame(
        {"unit": ["s", "s", "%"], "fedsim": fedsim_values},
        index=pd.Index(TABLE_II_ROWS, name="quantity"),
    )
    paper = summary.get("paper")
    if paper is None:
        return table
    paper_values = [
        float(paper["t_ref_s"]),
        float(paper["t_new_s"]),
        100.0 * float(paper["time_saving_rate"]),
    ]
    table.insert(1, "paper", paper_values)
    table["difference"] = table["fedsim"] - table["paper"]
    relative = table["difference"] / table["paper"]
    table["relative difference"] = relative.where(table["unit"] == "s", np.nan)
    return table
