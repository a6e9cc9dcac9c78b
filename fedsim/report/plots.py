"""The four plots of a run, as PNG files: Table II bars, time breakdown, a timeline, crossover.

Each function takes tables or the summary and an output path, writes the PNG and returns the
path. Figures are built with ``matplotlib.figure.Figure`` on the Agg canvas rather than through
``pyplot``: nothing is registered in pyplot's global figure list, so nothing is left open to
leak across a sweep of runs, and no GUI backend is ever chosen.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import FuncNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, NullFormatter

from fedsim.core.events import EventKind
from fedsim.report.tables import SCENARIO_LABELS, scenario_order, short_number

log = logging.getLogger(__name__)

DPI = 120
PAPER_COLOR = "0.65"
FEDSIM_COLOR = "tab:blue"
# The breakdown's colours echo the timeline's: compute green as train, aggregation purple.
PARTS = {
    "transfer_s": ("transfer", "tab:blue"),
    "compute_s": ("compute", "tab:green"),
    "aggregation_s": ("aggregation", "tab:purple"),
    "waiting_s": ("waiting", "0.75"),
}
KIND_COLORS = {
    EventKind.DATA_UPLOAD.value: "tab:red",
    EventKind.MODEL_DOWNLOAD.value: "tab:blue",
    EventKind.UPDATE_UPLOAD.value: "tab:cyan",
    EventKind.TRAIN.value: "tab:green",
    EventKind.AGGREGATE.value: "tab:purple",
    EventKind.PUBLISH.value: "tab:olive",
    EventKind.EVALUATE.value: "tab:orange",
    EventKind.SECAGG_DOWNLOAD.value: "tab:gray",
    EventKind.SECAGG_UPLOAD.value: "tab:pink",
    EventKind.SECAGG.value: "tab:brown",
}
UNKNOWN_KIND_COLOR = "0.5"
# A timeline bar narrower than this share of its axis (under two pixels of a chart 1,000 wide)
# shows as its outline at most, not its colour.
VISIBLE_FRACTION = 1 / 500
PAPER_RATE_COLOR = "tab:orange"  # apart from the diverging blue-red scale and the black line
RATE_LINEAR_PERCENT = 10.0  # the crossover colour scale is linear within ± this; see rate_scale
GRID_TICKS_MAX = 7  # beyond this many grid values, tick labels would collide


def new_figure(**kwargs: Any) -> Figure:
    """A constrained-layout figure on its own Agg canvas, outside pyplot's figure list."""
    fig = Figure(layout="constrained", **kwargs)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, path: Path) -> Path:
    """Write ``fig`` to ``path`` as a PNG (creating its directory) and return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    return path


def plot_tref_tnew(summary: dict[str, Any], path: Path) -> Path:
    """Bars of fedsim's mean t_ref and t_new with std error bars, beside the paper's if given."""
    paper = summary.get("paper")
    means = [summary["t_ref_s"]["mean"], summary["t_new_s"]["mean"]]
    stds = [summary["t_ref_s"]["std"], summary["t_new_s"]["std"]]
    fedsim_rate = f"fedsim {100 * summary['time_saving_rate']:+.1f} %"
    x = np.arange(2)

    fig = new_figure(figsize=(6.4, 4.8))
    ax = fig.add_subplot()
    if paper is None:
        width, fedsim_x, paper_values = 0.5, x, []
        title = f"Table II: training time in fedsim\ntime-saving rate Δt: {fedsim_rate}"
    else:
        width = 0.38
        fedsim_x = x + width / 2
        paper_values = [paper["t_ref_s"], paper["t_new_s"]]
        paper_bars = ax.bar(x - width / 2, paper_values, width, color=PAPER_COLOR, label="paper")
        ax.bar_label(paper_bars, fmt="{:.2f} s", padding=3)
        title = (
            "Table II: training time, paper vs fedsim\n"
            f"time-saving rate Δt: paper {100 * paper['time_saving_rate']:+.1f} %, {fedsim_rate}"
        )
    fedsim_bars = ax.bar(
        fedsim_x,
        means,
        width,
        yerr=stds,
        capsize=5,
        color=FEDSIM_COLOR,
        label=f"fedsim (mean ± std, {summary['repetitions']} repetitions)",
    )
    # bar_label puts the fedsim labels above the error bars, clear of the caps.
    ax.bar_label(fedsim_bars, fmt="{:.2f} s", padding=3)
    top = max(*paper_values, *(m + s for m, s in zip(means, stds, strict=True)))
    ax.set_ylim(0, 1.3 * top)
    ax.set_xticks(x, labels=["t_ref\ncloud-based", "t_new\nclient-based"])
    ax.set_ylabel("training time [s]")
    ax.legend(loc="upper left")
    ax.set_title(title, fontsize=11)
    return save_figure(fig, path)


def plot_breakdown(runs: pd.DataFrame, path: Path) -> Path:
    """Stacked bars per scenario: mean transfer, compute, aggregation and waiting time."""
    order = scenario_order(runs["scenario"])
    grouped = runs.groupby("scenario")
    means = grouped[list(PARTS)].mean().reindex(order)
    total_mean = grouped["total_s"].mean().reindex(order).to_numpy()
    total_std = grouped["total_s"].std(ddof=0).reindex(order).fillna(0.0).to_numpy()
    x = np.arange(len(order))

    fig = new_figure(figsize=(7.2, 4.8))
    ax = fig.add_subplot()
    bottom = np.zeros(len(order))
    for column, (label, color) in PARTS.items():
        values = means[column].to_numpy()
        bars = ax.bar(x, values, 0.55, bottom=bottom, color=color, label=label)
        # Only segments tall enough to hold their number get one.
        texts = [f"{v:.2f}" if v >= 0.06 * total_mean.max() else "" for v in values]
        ax.bar_label(bars, labels=texts, label_type="center", fontsize=9)
        bottom += values
    ax.errorbar(x, total_mean, yerr=total_std, fmt="none", ecolor="black", capsize=5)
    for xi, m, s in zip(x, total_mean, total_std, strict=True):
        ax.annotate(
            f"total {m:.2f} ± {s:.2f} s",
            (xi, m + s),
            xytext=(0, 4),
            textcoords="offset points",
            ha="center",
            va="bottom",
        )
    ax.set_xticks(x, labels=[SCENARIO_LABELS.get(s, s) for s in order])
    ax.set_ylim(0, 1.15 * (total_mean + total_std).max())
    ax.set_ylabel("mean time on the critical path [s]")
    ax.set_title(f"Where the time goes (mean over {runs['repetition'].nunique()} repetitions)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return save_figure(fig, path)


def device_label(device: int, server: int | None) -> str:
    return f"device {device} (server)" if device == server else f"device {device}"


def kind_handles(kinds: Iterable[str]) -> list[Patch]:
    """Legend patches for the event kinds present, in EventKind's order, then others by name."""
    present = set(kinds)
    known = [k.value for k in EventKind if k.value in present]
    return [
        Patch(facecolor=KIND_COLORS.get(k, UNKNOWN_KIND_COLOR), edgecolor="black", label=k)
        for k in known + sorted(present - set(known))
    ]


def drawn_kinds(events: pd.DataFrame, span: float) -> list[str]:
    """The event kinds with a bar that shows on a time axis ``span`` seconds long: at least
    VISIBLE_FRACTION of it. The legend lists only these (a 1 ms aggregation on a 6 s axis
    draws nothing, and a legend entry for it would send the reader looking)."""
    if events.empty:
        return []
    longest = events.groupby("kind", observed=True)["duration_s"].max()
    return [str(k) for k, d in longest.items() if d >= span * VISIBLE_FRACTION]


def plot_timeline(
    events: pd.DataFrame, path: Path, *, repetition: int = 0, server: int | None = None
) -> Path:
    """Gantt chart of one repetition: a row per device, a subplot per scenario, shared x."""
    rep = events[events["repetition"] == repetition]
    if rep.empty:
        log.warning("no events for repetition %d: the timeline is empty", repetition)
        fig = new_figure(figsize=(8.0, 2.5))
        ax = fig.add_subplot()
        ax.set_axis_off()
        ax.text(0.5, 0.5, f"no events recorded for repetition {repetition}", ha="center")
        return save_figure(fig, path)

    order = scenario_order(rep["scenario"])
    devices = {s: sorted(rep.loc[rep["scenario"] == s, "device"].unique()) for s in order}
    rows = [len(devices[s]) for s in order]
    fig = new_figure(figsize=(9.0, 1.6 + 0.45 * sum(rows) + 0.5 * len(order)))
    axes = fig.subplots(
        len(order), 1, sharex=True, squeeze=False, gridspec_kw={"height_ratios": rows}
    )[:, 0]
    for ax, scenario in zip(axes, order, strict=True):
        frame = rep[rep["scenario"] == scenario]
        for row, device in enumerate(devices[scenario]):
            for kind, group in frame[frame["device"] == device].groupby("kind"):
                ax.broken_barh(
                    list(zip(group["start_s"], group["duration_s"], strict=True)),
                    (row - 0.35, 0.7),
                    facecolors=KIND_COLORS.get(kind, UNKNOWN_KIND_COLOR),
                    edgecolor="black",
                    linewidth=0.4,
                )
        ax.set_yticks(
            range(len(devices[scenario])),
            labels=[device_label(d, server) for d in devices[scenario]],
        )
        # First device on top, as one reads a schedule.
        ax.set_ylim(len(devices[scenario]) - 0.5, -0.5)
        ax.grid(axis="x", alpha=0.3)
        ax.set_title(
            f"{SCENARIO_LABELS.get(scenario, scenario)}: ends at {frame['end_s'].max():.2f} s",
            loc="left",
            fontsize=10,
        )
    axes[-1].set_xlabel("time since the scenario started [s]")
    axes[-1].set_xlim(left=0)

    handles = kind_handles(drawn_kinds(rep, float(rep["end_s"].max())))
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=9)
    fig.suptitle(f"Timeline of repetition {repetition}")
    return save_figure(fig, path)


def _grid_ticks(axis: Any, values: np.ndarray) -> None:
    """Plain-number ticks on a log axis: at the grid values themselves when there are few."""
    if len(values) <= GRID_TICKS_MAX:
        axis.set_ticks(values)
    axis.set_major_formatter(FuncFormatter(lambda v, _pos: short_number(v)))
    axis.set_minor_formatter(NullFormatter())


def _log_fractions(values: np.ndarray) -> np.ndarray:
    """Where grid values sit along a log axis spanning them, from 0 to 1."""
    logs = np.log(values)
    span = logs[-1] - logs[0]
    return (logs - logs[0]) / span if span > 0 else np.full(len(values), 0.5)


def _label_region(
    ax: Any, inside: np.ndarray, outside: np.ndarray, xs: np.ndarray, ys: np.ndarray, text: str
) -> None:
    """Write ``text`` on the grid cells ``inside`` (rows: ys, columns: xs).

    The label goes on the inside cell farthest from any ``outside`` cell, so it sits deep in its
    region rather than on the break-even line; it is kept off the edges to stay in the axes.
    """
    x, y = 0.5, 0.5  # the whole grid is one region
    if outside.any():
        fx, fy = np.meshgrid(_log_fractions(xs), _log_fractions(ys))
        ix, iy = fx[inside], fy[inside]
        clearance = np.min(
            (ix[:, None] - fx[outside]) ** 2 + (iy[:, None] - fy[outside]) ** 2, axis=1
        )
        best = int(np.argmax(clearance))
        x, y = float(np.clip(ix[best], 0.15, 0.85)), float(np.clip(iy[best], 0.08, 0.92))
    ax.text(
        x,
        y,
        text,
        transform=ax.transAxes,
        ha="center",
        va="center",
        fontsize=10,
        fontweight="bold",
        bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.8},
    )


def _round_levels(reach: float) -> list[float]:
    """1-2-5 steps from RATE_LINEAR_PERCENT up to the first at or beyond ``reach``."""
    levels: list[float] = []
    for decade in itertools.count():
        for m in (1, 2, 5):
            levels.append(m * RATE_LINEAR_PERCENT * 10.0**decade)
            if levels[-1] >= reach:
                return levels
    raise AssertionError("unreachable: itertools.count() does not end")


def _symlog(v: Any) -> Any:
    """A logarithm that passes through 0: about linear within ±RATE_LINEAR_PERCENT."""
    return np.sign(v) * np.log10(1.0 + np.abs(v) / RATE_LINEAR_PERCENT)


def _symlog_inverse(y: Any) -> Any:
    return np.sign(y) * RATE_LINEAR_PERCENT * (10.0 ** np.abs(y) - 1.0)


def rate_scale(low: float, high: float) -> tuple[Normalize, np.ndarray]:
    """The crossover's colour scale for rates (in %) from ``low`` to ``high``: its norm and
    contour levels.

    White at 0, about linear within ±RATE_LINEAR_PERCENT and logarithmic beyond, each side out
    to the grid's furthest rate on it, so that both get the colour map's full depth. A rate
    cannot exceed 100 % but is unbounded below (client-based ten times slower is -900 %): a
    linear scale that reaches that far washes out the cells near the crossover, and one that
    stops at ±100 % paints every slower cell the same red. Levels run 1-2-5 per decade, so
    each band of the map is a round range.
    """
    below = _round_levels(max(-low, RATE_LINEAR_PERCENT))
    above = _round_levels(max(high, RATE_LINEAR_PERCENT))
    inner = np.linspace(-RATE_LINEAR_PERCENT, RATE_LINEAR_PERCENT, 5)
    levels = np.unique(np.concatenate([-np.array(below), inner, np.array(above)]))
    # Each side scaled to [-1, 0] and [0, 1] on its own, so that 0 stays in the middle.
    down, up = float(_symlog(below[-1])), float(_symlog(above[-1]))

    def forward(v: Any) -> Any:
        y = _symlog(np.asarray(v, dtype=float))
        return np.where(y < 0, y / down, y / up)

    def inverse(y: Any) -> Any:
        y = np.asarray(y, dtype=float)
        return _symlog_inverse(np.where(y < 0, y * down, y * up))

    return FuncNorm((forward, inverse), vmin=-below[-1], vmax=above[-1]), levels


def _mark_current(ax: Any, samples: float | None, bandwidth_mbps: float | None) -> None:
    """The configuration that was run: a point, or a line when its bandwidth is not known."""
    if samples is not None and bandwidth_mbps is not None:
        ax.plot(
            bandwidth_mbps,
            samples,
            marker="*",
            markersize=16,
            color="gold",
            markeredgecolor="black",
            linestyle="none",
            label=(
                f"current: {short_number(bandwidth_mbps)} Mb/s, {short_number(samples)} samples"
            ),
        )
    elif samples is not None:
        ax.axhline(
            samples,
            color="black",
            linestyle="--",
            linewidth=1.2,
            label=f"current data per device: {short_number(samples)} samples",
        )


def _mark_paper_rate(
    ax: Any, bandwidths: np.ndarray, samples: np.ndarray, rate: np.ndarray, percent: float
) -> None:
    """A dashed contour where Δt equals the paper's rate, named in the legend.

    When the grid never reaches that rate, the legend says so instead of drawing nothing.
    """
    label = f"Δt = {percent:.1f} %: the paper's Table II"
    if float(rate.min()) <= percent <= float(rate.max()):
        ax.contour(
            bandwidths,
            samples,
            rate,
            levels=[percent],
            colors=PAPER_RATE_COLOR,
            linestyles="--",
            linewidths=1.8,
        )
        ax.plot([], [], color=PAPER_RATE_COLOR, linestyle="--", linewidth=1.8, label=label)
    else:
        ax.plot([], [], linestyle="none", label=f"{label}: not reached on this grid")


def plot_crossover(
    crossover: pd.DataFrame,
    path: Path,
    *,
    link: str = "",
    current_samples: float | None = None,
    current_bandwidth_mbps: float | None = None,
    bytes_per_sample: float | None = None,
    paper_rate: float | None = None,
) -> Path | None:
    """Time-saving rate over link bandwidth x data per device; None (and a warning) if no grid.

    The current configuration is a point when its bandwidth is known, else a line at its data
    per device. With ``bytes_per_sample`` the right axis gives the data per device in MB. With
    ``paper_rate`` (a fraction) a dashed line marks where Δt equals the paper's.
    """
    if crossover.empty:
        log.warning("no crossover grid in the result: %s not written", path.name)
        return None
    grid = crossover.pivot_table(
        index="samples_per_device",
        columns="bandwidth_mbps",
        values="time_saving_rate",
        aggfunc="mean",
    )
    bandwidths = grid.columns.to_numpy(dtype=float)
    samples = grid.index.to_numpy(dtype=float)
    rate = np.ma.masked_invalid(100.0 * grid.to_numpy(dtype=float))
    low, high = float(rate.min()), float(rate.max())
    norm, levels = rate_scale(low, high)

    fig = new_figure(figsize=(8.4, 5.8))
    ax = fig.add_subplot()
    if len(bandwidths) >= 2 and len(samples) >= 2:
        filled = ax.contourf(bandwidths, samples, rate, levels=levels, cmap="RdBu", norm=norm)
        if low < 0.0 < high:
            ax.contour(bandwidths, samples, rate, levels=[0.0], colors="black", linewidths=1.5)
            # An inline contour label cuts a gap into a short line; the legend names it instead.
            ax.plot([], [], color="black", linewidth=1.5, label="Δt = 0: break-even")
        if paper_rate is not None:
            _mark_paper_rate(ax, bandwidths, samples, rate, 100.0 * paper_rate)
    else:
        # A sweep along one axis only has no area to fill: show its points.
        xs, ys = np.meshgrid(bandwidths, samples)
        filled = ax.scatter(
            xs.ravel(),
            ys.ravel(),
            c=rate.ravel(),
            cmap="RdBu",
            norm=norm,
            s=300,
            marker="s",
            edgecolors="black",
        )
        ax.margins(0.3)
    ax.set_xscale("log")
    ax.set_yscale("log")
    _grid_ticks(ax.xaxis, bandwidths)
    _grid_ticks(ax.yaxis, samples)

    # Name each side inside it.
    filled_rate = rate.filled(np.nan)
    wins, loses = filled_rate > 0.0, filled_rate < 0.0
    if wins.any():
        _label_region(ax, wins, loses, bandwidths, samples, "client-based wins")
    if loses.any():
        _label_region(ax, loses, wins, bandwidths, samples, "cloud-based wins")

    _mark_current(ax, current_samples, current_bandwidth_mbps)
    if ax.get_legend_handles_labels()[0]:
        fig.legend(loc="outside lower center", ncols=2, fontsize=9)

    ax.set_xlabel(f"bandwidth of {link} [Mb/s]" if link else "link bandwidth [Mb/s]")
    ax.set_ylabel("data per device [samples]")
    if bytes_per_sample:
        megabytes = ax.secondary_yaxis(
            "right",
            functions=(
                lambda s: s * bytes_per_sample / 1e6,
                lambda mb: mb * 1e6 / bytes_per_sample,
            ),
        )
        megabytes.set_ylabel("data per device [MB]")
        _grid_ticks(megabytes.yaxis, samples * bytes_per_sample / 1e6)
    label = "time-saving rate Δt [%], > 0: client-based faster\n"
    label += f"(logarithmic beyond ±{RATE_LINEAR_PERCENT:g} %)"
    bar = fig.colorbar(filled, ax=ax, label=label)
    # Ticks at 0 and each decade: the contour levels between them are too many to label.
    decades = [v for v in levels if v == 0 or math.log10(abs(v)).is_integer()]
    bar.set_ticks(decades, labels=[f"{v:+g}" if v else "0" for v in decades])
    ax.set_title("Crossover: time-saving rate of client-based over cloud-based training")
    return save_figure(fig, path)
