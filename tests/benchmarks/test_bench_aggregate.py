"""The aggregation benchmark runs end to end at ``--quick`` size and reports what it promises.

Its figures are the machine's, not asserted here; what is checked is that they are there and
consistent with each other.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_quick_run_reports_speeds_ratios_and_memory():
    # Execute
    done = subprocess.run(
        [
            sys.executable,
            "benchmarks/bench_aggregate.py",
            "--quick",
            "--updates",
            "3",
            "--repeats",
            "1",
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    # Assert: the last line is one JSON object with every figure.
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["updates"] == 3 and report["quick"] is True and report["arrays"] == 541
    for kind in ("copy", "fedavg", "validate"):
        assert report[f"{kind}_s"] > 0 and report[f"{kind}_gbps"] > 0
    for kind in ("fedavg", "validate"):
        ratio = report[f"{kind}_gbps"] / report["copy_gbps"]
        assert abs(report[f"{kind}_ratio"] - ratio) <= 0.01 * ratio + 1e-3
        assert report[f"{kind}_peak_extra_models"] >= 0
    # The result alone is one model, so the mean's peak cannot be below that.
    assert report["fedavg_peak_extra_models"] >= 1.0
