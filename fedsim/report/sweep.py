"""The report over a Hydra sweep: one ``report.md`` and ``plots/`` beside the job directories.

A multirun directory holds one directory per job, named by the job's number (``0``, ``1``, ...),
each with the run's ``summary.json`` and ``runs.csv`` and Hydra's ``.hydra/overrides.yaml``.
A job without ``summary.json`` failed; it is listed as such. Jobs are labelled by their
overrides, less those that every job shares.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from fedsim.report.federated_markdown import percent, strategy_text
from fedsim.report.html import write_report
from fedsim.report.markdown import markdown_table, plots_section
from fedsim.report.sweep_plots import plot_sweep_accuracy, plot_sweep_comparison
from fedsim.report.tables import number_of_seconds, run_time
from fedsim.report.write import PLOTS_DIR

log = logging.getLogger(__name__)

FEDERATED, COMPARISON, OTHER, FAILED = "federated", "comparison", "other", "failed"
PLOT_CAPTIONS = {
    "accuracy_time": "Test accuracy over time since each job started (simulated, or "
    "wall-clock for a job that ran for real), one line per federated job",
    "comparison": "t_ref and t_new (mean ± std) and the time-saving rate, per comparison job",
}


@dataclass(frozen=True, kw_only=True)
class Job:
    """One job of the sweep as its directory left it."""

    number: int
    path: Path
    overrides: tuple[str, ...]
    summary: dict[str, Any] | None
    label: str = ""
    rounds: pd.DataFrame | None = field(default=None, compare=False)

    @property
    def kind(self) -> str:
        if self.summary is None:
            return FAILED
        if "t_ref_s" in self.summary:
            return COMPARISON
        if self.summary.get("kind") == FEDERATED or "final_accuracy" in self.summary:
            return FEDERATED
        return OTHER


def job_dirs(sweep_dir: Path) -> list[Path]:
    """The job directories of a multirun directory, in job order."""
    if not sweep_dir.is_dir():
        return []
    return sorted((p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit()), key=_num)


def _num(path: Path) -> int:
    return int(path.name)


def _overrides(job_dir: Path) -> tuple[str, ...]:
    path = job_dir / ".hydra" / "overrides.yaml"
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return ()
    return tuple(str(o) for o in loaded) if isinstance(loaded, list) else ()


def _summary(job_dir: Path) -> dict[str, Any] | None:
    try:
        loaded = json.loads((job_dir / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return loaded if isinstance(loaded, dict) else None


def _rounds(job_dir: Path) -> pd.DataFrame | None:
    try:
        frame = pd.read_csv(job_dir / "runs.csv")
    except (OSError, ValueError):
        return None
    return frame if {"finished_s", "accuracy"} <= set(frame.columns) else None


def common_overrides(jobs: Sequence[Job]) -> list[str]:
    """The overrides every job has, in the first job's order (none for a single job)."""
    if len(jobs) < 2:
        return []
    shared = set.intersection(*(set(j.overrides) for j in jobs))
    return [o for o in jobs[0].overrides if o in shared]


def read_jobs(sweep_dir: Path) -> list[Job]:
    """Every job of ``sweep_dir``, labelled by the overrides that set it apart."""
    jobs = []
    for path in job_dirs(sweep_dir):
        summary = _summary(path)
        federated = summary is not None and "t_ref_s" not in summary
        jobs.append(
            Job(
                number=_num(path),
                path=path,
                overrides=_overrides(path),
                summary=summary,
                rounds=_rounds(path) if federated else None,
            )
        )
    common = set(common_overrides(jobs))
    return [
        replace(j, label=" ".join(o for o in j.overrides if o not in common) or f"job {j.number}")
        for j in jobs
    ]


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _job_link(job: Job) -> str:
    report = job.path / "report.md"
    return f"[{job.number}]({job.path.name}/report.md)" if report.is_file() else str(job.number)


def _overrides_cell(job: Job) -> str:
    return f"`{_cell(job.label)}`"


def _federated_section(jobs: Sequence[Job]) -> str:
    header = [
        "job",
        "overrides",
        "strategy",
        "final accuracy",
        "best accuracy",
        "time to target [s]",
        "run time [s]",
        "rounds aggregated / failed",
        "updates lost / rejected",
    ]
    rows = []
    for job in jobs:
        s = job.summary or {}
        reached = s.get("time_to_target_s")
        to_target = (
            "—"
            if s.get("target_accuracy") is None
            else "not reached"
            if reached is None
            else f"{number_of_seconds(reached)} (round {s.get('round_to_target')})"
        )
        clock, elapsed = run_time(s)
        took = "—" if elapsed is None else number_of_seconds(elapsed)
        rows.append(
            [
                _job_link(job),
                _overrides_cell(job),
                _cell(strategy_text(s.get("strategy", "?"))),
                percent(s.get("final_accuracy")),
                percent(s.get("best_accuracy")),
                to_target,
                took if clock == "simulated" else f"{took} (wall-clock)",
                f"{s.get('rounds_aggregated', '?')} / {s.get('rounds_failed', '?')}",
                f"{s.get('updates_lost', '?')} / {s.get('updates_rejected', '?')}",
            ]
        )
    targets = {(j.summary or {}).get("target_accuracy") for j in jobs} - {None}
    note = f" Target accuracy: {', '.join(percent(t) for t in sorted(targets))}." if targets else ""
    return (
        "## Federated jobs\n\n"
        "Accuracy on the server's held-out data; times are simulated seconds since the run "
        f"started, wall-clock seconds where a job ran for real.{note}\n\n"
        + markdown_table(header, rows, "lllrrrrrr")
    )


def _comparison_section(jobs: Sequence[Job]) -> str:
    header = [
        "job",
        "overrides",
        "repetitions",
        "t_ref, cloud-based [s]",
        "t_new, client-based [s]",
        "time-saving rate Δt [%]",
    ]
    rows = []
    for job in jobs:
        s = job.summary or {}
        t_ref, t_new = s["t_ref_s"], s["t_new_s"]
        rows.append(
            [
                _job_link(job),
                _overrides_cell(job),
                str(s.get("repetitions", "?")),
                f"{t_ref['mean']:.2f} ± {t_ref.get('std', 0.0):.2f}",
                f"{t_new['mean']:.2f} ± {t_new.get('std', 0.0):.2f}",
                f"{100 * s['time_saving_rate']:+.1f}",
            ]
        )
    return (
        "## Comparison jobs\n\n"
        "Cloud-based (t_ref) against client-based (t_new) training time, mean ± std over the "
        "repetitions; Δt > 0 when client-based training is the faster.\n\n"
        + markdown_table(header, rows, "llrrrr")
    )


def _other_section(jobs: Sequence[Job]) -> str:
    rows = [[_job_link(j), _overrides_cell(j), _cell(str(j.summary.get("kind")))] for j in jobs]
    return "## Other jobs\n\n" + markdown_table(["job", "overrides", "kind"], rows, "lll")


def _failed_section(jobs: Sequence[Job]) -> str:
    rows = []
    for job in jobs:
        log_file = job.path / "run.log"
        why = "no summary.json" + (
            f"; see [{job.path.name}/run.log]({job.path.name}/run.log)"
            if log_file.is_file()
            else ""
        )
        rows.append([str(job.number), _overrides_cell(job), why])
    return "## Failed jobs\n\nThese jobs wrote no results.\n\n" + markdown_table(
        ["job", "overrides", "why"], rows, "lll"
    )


def _count(jobs: Sequence[Job], kind: str, noun: str) -> str:
    n = sum(j.kind == kind for j in jobs)
    return f"{n} {noun}" if n else ""


def render_sweep_report(sweep_dir: Path, jobs: Sequence[Job], plots: dict[str, Path]) -> str:
    """The text of the sweep's ``report.md``."""
    experiments = sorted({str(j.summary.get("experiment")) for j in jobs if j.summary})
    counts = ", ".join(
        c
        for c in (
            _count(jobs, FEDERATED, "federated"),
            _count(jobs, COMPARISON, "comparison"),
            _count(jobs, OTHER, "of another kind"),
            _count(jobs, FAILED, "failed"),
        )
        if c
    )
    common = common_overrides(jobs)
    shared = (
        "Overrides every job shares: " + ", ".join(f"`{_cell(o)}`" for o in common) + ". "
        if common
        else ""
    )
    sections = [
        f"# fedsim sweep: {', '.join(experiments) or sweep_dir.name}\n\n"
        f"{len(jobs)} jobs in `{sweep_dir.name}`: {counts}. {shared}Each job is named by the "
        "overrides that set it apart; its own directory holds its full report."
    ]
    by_kind = {k: [j for j in jobs if j.kind == k] for k in (FEDERATED, COMPARISON, OTHER, FAILED)}
    if by_kind[FEDERATED]:
        sections.append(_federated_section(by_kind[FEDERATED]))
    if by_kind[COMPARISON]:
        sections.append(_comparison_section(by_kind[COMPARISON]))
    if by_kind[OTHER]:
        sections.append(_other_section(by_kind[OTHER]))
    if by_kind[FAILED]:
        sections.append(_failed_section(by_kind[FAILED]))
    sections.append(plots_section(plots, PLOT_CAPTIONS))
    return "\n\n".join(sections) + "\n"


def write_sweep_plots(jobs: Sequence[Job], plots_dir: Path) -> dict[str, Path]:
    """The sweep's plots for the kinds of job it has; returns name -> path of those written."""
    written = {}
    federated = [j for j in jobs if j.kind == FEDERATED]
    if federated:
        curves = [
            (j.label, j.rounds, run_time(j.summary or {})[0])
            for j in federated
            if j.rounds is not None
        ]
        targets = {(j.summary or {}).get("target_accuracy") for j in federated}
        target = targets.pop() if len(targets) == 1 else None
        written["accuracy_time"] = plot_sweep_accuracy(
            curves, plots_dir / "accuracy_time.png", target=target
        )
    comparison = [j for j in jobs if j.kind == COMPARISON]
    if comparison:
        written["comparison"] = plot_sweep_comparison(
            [(j.label, j.summary) for j in comparison if j.summary is not None],
            plots_dir / "comparison.png",
        )
    return written


def write_sweep_report(sweep_dir: Path) -> Path | None:
    """Write ``report.md`` and ``plots/`` into a multirun directory; None if it has no jobs."""
    sweep_dir = Path(sweep_dir)
    jobs = read_jobs(sweep_dir)
    if not jobs:
        log.warning("no job directories in %s: no sweep report", sweep_dir)
        return None
    plots = write_sweep_plots(jobs, sweep_dir / PLOTS_DIR)
    return write_report(sweep_dir / "report.md", render_sweep_report(sweep_dir, jobs, plots))
