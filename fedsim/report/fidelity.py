"""A measured run's fidelity: ``fidelity.csv``, ``plots/fidelity.png`` and the report's section.

The records (:class:`fedsim.core.fidelity.Fidelity`) pair each measured round, or repetition x
scenario, with the simulator's prediction of it; the statistics come from the summary's
``fidelity`` block, which :func:`fedsim.pipeline.predict` wrote with the same records. Both
report renderers get the section from :func:`write_fidelity`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.ticker import MaxNLocator

from fedsim.core.fidelity import COMPONENTS, SPEC_SHEET, Fidelity
from fedsim.core.results import RunResult
from fedsim.report.markdown import markdown_table
from fedsim.report.plots import PARTS, new_figure, save_figure
from fedsim.report.tables import SCENARIO_LABELS

CSV_NAME = "fidelity.csv"
PLOT_NAME = "fidelity.png"
WORST_LISTED = 3  # rounds with the largest error of the round time the section names
ROUND_COLOR = "black"
TICKS_LABELLED_MAX = 12  # more comparison rows: their labels would collide


def fidelity_frame(records: Sequence[Fidelity]) -> pd.DataFrame:
    """One row per record: its key, predicted and measured times, and their errors (NaN where
    a zero measured component leaves the error without a value)."""
    frame = pd.DataFrame([r.as_row() for r in records])
    errors = [c for c in frame.columns if c.endswith("abs_rel_error")]
    frame[errors] = frame[errors].astype(float)
    return frame


def _total_label(records: Sequence[Fidelity]) -> str:
    return "round time" if records[0].round is not None else "scenario time"


def _key(record: Fidelity) -> str:
    if record.round is not None:
        return f"round {record.round}"
    return f"repetition {record.repetition}, {record.scenario}"


def plot_fidelity(records: Sequence[Fidelity], path: Path) -> Path:
    """Left: predicted and measured time of each row. Right: predicted against measured time,
    of the rows and of each component, on log axes around the line y = x."""
    frame = fidelity_frame(records)
    rounds = records[0].round is not None
    x = frame["round"].to_numpy() if rounds else np.arange(len(frame))
    fig = new_figure(figsize=(11.0, 4.6))
    rows_ax, scatter_ax = fig.subplots(1, 2)

    # Rounds follow each other; a comparison's rows are separate runs, not joined by a line.
    line, dashed = ("-", "--") if rounds else ("", "")
    rows_ax.plot(x, frame["measured_s"], f"o{line}", color=ROUND_COLOR, label="measured")
    rows_ax.plot(x, frame["predicted_s"], f"s{dashed}", color="tab:orange", label="predicted (sim)")
    if rounds:
        rows_ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        rows_ax.set_xlabel("round")
    else:
        labels = [
            f"{r.repetition}, {SCENARIO_LABELS.get(r.scenario or '', r.scenario)}" for r in records
        ]
        if len(labels) <= TICKS_LABELLED_MAX:
            rows_ax.set_xticks(x, labels=labels, rotation=30, ha="right")
        rows_ax.set_xlabel("repetition, scenario" if len(labels) <= TICKS_LABELLED_MAX else "row")
    rows_ax.set_ylabel("time [s]")
    rows_ax.set_yscale("log")
    rows_ax.set_title(f"Each {'round' if rounds else 'row'}: predicted and measured")
    rows_ax.legend()

    series = [("", _total_label(records), ROUND_COLOR, "o")] + [
        (f"_{c}", *PARTS[f"{c}_s"], ".") for c in COMPONENTS
    ]
    shown: list[float] = []
    for infix, label, color, marker in series:
        predicted = frame[f"predicted{infix}_s"].to_numpy()
        measured = frame[f"measured{infix}_s"].to_numpy()
        positive = (predicted > 0) & (measured > 0)  # log axes: zeros cannot be drawn
        if positive.any():
            scatter_ax.scatter(
                measured[positive], predicted[positive], color=color, marker=marker, label=label
            )
            shown += [*measured[positive], *predicted[positive]]
    if shown:
        low, high = min(shown) / 1.5, max(shown) * 1.5
        scatter_ax.plot([low, high], [low, high], color="0.5", linewidth=1, label="y = x")
        scatter_ax.set_xlim(low, high)
        scatter_ax.set_ylim(low, high)
    scatter_ax.set_xscale("log")
    scatter_ax.set_yscale("log")
    scatter_ax.set_xlabel("measured [s]")
    scatter_ax.set_ylabel("predicted [s]")
    scatter_ax.set_title("Predicted against measured (zeros left out)")
    scatter_ax.legend(fontsize=8, loc="upper left")
    return save_figure(fig, path)


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f} %"


def _statistics_table(block: Mapping[str, Any], records: Sequence[Fidelity]) -> str:
    header = ["", "median error", "p90 error", "predicted [s]", "measured [s]", "rows"]
    frame = fidelity_frame(records)
    rows = []
    for name, label in {"round": _total_label(records), **{c: c for c in COMPONENTS}}.items():
        infix = "" if name == "round" else f"_{name}"
        stats = block[name]
        counted = f"{stats['n']}"
        if stats["undefined"]:
            counted += f" ({stats['undefined']} left out)"
        rows.append(
            [
                label,
                _percent(stats["median_abs_rel_error"]),
                _percent(stats["p90_abs_rel_error"]),
                f"{frame[f'predicted{infix}_s'].sum():.3f}",
                f"{frame[f'measured{infix}_s'].sum():.3f}",
                counted,
            ]
        )
    return markdown_table(header, rows, "lrrrrr")


def _worst(records: Sequence[Fidelity]) -> str:
    ranked = sorted(
        (r for r in records if r.error() is not None), key=lambda r: -(r.error() or 0.0)
    )[:WORST_LISTED]
    if not ranked:
        return ""
    header = ["", "predicted [s]", "measured [s]", "error", *COMPONENTS]
    rows = [
        [
            _key(r),
            f"{r.predicted_s:.3f}",
            f"{r.measured_s:.3f}",
            _percent(r.error()),
            *(
                f"{getattr(r, f'predicted_{c}_s'):.3f} / {getattr(r, f'measured_{c}_s'):.3f}"
                for c in COMPONENTS
            ),
        ]
        for r in ranked
    ]
    return (
        f"The largest errors of the {_total_label(records)} (components as predicted / "
        "measured seconds):\n\n" + markdown_table(header, rows, "lrrrrrrr")
    )


def _profiles_note(profiles: str) -> str:
    note = f"The prediction used **{profiles}** profiles."
    if SPEC_SHEET in profiles:
        note += (
            " Spec-sheet profiles describe the hardware and links the topology names, not the "
            "devices that ran here: unless those devices are that hardware, or are emulated to "
            "its speed, large errors measure how far they are from the profiles more than how "
            "good the simulator's model is. Measured (calibrated) profiles of the devices make "
            "this section a test of the model."
        )
    return note


def fidelity_section(
    summary: Mapping[str, Any], records: Sequence[Fidelity], plot: Path | None
) -> str:
    """The report's Fidelity section: statistics, the worst rows, the profiles, the plot."""
    block = summary["fidelity"]
    unit = "round" if records[0].round is not None else "repetition x scenario"
    parts = [
        "## Fidelity: the simulator's prediction of this run\n\n"
        f"The same config and seed were simulated (mode=sim, same clients, faults and "
        f"strategy), and each of the {block['pairs']} measured rows (one per {unit}) was "
        "paired with its prediction. Error is the absolute relative error "
        "|predicted − measured| / measured. A component under "
        f"{block['zero_s'] * 1e6:g} µs counts as zero: predicted and measured both zero is "
        "exact; a measured zero against a non-zero prediction has no relative error and is "
        "left out of the statistics (counted under rows). " + _profiles_note(block["profiles"]),
        _statistics_table(block, records),
        _worst(records),
        "Every row is in `fidelity.csv`.",
    ]
    if plot is not None:
        parts.append(f"![Predicted against measured time](plots/{plot.name})")
    return "\n\n".join(p for p in parts if p)


def write_fidelity(result: RunResult, run_dir: Path, plots_dir: Path | None) -> str:
    """Write ``fidelity.csv`` and the plot of a measured run (none with ``plots_dir`` None);
    returns the report's section (empty for a run without a prediction, which writes neither
    file)."""
    if not result.fidelity:
        return ""
    fidelity_frame(result.fidelity).to_csv(run_dir / CSV_NAME, index=False)
    plot = None if plots_dir is None else plot_fidelity(result.fidelity, plots_dir / PLOT_NAME)
    return fidelity_section(result.summary, result.fidelity, plot)
