"""A real-mode run predicts itself: the simulator's prediction beside each measured round."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
COMPONENTS = ("transfer", "compute", "aggregation", "waiting")


def test_real_run_writes_its_fidelity(tmp_path: Path):
    # Prepare / Execute: two rounds on three agents.
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "fedsim",
            "+experiment=fl_digits",
            "mode=real",
            "fl.rounds=2",
            f"hydra.run.dir={tmp_path}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )

    # Assert: one row per round with the per-component columns...
    assert proc.returncode == 0, proc.stderr[-4000:]
    with open(tmp_path / "fidelity.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["round"] for r in rows] == ["0", "1"]
    columns = {"round", "predicted_s", "measured_s", "abs_rel_error"}
    for c in COMPONENTS:
        columns |= {f"predicted_{c}_s", f"measured_{c}_s", f"{c}_abs_rel_error"}
    assert columns <= rows[0].keys()
    # ...the measured times are the run's own rounds, the predicted ones the simulator's...
    with open(tmp_path / "runs.csv", newline="") as f:
        runs = list(csv.DictReader(f))
    assert [float(r["measured_s"]) for r in rows] == [float(r["total_s"]) for r in runs]
    assert all(float(r["predicted_s"]) > 0 for r in rows)
    # ...and the statistics reach the summary, the report and its plot.
    block = json.loads((tmp_path / "summary.json").read_text())["fidelity"]
    assert block["pairs"] == 2 and block["profiles"] == "spec-sheet"
    for name in ("round", *COMPONENTS):
        assert block[name]["n"] + block[name]["undefined"] == 2
    assert block["round"]["median_abs_rel_error"] >= 0
    report = (tmp_path / "report.md").read_text()
    assert "## Fidelity" in report and "![Predicted against measured time]" in report
    assert "Fidelity" in (tmp_path / "report.html").read_text()
    assert (tmp_path / "plots" / "fidelity.png").stat().st_size > 0
