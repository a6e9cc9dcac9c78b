"""A federated run's tables and plots, for the one run writer (:mod:`fedsim.report.write`).

``runs.csv`` has one row per round and ``events.csv`` the comparison's columns: both open with
the ``repetition`` (0) and ``scenario`` (``federated``) columns, so one reader handles both kinds
of run.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from fedsim.core.events import Event, EventKind
from fedsim.core.results import FEDERATED, TIME_FIELDS, RoundRow, RunResult
from fedsim.report.tables import run_time

# The round's identity and clock first, then its time split, then what happened in it.
ROUND_FIELDS = ["round", "version", "started_s", "finished_s", *TIME_FIELDS] + [
    f.name
    for f in dataclasses.fields(RoundRow)
    if f.name not in {"round", "version", "started_s", "finished_s", *TIME_FIELDS}
]
ROUND_COLUMNS = ["repetition", "scenario", *ROUND_FIELDS]
# Optional measurements: None in a round without them, NaN in the table, empty in the CSV.
OPTIONAL_FLOATS = ["train_loss", "accuracy", "eval_loss", "staleness"]
# Only the server stores and evaluates versions; group aggregators also aggregate.
SERVER_KINDS = (EventKind.PUBLISH, EventKind.EVALUATE, EventKind.AGGREGATE)


def rounds_frame(rounds: Sequence[RoundRow]) -> pd.DataFrame:
    """One row per round, after the ``repetition`` and ``scenario`` columns of ``runs.csv``."""
    frame = pd.DataFrame([dataclasses.asdict(r) for r in rounds], columns=ROUND_FIELDS)
    frame["version"] = frame["version"].astype("Int64")  # an int, or empty when none published
    frame[OPTIONAL_FLOATS] = frame[OPTIONAL_FLOATS].astype(float)
    frame["aggregated"] = frame["aggregated"].astype(bool)
    frame.insert(0, "scenario", FEDERATED)
    frame.insert(0, "repetition", 0)
    return frame


def server_of(summary: Mapping[str, Any], events: Sequence[Event]) -> int | None:
    """The server: the summary's ``server``, else the device that publishes (or evaluates)."""
    if summary.get("server") is not None:
        return int(summary["server"])
    for kind in SERVER_KINDS:
        devices = Counter(e.device for e in events if e.kind == kind)
        if devices:
            return devices.most_common(1)[0][0]
    return None


def write_federated_plots(
    result: RunResult, rounds: pd.DataFrame, events: pd.DataFrame, plots_dir: Path
) -> dict[str, Path]:
    """Write the four plots of a federated run into ``plots_dir``; returns name -> path."""
    # Imported here, so that a run without plots (report.plots=false) never loads matplotlib.
    from fedsim.report.federated_plots import (
        plot_accuracy_time,
        plot_federated_timeline,
        plot_label_distribution,
        plot_round_breakdown,
    )

    summary = result.summary
    clock = run_time(summary)[0]
    return {
        "accuracy_time": plot_accuracy_time(
            rounds,
            plots_dir / "accuracy_time.png",
            target=summary.get("target_accuracy"),
            time_to_target=summary.get("time_to_target_s"),
            round_to_target=summary.get("round_to_target"),
            clock=clock,
        ),
        "round_breakdown": plot_round_breakdown(rounds, plots_dir / "round_breakdown.png"),
        "timeline": plot_federated_timeline(
            events,
            rounds,
            plots_dir / "timeline.png",
            server=server_of(summary, result.all_events()),
            clock=clock,
        ),
        "label_distribution": plot_label_distribution(
            result.label_counts,
            plots_dir / "label_distribution.png",
            partition=summary.get("partition"),
            absent=result.label_counts_absent,
        ),
    }
