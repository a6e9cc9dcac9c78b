"""The plots of a sweep: accuracy curves of its federated jobs, times of its comparison jobs.

Built like :mod:`fedsim.report.plots`, on the Agg canvas without pyplot. Each job is named by
its label, the overrides that set it apart from the others.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.ticker import PercentFormatter

from fedsim.report.plots import new_figure, save_figure

LABEL_WIDTH = 38  # characters of an override label per line
LEGEND_INSIDE_MAX = 6  # more lines: the legend goes beside the axes
MARKERS_MAX = 40  # evaluations per line up to which each gets a marker
LINE_STYLES = ["-", "--", "-.", ":"]
T_REF_COLOR, T_NEW_COLOR = "tab:orange", "tab:blue"
WIN_COLOR, LOSS_COLOR = "tab:green", "tab:red"


def _wrap(label: str) -> str:
    return "\n".join(textwrap.wrap(label, LABEL_WIDTH, break_on_hyphens=False)) or label


def _colors(n: int) -> list[Any]:
    if n <= 10:
        return list(colormaps["tab10"].colors[:n])
    return [colormaps["viridis"](i / (n - 1)) for i in range(n)]


def plot_sweep_accuracy(
    curves: Sequence[tuple[str, pd.DataFrame | None, str]],
    path: Path,
    *,
    target: float | None = None,
) -> Path:
    """One line per job: test accuracy over time, from each job's ``runs.csv``.

    Each curve is ``(label, rounds, clock)``, its clock ``simulated`` or ``wall-clock``
    (:func:`fedsim.report.tables.run_time`). The axis names the clock the jobs share; when
    they differ, each job's label names its own.
    """
    fig = new_figure(figsize=(9.6, 5.4))
    ax = fig.add_subplot()
    colors = _colors(max(1, len(curves)))
    clocks = sorted({clock for _, _, clock in curves})
    clock = clocks[0] if len(clocks) == 1 else None
    for i, (job_label, rounds, job_clock) in enumerate(curves):
        label = job_label if clock is not None else f"{job_label} ({job_clock})"
        evaluated = rounds[rounds["accuracy"].notna()] if rounds is not None else pd.DataFrame()
        if evaluated.empty:
            ax.plot([], [], color=colors[i], label=_wrap(f"{label} (not evaluated)"))
            continue
        ax.plot(
            evaluated["finished_s"],
            evaluated["accuracy"],
            color=colors[i],
            linestyle=LINE_STYLES[(i // 10) % len(LINE_STYLES)],
            marker="o" if len(evaluated) <= MARKERS_MAX else None,
            markersize=3.5,
            label=_wrap(label),
        )
    if target is not None:
        ax.axhline(target, color="0.3", linestyle="--", linewidth=1.2, label=f"target {target:.0%}")
    if not curves:
        ax.text(0.5, 0.5, "no job left a readable runs.csv", ha="center", transform=ax.transAxes)
    ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0, decimals=0))
    ax.set_xlim(left=0)
    clock_text = f"{clock} time" if clock is not None else "time (each job's clock)"
    ax.set_xlabel(f"{clock_text} since the run started [s]")
    ax.set_ylabel("test accuracy")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        if len(curves) <= LEGEND_INSIDE_MAX:
            ax.legend(loc="lower right", fontsize=9)
        else:
            ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    ax.set_title(f"Test accuracy over {clock or 'elapsed'} time, {len(curves)} federated jobs")
    return save_figure(fig, path)


def plot_sweep_comparison(items: Sequence[tuple[str, Mapping[str, Any]]], path: Path) -> Path:
    """Per job: t_ref and t_new, mean ± std (left), and the time-saving rate Δt (right)."""
    labels = [_wrap(label) for label, _ in items]
    t_ref = np.array([[s["t_ref_s"]["mean"], s["t_ref_s"].get("std", 0.0)] for _, s in items])
    t_new = np.array([[s["t_new_s"]["mean"], s["t_new_s"].get("std", 0.0)] for _, s in items])
    rate = np.array([100.0 * s["time_saving_rate"] for _, s in items])
    y = np.arange(len(items))
    lines = sum(label.count("\n") + 1 for label in labels)

    fig = new_figure(figsize=(11.0, 1.8 + 0.35 * lines + 0.35 * len(items)))
    times, rates = fig.subplots(1, 2, sharey=True, gridspec_kw={"width_ratios": [3, 2]})
    height = 0.38
    for offset, values, color, name in (
        (-height / 2, t_ref, T_REF_COLOR, "t_ref, cloud-based"),
        (height / 2, t_new, T_NEW_COLOR, "t_new, client-based"),
    ):
        bars = times.barh(
            y + offset, values[:, 0], height, xerr=values[:, 1], capsize=3, color=color, label=name
        )
        times.bar_label(bars, fmt="{:,.2f} s", padding=4, fontsize=8)
    times.set_yticks(y, labels=labels)
    times.set_ylim(len(items) - 0.5, -0.5)  # first job on top
    # A log axis: a sweep's times span decades (a 10 Mb/s link against a 1 Gb/s one), and on a
    # linear one the short bars shrink to slivers. Bars start at the axis's left edge.
    means = np.concatenate([t_ref[:, 0], t_new[:, 0]])
    shortest = float(means[means > 0].min()) if (means > 0).any() else 1.0
    longest = float((np.vstack([t_ref, t_new]).sum(axis=1)).max())
    times.set_xscale("log")
    times.set_xlim(shortest / 3, max(longest, shortest) * 4)  # room for the value labels
    times.set_xlabel("training time [s], mean ± std (log scale)")
    times.grid(axis="x", alpha=0.3)

    bars = rates.barh(y, rate, 0.5, color=[WIN_COLOR if r > 0 else LOSS_COLOR for r in rate])
    rates.bar_label(bars, fmt="{:+.1f} %", padding=4, fontsize=8)
    rates.axvline(0.0, color="black", linewidth=0.8)
    span = max(1.0, float(np.abs(rate).max()))
    # Room for the value labels on the side(s) where bars are; a sliver on the other.
    rates.set_xlim(
        -(1.6 if (rate < 0).any() else 0.1) * span, (1.6 if (rate > 0).any() else 0.1) * span
    )
    rates.set_xlabel("time-saving rate Δt [%]")
    rates.set_title("Δt > 0: client-based faster", fontsize=9, loc="left")
    rates.grid(axis="x", alpha=0.3)
    fig.legend(loc="outside lower center", ncols=2, fontsize=9)
    fig.suptitle(f"Cloud-based against client-based training time, {len(items)} jobs")
    return save_figure(fig, path)
