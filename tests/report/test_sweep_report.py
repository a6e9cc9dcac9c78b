"""The sweep report over a Hydra multirun directory, and the callback that writes it."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from fedsim.core.results import RoundRow
from fedsim.hydra_callbacks import SweepReport
from fedsim.report.federated import rounds_frame
from fedsim.report.sweep import FAILED, FEDERATED, read_jobs, write_sweep_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
REPO = Path(__file__).resolve().parents[2]
EXPERIMENT = "+experiment=fl_digits"


def write_overrides(job_dir: Path, overrides: list[str]) -> None:
    hydra_dir = job_dir / ".hydra"
    hydra_dir.mkdir(parents=True)
    (hydra_dir / "overrides.yaml").write_text(
        "".join(f"- {o}\n" for o in overrides), encoding="utf-8"
    )


def write_federated_job(
    job_dir: Path, overrides: list[str], *, gain: float, measured: bool = False
) -> None:
    write_overrides(job_dir, overrides)
    rounds = [
        RoundRow(
            round=n,
            version=n,
            started_s=10.0 * (n - 1),
            finished_s=10.0 * n,
            total_s=10.0,
            transfer_s=4.0,
            compute_s=5.0,
            aggregation_s=0.5,
            waiting_s=0.5,
            bytes_moved=1000,
            selected=3,
            completed=3,
            failed=0,
            rejected=0,
            aggregated=True,
            train_loss=1.0 / n,
            accuracy=None if n == 2 else min(1.0, 0.4 + gain * n),
        )
        for n in range(1, 6)
    ]
    rounds_frame(rounds).to_csv(job_dir / "runs.csv", index=False)
    accuracies = [r.accuracy for r in rounds if r.accuracy is not None]
    summary = {
        "experiment": "fl_digits",
        "kind": "federated",
        "mode": "real" if measured else "sim",
        "strategy": {"name": overrides[-1].split("=")[1], "clip_norm": None},
        "rounds": 5,
        "final_accuracy": accuracies[-1],
        "best_accuracy": max(accuracies),
        "target_accuracy": 0.9,
        "time_to_target_s": 50.0 if accuracies[-1] >= 0.9 else None,
        "round_to_target": 5 if accuracies[-1] >= 0.9 else None,
        # A measured run's clock is the wall's (fedsim/core/results.py).
        "wall_time_s" if measured else "simulated_time_s": 50.0,
        "rounds_aggregated": 5,
        "rounds_failed": 0,
        "updates_lost": 0,
        "updates_rejected": 0,
    }
    (job_dir / "summary.json").write_text(json.dumps(summary), encoding="utf-8")


def write_comparison_job(job_dir: Path, overrides: list[str]) -> None:
    write_overrides(job_dir, overrides)
    summary = {
        "experiment": "fl_digits",
        "mode": "sim",
        "repetitions": 3,
        "t_ref_s": {"mean": 7.0, "std": 0.25, "min": 6.7, "max": 7.3},
        "t_new_s": {"mean": 6.5, "std": 0.12, "min": 6.4, "max": 6.6},
        "time_saving_rate": 0.0714,
    }
    (job_dir / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
    (job_dir / "runs.csv").write_text("repetition,scenario,total_s\n0,cloud_based,7.0\n")


@pytest.fixture
def sweep_dir(tmp_path: Path) -> Path:
    """A multirun directory: two federated jobs, one comparison job, one failed job."""
    write_federated_job(tmp_path / "0", [EXPERIMENT, "strategy=fedavg"], gain=0.11)
    write_federated_job(tmp_path / "1", [EXPERIMENT, "fl.rounds=10", "strategy=median"], gain=0.08)
    write_comparison_job(tmp_path / "2", [EXPERIMENT, "experiment.kind=comparison"])
    write_overrides(tmp_path / "3", [EXPERIMENT, "strategy=krum"])
    (tmp_path / "3" / "run.log").write_text("ERROR: krum needs 2f + 3 updates\n")
    (tmp_path / "multirun.yaml").write_text("hydra: {}\n")
    return tmp_path


def test_sweep_report_and_plots_are_written(sweep_dir):
    # Prepare: the fixture built a multirun directory.

    # Execute
    path = write_sweep_report(sweep_dir)

    # Assert
    assert path == sweep_dir / "report.md"
    assert path.is_file()
    pngs = sorted((sweep_dir / "plots").iterdir())
    assert [p.name for p in pngs] == ["accuracy_time.png", "comparison.png"]
    assert all(p.read_bytes()[:8] == PNG_SIGNATURE for p in pngs)


def test_jobs_are_labelled_by_the_overrides_that_set_them_apart(sweep_dir):
    # Prepare: every job shares +experiment=fl_digits.

    # Execute
    jobs = read_jobs(sweep_dir)

    # Assert
    assert [j.number for j in jobs] == [0, 1, 2, 3]
    assert [j.label for j in jobs] == [
        "strategy=fedavg",
        "fl.rounds=10 strategy=median",
        "experiment.kind=comparison",
        "strategy=krum",
    ]
    assert [j.kind for j in jobs] == [FEDERATED, FEDERATED, "comparison", FAILED]


def test_report_tables_name_each_job(sweep_dir):
    # Prepare
    path = write_sweep_report(sweep_dir)

    # Execute
    report = path.read_text(encoding="utf-8")

    # Assert
    assert report.startswith("# fedsim sweep: fl_digits")
    assert "4 jobs" in report and "2 federated, 1 comparison, 1 failed" in report
    assert "Overrides every job shares: `+experiment=fl_digits`." in report
    assert (
        "| 0 | `strategy=fedavg` | fedavg (clip_norm=null) | 95.0 % | 95.0 % | 50.0 (round 5)"
        in (report)
    )
    assert "| 1 | `fl.rounds=10 strategy=median` | median (clip_norm=null) | 80.0 % |" in report
    assert "| not reached |" in report
    assert "| 2 | `experiment.kind=comparison` | 3 | 7.00 ± 0.25 | 6.50 ± 0.12 | +7.1 |" in report
    assert "](plots/accuracy_time.png)" in report and "](plots/comparison.png)" in report


def test_failed_job_is_listed_not_an_error(sweep_dir):
    # Prepare
    path = write_sweep_report(sweep_dir)

    # Execute
    report = path.read_text(encoding="utf-8")

    # Assert
    failed = report.split("## Failed jobs")[1].split("\n## ")[0]
    assert "| 3 | `strategy=krum` | no summary.json; see [3/run.log](3/run.log) |" in failed


def test_job_reports_are_linked(sweep_dir):
    # Prepare
    (sweep_dir / "0" / "report.md").write_text("# job 0\n")

    # Execute
    report = write_sweep_report(sweep_dir).read_text(encoding="utf-8")

    # Assert
    assert "| [0](0/report.md) | `strategy=fedavg` |" in report
    assert "| 1 | `fl.rounds=10 strategy=median` |" in report


def test_federated_only_sweep_writes_no_comparison_plot(tmp_path):
    # Prepare
    write_federated_job(tmp_path / "0", [EXPERIMENT, "strategy=fedavg"], gain=0.11)
    write_federated_job(tmp_path / "1", [EXPERIMENT, "strategy=median"], gain=0.08)

    # Execute
    report = write_sweep_report(tmp_path).read_text(encoding="utf-8")

    # Assert
    assert [p.name for p in (tmp_path / "plots").iterdir()] == ["accuracy_time.png"]
    assert "## Comparison jobs" not in report and "## Failed jobs" not in report


def test_directory_without_jobs_gives_none(tmp_path):
    # Prepare: only Hydra's file, no job directories.
    (tmp_path / "multirun.yaml").write_text("hydra: {}\n")

    # Execute
    path = write_sweep_report(tmp_path)

    # Assert
    assert path is None
    assert not (tmp_path / "report.md").exists()


def test_callback_writes_the_report_and_prints_its_path(sweep_dir, capsys):
    # Prepare
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep_dir)}}})

    # Execute
    SweepReport().on_multirun_end(config)

    # Assert
    assert capsys.readouterr().out.strip() == f"sweep report: {sweep_dir / 'report.md'}"
    assert (sweep_dir / "report.md").is_file()


def test_callback_logs_a_failed_report_without_failing_the_sweep(sweep_dir, monkeypatch, caplog):
    # Prepare
    def broken(_sweep_dir: Path) -> Path:
        raise RuntimeError("disk full")

    monkeypatch.setattr("fedsim.report.sweep.write_sweep_report", broken)
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep_dir)}}})

    # Execute
    with caplog.at_level(logging.ERROR, logger="fedsim.hydra_callbacks"):
        SweepReport().on_multirun_end(config)

    # Assert
    assert "could not write the sweep report" in caplog.text and "disk full" in caplog.text
    assert not (sweep_dir / "report.md").exists()


APP = """
import json
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig


@hydra.main(version_base=None, config_path=".", config_name="config")
def main(cfg):
    out = Path(HydraConfig.get().runtime.output_dir)
    rate = 0.1 * cfg.x
    summary = {"experiment": "tiny", "t_ref_s": {"mean": 1.0, "std": 0.0},
               "t_new_s": {"mean": 1.0 - rate, "std": 0.0}, "time_saving_rate": rate}
    (out / "summary.json").write_text(json.dumps(summary))


if __name__ == "__main__":
    main()
"""
CONFIG = """
x: 0
hydra:
  sweep:
    dir: ${oc.env:SWEEP_ROOT}/multirun-${now:%H-%M-%S-%f}
    subdir: ${hydra.job.num}
  callbacks:
    sweep_report:
      _target_: fedsim.hydra_callbacks.SweepReport
"""


def test_hydra_multirun_calls_the_callback_on_its_sweep_dir(tmp_path):
    # Prepare: a tiny Hydra app whose sweep dir has a timestamp, as fedsim's has.
    (tmp_path / "app.py").write_text(APP, encoding="utf-8")
    (tmp_path / "config.yaml").write_text(textwrap.dedent(CONFIG), encoding="utf-8")
    root = tmp_path / "results"
    env = {**os.environ, "SWEEP_ROOT": str(root), "PYTHONPATH": str(REPO)}

    # Execute
    done = subprocess.run(
        [sys.executable, str(tmp_path / "app.py"), "-m", "x=1,2"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
    )

    # Assert: the path printed is the report in the directory the jobs wrote to.
    assert done.returncode == 0, done.stderr
    (sweep,) = root.iterdir()
    assert done.stdout.strip().splitlines()[-1] == f"sweep report: {sweep / 'report.md'}"
    report = (sweep / "report.md").read_text(encoding="utf-8")
    assert "| 0 | `x=1` |" in report and "| 1 | `x=2` |" in report
    assert (sweep / "plots" / "comparison.png").read_bytes()[:8] == PNG_SIGNATURE


def test_sweep_comparison_draws_times_on_a_log_axis(tmp_path, monkeypatch):
    # Prepare: times two decades apart (issue 15: on a linear axis the short t_ref bars were
    # slivers).
    from fedsim.report.sweep_plots import plot_sweep_comparison

    drawn = []
    monkeypatch.setattr(
        "fedsim.report.sweep_plots.save_figure", lambda fig, path: drawn.append(fig) or path
    )

    def job(t_ref: float, t_new: float) -> dict:
        return {
            "t_ref_s": {"mean": t_ref, "std": 0.1},
            "t_new_s": {"mean": t_new, "std": 0.1},
            "time_saving_rate": (t_ref - t_new) / t_ref,
        }

    # Execute
    plot_sweep_comparison([("slow", job(30.0, 530.0)), ("fast", job(6.0, 6.7))], tmp_path / "c")

    # Assert: the shortest bar takes a fair share of the axis.
    times = drawn[0].axes[0]
    assert times.get_xscale() == "log"
    left, right = times.get_xlim()
    assert left < 6.0 and right > 530.0
    share = (np.log(6.0) - np.log(left)) / (np.log(right) - np.log(left))
    assert share > 0.1


def accuracy_axes(sweep: Path, monkeypatch: pytest.MonkeyPatch):
    """The axes of the sweep's accuracy plot, as write_sweep_report draws it."""
    drawn = []
    monkeypatch.setattr(
        "fedsim.report.sweep_plots.save_figure", lambda fig, path: drawn.append(fig) or path
    )
    write_sweep_report(sweep)
    (fig,) = drawn
    return fig.axes[0]


def test_a_sweep_of_real_jobs_plots_accuracy_over_wall_clock_time(tmp_path, monkeypatch):
    # Prepare: two jobs that ran for real (issue 15: the axis said "simulated time").
    write_federated_job(tmp_path / "0", [EXPERIMENT, "strategy=fedavg"], gain=0.1, measured=True)
    write_federated_job(tmp_path / "1", [EXPERIMENT, "strategy=median"], gain=0.1, measured=True)

    # Execute
    ax = accuracy_axes(tmp_path, monkeypatch)

    # Assert
    assert ax.get_xlabel() == "wall-clock time since the run started [s]"
    assert "wall-clock time" in ax.get_title() and "simulated" not in ax.get_title()
    labels = ax.get_legend_handles_labels()[1]
    assert labels[:2] == ["strategy=fedavg", "strategy=median"]


def test_a_sweep_mixing_clocks_names_each_jobs_clock(tmp_path, monkeypatch):
    # Prepare: one simulated job, one that ran for real.
    write_federated_job(tmp_path / "0", [EXPERIMENT, "mode=sim"], gain=0.1)
    write_federated_job(tmp_path / "1", [EXPERIMENT, "mode=real"], gain=0.1, measured=True)

    # Execute
    ax = accuracy_axes(tmp_path, monkeypatch)

    # Assert: no one clock on the axis; the legend says which job's is which.
    assert ax.get_xlabel() == "time (each job's clock) since the run started [s]"
    labels = ax.get_legend_handles_labels()[1]
    assert labels[:2] == ["mode=sim (simulated)", "mode=real (wall-clock)"]
