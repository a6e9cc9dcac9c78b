"""Table II as a fixed-width text table for the terminal."""

from __future__ import annotations

from typing import Any

from fedsim.report.tables import table_ii

_NAMES = {
    "t_ref": "t_ref  cloud-based   [s]",
    "t_new": "t_new  client-based  [s]",
    "time-saving rate": "time-saving rate Δt [%]",
}


def console_table(summary: dict[str, Any]) -> str:
    """Paper, fedsim (mean) and their difference for t_ref, t_new and the time-saving rate."""
    table = table_ii(summary)
    width = max(len(n) for n in _NAMES.values())
    lines = [
        f"Table II, mean over {summary['repetitions']} repetitions",
        f"{'':<{width}} {'paper':>8} {'fedsim':>8} {'difference':>11}",
    ]
    for quantity, row in table.iterrows():
        if row["unit"] == "s":
            values = f"{row['paper']:>8.2f} {row['fedsim']:>8.2f} {row['difference']:>+9.2f} s"
        else:
            values = f"{row['paper']:>8.1f} {row['fedsim']:>8.1f} {row['difference']:>+8.1f} pp"
        lines.append(f"{_NAMES[quantity]:<{width}} {values}")
    return "\n".join(lines)
