"""What a run prints in the terminal: Table II of a comparison, the outcome of a federated run."""

from __future__ import annotations

from typing import Any

from fedsim.core.results import COMPARISON, RunResult
from fedsim.report.federated_markdown import (
    percent,
    rounds_text,
    seconds,
    time_to_target_text,
)
from fedsim.report.markdown import scaled_text
from fedsim.report.tables import run_time, table_ii

_NAMES = {
    "t_ref": "t_ref  cloud-based   [s]",
    "t_new": "t_new  client-based  [s]",
    "time-saving rate": "time-saving rate Δt [%]",
}


def console_table(summary: dict[str, Any]) -> str:
    """fedsim's mean t_ref, t_new and rate; with reference figures, paper's and difference."""
    table = table_ii(summary)
    with_paper = "paper" in table
    width = max(len(n) for n in _NAMES.values())
    columns = f"{'paper':>8} {'fedsim':>8} {'difference':>11}" if with_paper else f"{'fedsim':>8}"
    lines = [f"Table II, mean over {summary['repetitions']} repetitions"]
    if summary.get("scaled"):
        against = ", not comparable with the paper's" if with_paper else ""
        lines.append(f"fedsim measured {scaled_text(summary)}{against}")
    lines.append(f"{'':<{width}} {columns}")
    for quantity, row in table.iterrows():
        seconds = row["unit"] == "s"
        if not with_paper:
            values = f"{row['fedsim']:>8.2f}" if seconds else f"{row['fedsim']:>8.1f}"
        elif seconds:
            values = f"{row['paper']:>8.2f} {row['fedsim']:>8.2f} {row['difference']:>+9.2f} s"
        else:
            values = f"{row['paper']:>8.1f} {row['fedsim']:>8.1f} {row['difference']:>+8.1f} pp"
        lines.append(f"{_NAMES[quantity]:<{width}} {values}")
    return "\n".join(lines)


def console_federated(summary: dict[str, Any]) -> str:
    """A few lines on a federated run: final and best accuracy, time to target, run time."""
    strategy = summary.get("strategy")
    name = strategy.get("name", "?") if isinstance(strategy, dict) else str(strategy)
    clients = len(summary.get("clients", []))
    clock, elapsed = run_time(summary)
    # Updates that arrived and were refused (max_update_norm, a robust rule) are not lost.
    refused = summary.get("updates_rejected")
    rejected = f", {refused} rejected" if refused else ""
    rows = [
        (
            "final accuracy",
            f"{percent(summary.get('final_accuracy'))}"
            f"  (best {percent(summary.get('best_accuracy'))})",
        ),
        ("time to target", time_to_target_text(summary)),
        (f"{clock} time", seconds(elapsed)),
        (
            "rounds",
            f"{summary.get('rounds_aggregated', '?')} aggregated, "
            f"{summary.get('rounds_failed', '?')} failed; "
            f"{summary.get('updates_lost', '?')} updates lost{rejected}",
        ),
    ]
    privacy = summary.get("privacy")
    if privacy:
        rows.append(
            (
                "privacy",
                f"{privacy.get('kind')} DP, epsilon {privacy.get('epsilon', 0.0):.3g} "
                f"at delta {privacy.get('delta', 0.0):g}",
            )
        )
    width = max(len(label) for label, _ in rows)
    rounds = rounds_text(summary.get("rounds", "?"))
    lines = [
        f"{summary.get('experiment', 'federated run')}: {rounds} of "
        f"{name} on {clients} clients ({summary.get('fl_mode', 'sync')}, "
        f"{summary.get('mode', '?')} mode)"
    ]
    lines += [f"{label:<{width}}  {value}" for label, value in rows]
    return "\n".join(lines)


def console(result: RunResult) -> str:
    """What a finished run prints, by its kind."""
    if result.kind == COMPARISON:
        return console_table(result.summary)
    return console_federated(result.summary)
