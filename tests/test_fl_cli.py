"""Federated training end to end: ``python -m fedsim +experiment=fl_digits``."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from side_by_side import FLEET_ROUND, fedsim_runs

ROOT = Path(__file__).resolve().parent.parent


def fedsim(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fedsim", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )


def run(tmp_path: Path, *overrides: str) -> Path:
    proc = fedsim("+experiment=fl_digits", *overrides, f"hydra.run.dir={tmp_path}")
    return succeeded(proc, tmp_path)


def succeeded(proc: subprocess.CompletedProcess, run_dir: Path) -> Path:
    """``run_dir``, once ``proc`` is seen to have run into it and succeeded."""
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == f"results: {run_dir}"
    return run_dir


def rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("strategy", ["fedavg", "trimmed_mean"])
def test_fl_digits_reaches_90_percent_within_20_rounds(strategy: str, tmp_path: Path):
    d = run(tmp_path, f"strategy={strategy}")
    s = json.loads((d / "summary.json").read_text())
    assert s["strategy"]["name"] == strategy and s["rounds"] == 20
    assert s["final_accuracy"] >= 0.90 and s["round_to_target"] is not None
    assert s["rounds_aggregated"] == 20
    per_round = rows(d / "runs.csv")
    assert len(per_round) == 20
    assert float(per_round[-1]["finished_s"]) == pytest.approx(s["simulated_time_s"])
    assert {p.name for p in (d / "plots").glob("*.png")} >= {"accuracy_time.png"}
    # A simulated run is the prediction: it has none of a measured run's fidelity outputs.
    assert "fidelity" not in s and not (d / "fidelity.csv").exists()
    assert not (d / "plots" / "fidelity.png").exists()


def test_rounds_with_30_percent_dropout_end_within_their_deadline(tmp_path: Path):
    # All eight devices train; each drops out of a round with probability 0.3.
    d = run(
        tmp_path,
        "experiment.clients=[1,2,3,4,5,6,7,8]",
        "faults.dropout=0.3",
        "fl.deadline_s=5",
        "fl.rounds=10",
        "fl.min_fit=2",
    )
    per_round = rows(d / "runs.csv")
    events = rows(d / "events.csv")
    assert len(per_round) == 10
    lost = 0
    for r in per_round:
        assert r["aggregated"] == "True"
        start, end = float(r["started_s"]), float(r["finished_s"])
        aggregates = [
            float(e["start_s"])
            for e in events
            if e["kind"] == "aggregate" and start <= float(e["start_s"]) <= end
        ]
        assert aggregates and min(aggregates) <= start + 5 + 1e-9
        lost += int(r["failed"])
    assert lost > 0
    assert json.loads((d / "summary.json").read_text())["updates_lost"] == lost


def test_same_seed_same_federated_numbers(tmp_path: Path):
    # Execute: the two runs side by side, each into its own directory.
    dirs = (tmp_path / "a", tmp_path / "b")
    procs = fedsim_runs(
        *(["+experiment=fl_digits", "fl.rounds=3", f"hydra.run.dir={d}"] for d in dirs), cwd=ROOT
    )
    a, b = (succeeded(proc, d) for proc, d in zip(procs, dirs, strict=True))

    # Assert
    assert (a / "runs.csv").read_text() == (b / "runs.csv").read_text()


def test_same_seed_same_numbers_whatever_the_string_hash_seed(tmp_path: Path):
    # Prepare: a fleet of 1,000 devices with their own link speeds, whose transfers end in an
    # order the flow network works out; Python salts string hashes afresh in every process
    # (PYTHONHASHSEED), so anything that follows a set's order of links changes from run to run.
    dirs = (tmp_path / "a", tmp_path / "b")

    # Execute: the same run under two hash seeds, side by side.
    procs = fedsim_runs(
        *([*FLEET_ROUND, f"hydra.run.dir={d}"] for d in dirs),
        cwd=ROOT,
        envs=[{"PYTHONHASHSEED": "1"}, {"PYTHONHASHSEED": "2"}],
    )
    a, b = (succeeded(proc, d) for proc, d in zip(procs, dirs, strict=True))

    # Assert: every event, to the last digit of its times.
    assert (a / "events.csv").read_text() == (b / "events.csv").read_text()


def test_sweep_over_strategies_writes_one_report(tmp_path: Path):
    proc = fedsim(
        "-m",
        "+experiment=fl_digits",
        "strategy=fedavg,median",
        "fl.rounds=3",
        f"hydra.sweep.dir={tmp_path}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "report.md").exists()
    assert (tmp_path / "plots" / "accuracy_time.png").exists()
    assert "strategy=median" in (tmp_path / "report.md").read_text()
    # Jobs side by side print no bars (issue 15: four of them interleaved into one line), but
    # each its outcome in one piece.
    assert "round/s" not in proc.stderr and "rounds:" not in proc.stderr
    for job, strategy in enumerate(("fedavg", "median")):
        heading = f"job {job} (+experiment=fl_digits,fl.rounds=3,strategy={strategy}):\n"
        assert heading in proc.stdout
        assert proc.stdout.split(heading)[1].splitlines()[0].startswith("fl_digits: 3 rounds")


@pytest.mark.parametrize(
    ("override", "names"),
    [
        ("strategy.eta=3", "strategy"),
        ("fl.selection=best", "fl.selection"),
        ("fl.mode=turbo", "fl.mode"),
        ("partition.alpha=-1", "partition.alpha"),
        ("faults.dropout=1.5", "faults"),
        ("fl.min_fit=9", "fl.min_fit"),
    ],
)
def test_bad_federated_configuration_exits_with_one_line(override, names, tmp_path):
    proc = fedsim("+experiment=fl_digits", override, f"hydra.run.dir={tmp_path}")
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and names in lines[0], proc.stderr
