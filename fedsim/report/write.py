"""Write a run's directory, whichever scenario ran: the one writer of run directories.

``summary.json``, ``runs.csv`` (repetitions or rounds), ``events.csv``, ``crossover.csv`` when
the comparison swept one, ``fidelity.csv`` when a measured run was predicted,
``plots/*.png`` (unless ``plots`` is off: ``report.plots``), and ``report.md`` with its
``report.html``. What differs by scenario (which table, which plots, which report text) is
looked up by the result's ``kind``. The plotting modules (matplotlib) are imported only when
plots are written.
"""

from __future__ import annotations

import csv
import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import pandas as pd

from fedsim.core.events import EVENTS_FILE, Event, EventKind
from fedsim.core.results import COMPARISON, FEDERATED, RunResult
from fedsim.report.federated import rounds_frame, write_federated_plots
from fedsim.report.federated_markdown import render_federated_report
from fedsim.report.html import write_report
from fedsim.report.markdown import render_report
from fedsim.report.tables import EVENT_COLUMNS, crossover_frame, events_frame, runs_frame

PLOTS_DIR = "plots"
# Each kind's value as events.csv writes it, looked up rather than read through the enum's
# property for each of the millions of rows of a large run.
_KIND_VALUE = {kind: kind.value for kind in EventKind}


def _plain(text: str) -> bool:
    """Whether the csv module writes ``text`` as it is (no character it would quote)."""
    return not ("," in text or '"' in text or "\r" in text or "\n" in text)


class EventsWriter:
    """Writes each event to ``path`` as it is recorded (the columns of ``events.csv``), the
    first ``limit`` of them; later ones are counted in ``dropped``. An :class:`EventLog`'s
    sink, so that a run's log is on disk, not in memory."""

    def __init__(self, path: Path, *, scenario: str, repetition: int = 0, limit: int) -> None:
        self.path, self.limit = Path(path), limit
        self._prefix = (repetition, scenario)
        self._file = self.path.open("w", newline="", encoding="utf-8", buffering=1 << 20)
        self._rows = csv.writer(self._file)
        self._rows.writerow(EVENT_COLUMNS)
        # A row whose strings need no quotes is written as the csv module writes it (its
        # numbers as str() gives them, "\r\n" at the end) but formatted in one step, about
        # half of the csv module's time (three rows a device, millions in a large run).
        self._head = f"{repetition},{scenario}," if _plain(scenario) else None
        self._write = self._file.write
        self.written = 0
        self.dropped = 0

    def __call__(self, e: Event) -> None:
        self.row(e.device, e.kind, e.start, e.end, e.nbytes, e.task)

    def row(
        self, device: int, kind: EventKind, start: float, end: float, nbytes: int, task: str
    ) -> None:
        """Write an event given by its fields (:data:`fedsim.core.events.Row`)."""
        if self.written >= self.limit:
            self.dropped += 1
            return
        head = self._head
        if head is not None and _plain(task):
            kind_value, took = _KIND_VALUE[kind], end - start
            self._write(f"{head}{device},{kind_value},{start},{end},{took},{nbytes},{task}\r\n")
        else:
            rep, scenario = self._prefix
            self._rows.writerow(
                (rep, scenario, device, _KIND_VALUE[kind], start, end, end - start, nbytes, task)
            )
        self.written += 1

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> EventsWriter:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _events_table(result: RunResult) -> pd.DataFrame:
    """The run's events as ``events_frame`` gives them, read back from the file the run wrote
    them to as they happened (without the task names, which no plot reads)."""
    if result.events_file is None:
        return events_frame(result.events)
    columns = [c for c in EVENT_COLUMNS if c != "task"]
    return pd.read_csv(result.events_file, usecols=columns, dtype={"kind": "category"})


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
    result: RunResult,
    runs: pd.DataFrame,
    events: pd.DataFrame,
    crossover: pd.DataFrame,
    plots_dir: Path,
) -> dict[str, Path]:
    """Write the plots into ``plots_dir``; returns name -> path of those written."""
    from fedsim.report.plots import plot_breakdown, plot_crossover, plot_timeline, plot_tref_tnew

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
        paper_rate=(summary.get("paper") or {}).get("time_saving_rate"),
    )
    if crossover_path is not None:
        written["crossover"] = crossover_path
    return written


def _comparison(result: RunResult, run_dir: Path, plot: bool) -> tuple[pd.DataFrame, str]:
    runs = runs_frame(result.rows)  # type: ignore[arg-type]
    crossover = crossover_frame(result.crossover)
    if not crossover.empty:
        crossover.to_csv(run_dir / "crossover.csv", index=False)
    plots: dict[str, Path] = {}
    if plot:
        events = events_frame(result.events)
        plots = write_plots(result, runs, events, crossover, run_dir / PLOTS_DIR)
    return runs, render_report(result, plots)


def _federated(result: RunResult, run_dir: Path, plot: bool) -> tuple[pd.DataFrame, str]:
    rounds = rounds_frame(result.rows)  # type: ignore[arg-type]
    plots: dict[str, Path] = {}
    if plot:
        plots = write_federated_plots(result, rounds, _events_table(result), run_dir / PLOTS_DIR)
    return rounds, render_federated_report(result, plots)


SCENARIO_REPORTS = {COMPARISON: _comparison, FEDERATED: _federated}


def write_run(run_dir: Path, result: RunResult, *, plots: bool = True) -> None:
    """Write every output of ``result`` into ``run_dir`` (created if missing); ``plots``
    false: no ``plots/*.png``, and the report says so."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "summary.json").write_text(
        json.dumps(json_safe(result.summary), indent=2) + "\n", encoding="utf-8"
    )
    events = run_dir / EVENTS_FILE
    if result.events_file is None:
        events_frame(result.events).to_csv(events, index=False)
    elif not events.exists() or not events.samefile(result.events_file):
        shutil.copyfile(result.events_file, events)
    rows, text = SCENARIO_REPORTS[result.kind](result, run_dir, plots)
    rows.to_csv(run_dir / "runs.csv", index=False)
    fidelity = ""
    if result.fidelity:
        from fedsim.report.fidelity import write_fidelity

        fidelity = write_fidelity(result, run_dir, run_dir / PLOTS_DIR if plots else None)
    if fidelity:
        text = text.rstrip("\n") + "\n\n" + fidelity + "\n"
    write_report(run_dir / "report.md", text)
