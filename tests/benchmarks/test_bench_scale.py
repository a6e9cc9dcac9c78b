"""The scale benchmark runs end to end at small sizes and reports what it promises.

Its figures are the machine's, not asserted here; what is checked is that they are there and
consistent with each other.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_small_sizes_report_time_memory_the_exponent_and_the_independent_round():
    # Execute
    done = subprocess.run(
        [sys.executable, "benchmarks/bench_scale.py", "--devices", "100", "200", "--independent"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    # Assert: the last line is one JSON object about the largest size, with every size's row.
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["devices"] == 200
    assert report["wall_s"] > 0 and report["peak_rss_mb"] > report["interpreter_rss_mb"] > 0
    assert isinstance(report["exponent"], float)
    sizes = {row["devices"]: row for row in report["sizes"]}
    assert set(sizes) == {100, 200}
    for n, row in sizes.items():
        # Every device trained, and every event (3 a device, aggregate, publish) went to disk.
        assert row["completed"] == n
        assert row["events"] == 3 * n + 2
        assert row["wall_s"] >= row["build_s"] + row["run_s"] + row["write_s"] - 1e-6
        assert row["cpu_s"] > 0
        # The same round with no link shared ran too, as many devices, and the share of time
        # that sharing cost is the ratio of the two.
        alone = row["independent"]
        assert alone["completed"] == n and alone["events"] == row["events"]
        assert alone["simulated_round_s"] > 0
        assert row["network_share"] == 1 - alone["wall_s"] / row["wall_s"]
