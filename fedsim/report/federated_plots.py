"""The four plots of a federated run: accuracy over time, time per round, timeline, label split.

Built like :mod:`fedsim.report.plots`, on the Agg canvas without pyplot, with its colours: the
time split in :data:`~fedsim.report.plots.PARTS`, event kinds in
:data:`~fedsim.report.plots.KIND_COLORS`. Each function writes one PNG and returns its path;
a plot with nothing to show says so in the figure rather than being left out.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.cm import ScalarMappable
from matplotlib.collections import PolyCollection
from matplotlib.colors import BoundaryNorm, ListedColormap
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator, PercentFormatter

from fedsim.report.plots import (
    KIND_COLORS,
    PARTS,
    UNKNOWN_KIND_COLOR,
    device_label,
    drawn_kinds,
    kind_handles,
    new_figure,
    save_figure,
)
from fedsim.report.tables import number_of_seconds

log = logging.getLogger(__name__)

MAX_TIMELINE_EVENTS = 5000  # beyond this, the timeline draws the first rounds only
FAILED_COLOR = "tab:red"
FAILED_SHADE = {"color": FAILED_COLOR, "alpha": 0.12, "linewidth": 0}
ROUND_LINES_MAX = 40  # round boundaries drawn on the timeline up to this many rounds
ROUND_TICKS_MAX = 30  # a tick per round (or per client) up to this many
LEGEND_CLASSES_MAX = 20  # more classes get a colour bar instead of a legend
TIMELINE_DEVICE_LABELS_MAX = 40  # more devices: label every k-th row


def _empty(path: Path, text: str) -> Path:
    log.warning("%s: %s", path.name, text)
    fig = new_figure(figsize=(8.0, 2.5))
    ax = fig.add_subplot()
    ax.set_axis_off()
    ax.text(0.5, 0.5, text, ha="center", va="center")
    return save_figure(fig, path)


def _shade_failed(ax: Axes, rounds: pd.DataFrame) -> bool:
    """Shade the rounds that aggregated nothing; True if there were any."""
    failed = rounds[~rounds["aggregated"]]
    for start, end in zip(failed["started_s"], failed["finished_s"], strict=True):
        ax.axvspan(start, end, **FAILED_SHADE)
    return not failed.empty


def plot_accuracy_time(
    rounds: pd.DataFrame,
    path: Path,
    *,
    target: float | None = None,
    time_to_target: float | None = None,
    round_to_target: int | None = None,
    clock: str = "simulated",
) -> Path:
    """Test accuracy over time (top) and training loss (bottom), failed rounds shaded.

    ``rounds`` is :func:`~fedsim.report.federated.rounds_frame`'s table; each evaluation is
    drawn at the end of its round; ``clock`` names the time axis (``simulated``, ``wall-clock``).
    """
    if rounds.empty:
        return _empty(path, "no rounds were run")
    evaluated = rounds[rounds["accuracy"].notna()]
    many = len(rounds) > ROUND_LINES_MAX

    fig = new_figure(figsize=(8.4, 6.4))
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [2, 1]})
    failed = False
    for ax in (top, bottom):
        failed = _shade_failed(ax, rounds)
        ax.grid(alpha=0.3)

    if evaluated.empty:
        top.text(0.5, 0.5, "no round was evaluated", ha="center", transform=top.transAxes)
    else:
        top.plot(
            evaluated["finished_s"],
            evaluated["accuracy"],
            marker="." if many else "o",
            markersize=4,
            color="tab:blue",
            label="test accuracy (server's held-out data)",
        )
    if target is not None:
        top.axhline(
            target, color="0.3", linestyle="--", linewidth=1.2, label=f"target {target:.0%}"
        )
    if time_to_target is not None:
        when = f"round {round_to_target}, " if round_to_target is not None else ""
        top.axvline(
            time_to_target,
            color="tab:green",
            linestyle=":",
            linewidth=1.5,
            label=f"target reached: {when}{number_of_seconds(time_to_target)} s",
        )
    top.yaxis.set_major_formatter(PercentFormatter(xmax=1.0, decimals=0))
    top.set_ylabel("test accuracy")
    handles = top.get_legend_handles_labels()[0]
    if failed:
        handles.append(Patch(**FAILED_SHADE, label="round not aggregated"))
    if handles:
        top.legend(handles=handles, loc="lower right", fontsize=9)

    losses = [
        ("train_loss", "train loss (clients' local training)", "tab:orange"),
        ("eval_loss", "test loss", "tab:blue"),
    ]
    drawn = False
    for column, label, color in losses:
        have = rounds[rounds[column].notna()]
        if not have.empty:
            bottom.plot(
                have["finished_s"],
                have[column],
                marker="." if many else "o",
                markersize=3,
                color=color,
                label=label,
            )
            drawn = True
    if drawn:
        bottom.legend(loc="upper right", fontsize=9)
    else:
        bottom.text(0.5, 0.5, "no losses recorded", ha="center", transform=bottom.transAxes)
    bottom.set_ylabel("loss")
    bottom.set_xlabel(f"{clock} time since the run started [s]")
    bottom.set_xlim(0, float(rounds["finished_s"].max()) * 1.02)

    final = f", final {evaluated['accuracy'].iloc[-1]:.1%}" if not evaluated.empty else ""
    top.set_title(f"Test accuracy over {len(rounds)} rounds{final}", fontsize=11)
    return save_figure(fig, path)


def plot_round_breakdown(rounds: pd.DataFrame, path: Path) -> Path:
    """Stacked bars per round: transfer, compute, aggregation and waiting on its critical path."""
    if rounds.empty:
        return _empty(path, "no rounds were run")
    x = rounds["round"].to_numpy()
    width = min(12.0, max(7.2, 3.0 + 0.25 * len(rounds)))

    fig = new_figure(figsize=(width, 4.8))
    ax = fig.add_subplot()
    bottom = np.zeros(len(rounds))
    for column, (label, color) in PARTS.items():
        values = rounds[column].to_numpy(dtype=float)
        ax.bar(x, values, 0.8, bottom=bottom, color=color, label=label)
        bottom += values
    failed = ~rounds["aggregated"].to_numpy(dtype=bool)
    if failed.any():
        lift = 0.03 * bottom.max()
        ax.plot(
            x[failed],
            bottom[failed] + lift,
            linestyle="none",
            marker="x",
            markersize=8,
            markeredgewidth=2,
            color=FAILED_COLOR,
            label="not aggregated",
        )
    if len(rounds) <= ROUND_TICKS_MAX:
        ax.set_xticks(x)
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlim(x.min() - 0.7, x.max() + 0.7)
    ax.set_ylim(0, 1.1 * bottom.max() if bottom.max() > 0 else 1.0)
    ax.set_xlabel("round")
    ax.set_ylabel("time on the round's critical path [s]")
    ax.set_title(
        f"Where each round's time goes ({len(rounds)} rounds, {int(failed.sum())} not aggregated)"
    )
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, path)


def _first_rounds(
    events: pd.DataFrame, rounds: pd.DataFrame, limit: int
) -> tuple[pd.DataFrame, int]:
    """The events of as many first rounds as stay within ``limit``; and how many rounds (>= 1)."""
    ends = rounds["finished_s"].to_numpy(dtype=float)
    starts = np.sort(events["start_s"].to_numpy(dtype=float))
    # Events that start before each round's end: the first k rounds' share of the log.
    counts = np.searchsorted(starts, ends, side="left")
    shown = max(1, int(np.searchsorted(counts, limit, side="right")))
    return events[events["start_s"] < ends[shown - 1]], shown


def _round_marks(ax: Axes, rounds: pd.DataFrame) -> None:
    """Dotted lines at round ends, and the round numbers along the top axis when few."""
    if len(rounds) > ROUND_LINES_MAX:
        return
    for end in rounds["finished_s"]:
        ax.axvline(end, color="0.5", linestyle=":", linewidth=0.8)
    if len(rounds) <= ROUND_TICKS_MAX:
        middles = (rounds["started_s"] + rounds["finished_s"]) / 2
        top = ax.secondary_xaxis("top")
        top.set_xticks(middles.to_numpy(), labels=[str(r) for r in rounds["round"]])
        top.tick_params(length=0, labelsize=8)
        top.set_xlabel("round", fontsize=9)


MAX_TIMELINE_ROWS = 60  # the server and the first 59 devices


def plot_federated_timeline(
    events: pd.DataFrame,
    rounds: pd.DataFrame,
    path: Path,
    *,
    server: int | None = None,
    max_events: int = MAX_TIMELINE_EVENTS,
    clock: str = "simulated",
) -> Path:
    """Gantt chart of the run: a row per device, the server first, a bar per event.

    A log longer than ``max_events`` is cut after the first rounds that fit, and the title
    says so; ``clock`` names the time axis.
    """
    if events.empty:
        return _empty(path, "no events were recorded")
    total = len(events)
    title = f"Timeline of the run: {total:,} events over {len(rounds)} rounds"
    if total > max_events and not rounds.empty:
        events, shown = _first_rounds(events, rounds, max_events)
        title = (
            f"Timeline of the first {shown} of {len(rounds)} rounds only "
            f"({len(events):,} of the run's {total:,} events)"
        )
        rounds = rounds.iloc[:shown]
    elif total > max_events:
        events = events.sort_values("start_s").iloc[:max_events]
        title = f"Timeline of the first {max_events:,} of {total:,} events only"

    # The server first, then the devices by id (np.unique sorts them in C: a fleet has many).
    ids = np.unique(events["device"].to_numpy())
    devices = [server] if server is not None and server in ids else []
    devices += [d for d in ids[: MAX_TIMELINE_ROWS + 1].tolist() if d != server]
    if len(ids) > MAX_TIMELINE_ROWS:
        # A row per device stops being readable (and drawable) long before a fleet's size.
        title += f"; {MAX_TIMELINE_ROWS - 1} of {len(ids) - 1:,} devices shown"
        devices = devices[:MAX_TIMELINE_ROWS]
        events = events[events["device"].isin(devices)]
    row_of = {d: i for i, d in enumerate(devices)}
    dense = len(events) > 500
    fig = new_figure(figsize=(10.0, min(18.0, 2.2 + 0.45 * len(devices))))
    ax = fig.add_subplot()
    for kind, group in events.groupby("kind"):
        # One collection per kind, not per device and kind: a tenth of the artists to draw.
        start = group["start_s"].to_numpy(dtype=float)
        rows = group["device"].map(row_of).to_numpy(dtype=float)
        ax.add_collection(
            PolyCollection(
                _rectangles(
                    start,
                    start + group["duration_s"].to_numpy(dtype=float),
                    rows - 0.35,
                    rows + 0.35,
                ),
                facecolors=KIND_COLORS.get(str(kind), UNKNOWN_KIND_COLOR),
                edgecolor="face" if dense else "black",
                linewidth=0.4,
            )
        )
    step = max(1, -(-len(devices) // TIMELINE_DEVICE_LABELS_MAX))
    ticks = range(0, len(devices), step)
    ax.set_yticks(list(ticks), labels=[device_label(devices[i], server) for i in ticks])
    ax.set_ylim(len(devices) - 0.5, -0.5)  # server on top, as one reads a schedule
    ax.set_xlim(0, float(events["end_s"].max()) * 1.01)
    ax.grid(axis="x", alpha=0.3)
    failed = _shade_failed(ax, rounds)
    _round_marks(ax, rounds)
    ax.set_xlabel(f"{clock} time since the run started [s]")
    handles = kind_handles(drawn_kinds(events, float(events["end_s"].max())))
    if failed:
        handles.append(Patch(**FAILED_SHADE, label="round not aggregated"))
    if len(rounds) <= ROUND_LINES_MAX and not rounds.empty:
        handles.append(Line2D([], [], color="0.5", linestyle=":", label="end of a round"))
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=9)
    fig.suptitle(title)
    return save_figure(fig, path)


def _class_colors(n: int) -> list[Any]:
    if n <= 10:
        return list(colormaps["tab10"].colors[:n])
    if n <= 20:
        return list(colormaps["tab20"].colors[:n])
    return [colormaps["viridis"](i / (n - 1)) for i in range(n)]


def _partition_text(partition: Mapping[str, Any] | None) -> str:
    if not partition or not partition.get("kind"):
        return ""
    if partition["kind"] == "dirichlet" and partition.get("alpha") is not None:
        return f" (Dirichlet split, α = {partition['alpha']:g})"
    return f" ({partition['kind']} split)"


def _stacked_bars(
    ax: Axes, x: np.ndarray, heights: np.ndarray, width: float, colors: Sequence[Any]
) -> np.ndarray:
    """Bars of ``heights[:, k]`` stacked in order of ``k`` at ``x``, labelled ``k``; the tops.

    One polygon collection per layer rather than ``ax.bar``'s rectangle per bar: a hundred
    clients of ten classes otherwise cost a thousand artists, a second to build and draw.
    """
    left, right = x - width / 2, x + width / 2
    bottom = np.zeros(len(x))
    for k in range(heights.shape[1]):
        top = bottom + heights[:, k]
        bars = _rectangles(left, right, bottom, top)
        ax.add_collection(PolyCollection(bars, facecolors=colors[k], label=str(k)))
        bottom = top
    ax.autoscale_view()
    return bottom


def _rectangles(x0: np.ndarray, x1: np.ndarray, y0: np.ndarray, y1: np.ndarray) -> np.ndarray:
    """The corners ``(n, 4, 2)`` of ``n`` axis-aligned rectangles, for a ``PolyCollection``."""
    corners = [(x0, y0), (x0, y1), (x1, y1), (x1, y0)]
    return np.stack([np.column_stack(c) for c in corners], axis=1)


def plot_label_distribution(
    label_counts: Mapping[int, Sequence[int]],
    path: Path,
    *,
    absent: str,
    partition: Mapping[str, Any] | None = None,
) -> Path:
    """Stacked bars of training samples per class on each client: how non-IID the split is.
    Without counts, a notice saying ``absent``: why there are none."""
    if not label_counts:
        return _empty(path, f"no label counts recorded ({absent})")
    clients = sorted(label_counts)
    classes = max(len(label_counts[c]) for c in clients)
    counts = np.zeros((len(clients), classes))
    for i, c in enumerate(clients):
        counts[i, : len(label_counts[c])] = label_counts[c]
    colors = _class_colors(classes)
    x = np.arange(len(clients))

    fig = new_figure(figsize=(min(14.0, max(6.4, 3.5 + 0.5 * len(clients))), 4.8))
    ax = fig.add_subplot()
    bottom = _stacked_bars(ax, x, counts, 0.7, colors)
    if len(clients) <= ROUND_TICKS_MAX:
        ax.set_xticks(x, labels=[f"device {c}" for c in clients])
        for xi, total in zip(x, bottom, strict=True):
            ax.annotate(
                f"{total:,.0f}", (xi, total), xytext=(0, 3), textcoords="offset points", ha="center"
            )
    else:
        step = -(-len(clients) // ROUND_TICKS_MAX)
        ax.set_xticks(x[::step], labels=[str(c) for c in clients[::step]])
        ax.set_xlabel("client device")
    ax.set_ylim(0, 1.1 * bottom.max() if bottom.max() > 0 else 1.0)
    ax.set_ylabel("training samples")
    if classes <= LEGEND_CLASSES_MAX:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9, title="class")
    else:
        norm = BoundaryNorm(np.arange(classes + 1) - 0.5, classes)
        mappable = ScalarMappable(norm=norm, cmap=ListedColormap(colors))
        fig.colorbar(mappable, ax=ax, label="class")
    ax.set_title(f"Training samples per class on each client{_partition_text(partition)}")
    return save_figure(fig, path)
