"""The writer's fidelity outputs of a measured run: ``fidelity.csv``, the plot, the section."""

from __future__ import annotations

import csv
from pathlib import Path

from fedsim.core.fidelity import Fidelity, summary
from fedsim.core.results import COMPARISON, RunResult
from fedsim.report.fidelity import write_fidelity

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def record(repetition: int, scenario: str, predicted: float, measured: float) -> Fidelity:
    """A comparison row whose time is all transfer, waiting measured but not predicted."""
    return Fidelity(
        repetition=repetition,
        scenario=scenario,
        predicted_s=predicted,
        measured_s=measured,
        predicted_transfer_s=predicted,
        measured_transfer_s=measured - 0.5,
        predicted_compute_s=0.0,
        measured_compute_s=0.0,
        predicted_aggregation_s=0.0,
        measured_aggregation_s=0.0,
        predicted_waiting_s=0.0,
        measured_waiting_s=0.5,
    )


def comparison_result(records: list[Fidelity]) -> RunResult:
    return RunResult(
        kind=COMPARISON,
        summary={"fidelity": summary(records, "spec-sheet")},
        rows=[],
        events=[],
        fidelity=records,
    )


def test_comparison_fidelity_writes_its_rows_plot_and_section(tmp_path: Path):
    # Prepare: errors of the round time 0.5 (cloud) and 0.25 (client).
    records = [record(0, "cloud_based", 3.0, 2.0), record(0, "client_based", 3.0, 4.0)]

    # Execute
    section = write_fidelity(comparison_result(records), tmp_path, tmp_path / "plots")

    # Assert
    with open(tmp_path / "fidelity.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["repetition"], r["scenario"]) for r in rows] == [
        ("0", "cloud_based"),
        ("0", "client_based"),
    ]
    assert "round" not in rows[0]
    assert (tmp_path / "plots" / "fidelity.png").read_bytes()[:8] == PNG_SIGNATURE
    assert section.startswith("## Fidelity")
    assert "| scenario time | 37.5 % | 47.5 % |" in section  # median and p90 of 0.5, 0.25
    assert "| compute | 0.0 % | 0.0 % |" in section  # zero against zero: exact
    assert "| repetition 0, cloud_based | 3.000 | 2.000 | 50.0 % |" in section  # worst first
    assert "spec-sheet" in section and "not the devices that ran here" in section


def test_a_run_without_prediction_writes_no_fidelity(tmp_path: Path):
    # Prepare
    result = comparison_result([])

    # Execute
    section = write_fidelity(result, tmp_path, tmp_path / "plots")

    # Assert
    assert section == ""
    assert not (tmp_path / "fidelity.csv").exists() and not (tmp_path / "plots").exists()
