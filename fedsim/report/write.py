"""Write a run's directory: summary.json, runs/events/crossover CSVs, plots/*.png, report.md."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedsim.core.results import ExperimentResult
from fedsim.report.html import write_report
from fedsim.report.markdown import render_report
from fedsim.report.plots import plot_breakdown, plot_crossover, plot_timeline, plot_tref_tnew
from fedsim.report.tables import crossover_frame, events_frame, runs_frame

PLOTS_DIR = "plots"


def json_safe(value: Any) -> Any:
    """``value`` with numpy scalars and arrays, tuples and paths turned into JSON types."""
    if isinstance(value, Mapping):
        return {json_safe(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return value


def write_plots(
    result: ExperimentResult,
    runs: pd.DataFrame,
    events: pd.DataFrame,
    crossover: pd.DataFrame,
    plots_dir: Path,
) -> dict[str, Path]:
    """Write the plots into ``plots_dir``; returns name -> path of those written."""
    summary = result.summary
    workload = summary.get("workload", {})
    # Repetition 0 is the default; a log that starts later still gets a timeline.
    first = int(events["repetition"].min()) if not events.empty else 0
    written = {
        "tref_tnew": plot_tref_tnew(summary, plots_dir / "tref_tnew.png"),
        "breakdown": plot_breakdown(runs, plots_dir / "breakdown.png"),
        "timeline": plot_timeline(
            events, plots_dir / "timeline.png", repetition=first, server=summary.get("server")
        ),
    }
    crossover_path = plot_crossover(
        crossover,
        plots_dir / "crossover.png",
        link=result.crossover_link,
        current_samples=workload.get("samples_per_device"),
        current_bandwidth_mbps=summary.get("crossover_bandwidth_mbps"),
        bytes_per_sample=workload.get("dataset", {}).get("bytes_per_sample"),
    )
    if crossover_path is not None:
        written["crossover"] = crossover_path
    return written


def write_run(run_dir: Path, result: ExperimentResult) -> None:
    """Write every output of ``result`` into ``run_dir`` (created if missing)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "summary.json").write_text(
        json.dumps(json_safe(result.summary), indent=2) + "\n", encoding="utf-8"
    )
    runs = runs_frame(result.runs)
    runs.to_csv(run_dir / "runs.csv", index=False)
    events = events_frame(result.events)
    events.to_csv(run_dir / "events.csv", index=False)
    crossover = crossover_frame(result.crossover)
    if not crossover.empty:
        crossover.to_csv(run_dir / "crossover.csv", index=False)
    plots = write_plots(result, runs, events, crossover, run_dir / PLOTS_DIR)
    write_report(run_dir / "report.md", render_report(result, plots))
