"""The federated run's directory: summary, per-round table, events, plots, report, console."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import pytest

from fedsim.core.events import Event, EventKind
from fedsim.core.results import FEDERATED, RepetitionEvents, RoundRow, RunResult
from fedsim.report.console import console_federated
from fedsim.report.federated import ROUND_COLUMNS, rounds_frame, server_of
from fedsim.report.federated_markdown import render_federated_report
from fedsim.report.federated_plots import plot_federated_timeline
from fedsim.report.tables import EVENT_COLUMNS, events_frame
from fedsim.report.write import write_run

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SERVER, CLIENTS = 0, (3, 4, 8)
ROUNDS = 5
FAILED_ROUND = 3
ROUND_S = 10.0
PLOTS = ["accuracy_time.png", "label_distribution.png", "round_breakdown.png", "timeline.png"]


def make_summary() -> dict:
    return {
        "experiment": "fl_digits",
        "kind": "federated",
        "mode": "sim",
        "seed": 0,
        "strategy": {"name": "fedprox", "proximal_mu": 0.01, "clip_norm": None},
        "rounds": ROUNDS,
        "selection": "all",
        "fl_mode": "sync",
        "training": "real",
        "clients": list(CLIENTS),
        "topology": "keti_testbed",
        "final_accuracy": 0.925,
        "best_accuracy": 0.925,
        "target_accuracy": 0.9,
        "time_to_target_s": 50.0,
        "round_to_target": 5,
        "simulated_time_s": 50.0,
        "rounds_aggregated": ROUNDS - 1,
        "rounds_failed": 1,
        "updates_lost": 4,
        "updates_rejected": 1,
        "workload": {
            "model": {
                "name": "digits_cnn",
                "parameters": 12_345,
                "state_values": 12_345,
                "state_bytes": 49_380,
                "forward_flops": 300_000,
                "train_flops": 900_000,
            },
            "dataset": {"name": "digits", "samples": 1797, "total_bytes": 115_008},
            "batch_size": 16,
            "local_epochs": 1,
        },
        "partition": {"kind": "dirichlet", "alpha": 0.5},
        "faults": {"dropout": 0.3, "outages": 0, "link_changes": 0},
        "fedsim_version": "0.1.0",
    }


def make_round(number: int) -> RoundRow:
    failed = number == FAILED_ROUND
    # Rounds 2 and 3 are not evaluated; the failed one has no loss either.
    accuracy = None if number in (2, FAILED_ROUND) else 0.5 + 0.085 * number
    return RoundRow(
        round=number,
        version=None if failed else number,
        started_s=(number - 1) * ROUND_S,
        finished_s=number * ROUND_S,
        total_s=ROUND_S,
        transfer_s=4.0,
        compute_s=5.0,
        aggregation_s=0.0 if failed else 0.5,
        waiting_s=1.0 if failed else 0.5,
        bytes_moved=6 * 49_380,
        selected=3,
        completed=0 if failed else 3,
        failed=3 if failed else 0,
        rejected=1 if number == 4 else 0,
        aggregated=not failed,
        train_loss=None if failed else 2.0 / number,
        accuracy=accuracy,
        eval_loss=None if accuracy is None else 1.0 - accuracy,
    )


def make_events() -> tuple[Event, ...]:
    events = []
    for number in range(1, ROUNDS + 1):
        t = (number - 1) * ROUND_S
        for i, device in enumerate(CLIENTS):
            events += [
                Event(
                    device=device,
                    kind=EventKind.MODEL_DOWNLOAD,
                    start=t,
                    end=t + 2.0,
                    nbytes=49_380,
                ),
                Event(device=device, kind=EventKind.TRAIN, start=t + 2.0, end=t + 6.0 + i),
                Event(
                    device=device,
                    kind=EventKind.UPDATE_UPLOAD,
                    start=t + 6.0 + i,
                    end=t + 8.0 + i,
                    nbytes=49_380,
                ),
            ]
        if number != FAILED_ROUND:
            events += [
                Event(device=SERVER, kind=EventKind.AGGREGATE, start=t + 9.0, end=t + 9.5),
                Event(device=SERVER, kind=EventKind.PUBLISH, start=t + 9.5, end=t + 9.6),
                Event(device=SERVER, kind=EventKind.EVALUATE, start=t + 9.6, end=t + 10.0),
            ]
    return tuple(events)


def make_result() -> RunResult:
    failures = [(FAILED_ROUND, d, "no result before the deadline") for d in CLIENTS]
    failures.append((4, 8, "update norm 1e9 above max_update_norm"))
    return RunResult(
        kind=FEDERATED,
        summary=make_summary(),
        rows=[make_round(n) for n in range(1, ROUNDS + 1)],
        events=[RepetitionEvents(repetition=0, scenario=FEDERATED, events=make_events())],
        label_counts={3: [50, 0, 3, 40, 7, 0, 0, 12, 30, 1], 4: [0] * 9 + [90], 8: [10] * 10},
        failures=failures,
        assumptions=["Client 3 (jetson): 1 TFLOP/s effective."],
    )


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, RunResult]:
    run_dir = tmp_path_factory.mktemp("federated_run")
    result = make_result()
    write_run(run_dir, result)
    return run_dir, result


def test_write_federated_run_writes_every_file(written):
    # Prepare / Execute: the module fixture wrote a run.
    run_dir, _ = written

    # Assert
    for name in ("summary.json", "runs.csv", "events.csv", "report.md"):
        assert (run_dir / name).is_file(), name
    assert sorted(p.name for p in (run_dir / "plots").iterdir()) == PLOTS


def test_a_run_written_without_plots_has_the_same_tables_and_no_plots(written, tmp_path):
    # Prepare
    run_dir, result = written

    # Execute
    write_run(tmp_path, result, plots=False)

    # Assert: every table as with plots; no plots/ directory; the report says why.
    for name in ("summary.json", "runs.csv", "events.csv"):
        assert (tmp_path / name).read_bytes() == (run_dir / name).read_bytes(), name
    assert not (tmp_path / "plots").exists()
    assert "No plots were written (`report.plots=false`)." in (tmp_path / "report.md").read_text()


def test_plots_are_four_pngs(written):
    # Prepare
    run_dir, _ = written

    # Execute
    pngs = list((run_dir / "plots").glob("*.png"))

    # Assert
    assert len(pngs) == 4
    assert all(p.read_bytes()[:8] == PNG_SIGNATURE for p in pngs)


def test_runs_csv_has_a_row_per_round(written):
    # Prepare
    run_dir, result = written

    # Execute
    with open(run_dir / "runs.csv", newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)

    # Assert: the comparison runs' first two columns, then every RoundRow field.
    assert reader.fieldnames == ROUND_COLUMNS
    assert reader.fieldnames[:2] == ["repetition", "scenario"]
    assert set(reader.fieldnames) >= {f.name for f in dataclasses.fields(RoundRow)}
    assert len(rows) == len(result.rows)
    assert {r["repetition"] for r in rows} == {"0"} and {r["scenario"] for r in rows} == {
        "federated"
    }
    failed = rows[FAILED_ROUND - 1]
    assert failed["aggregated"] == "False"
    assert failed["version"] == "" and failed["accuracy"] == "" and failed["train_loss"] == ""
    assert rows[0]["version"] == "1"  # an integer, not 1.0
    assert float(rows[-1]["accuracy"]) == pytest.approx(0.925)


def test_events_csv_has_the_comparison_columns(written):
    # Prepare
    run_dir, result = written

    # Execute
    with open(run_dir / "events.csv", newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)

    # Assert
    assert reader.fieldnames == EVENT_COLUMNS
    assert len(rows) == len(result.all_events())
    assert {r["scenario"] for r in rows} == {"federated"}
    assert {int(r["device"]) for r in rows} == {SERVER, *CLIENTS}
    assert "evaluate" in {r["kind"] for r in rows}


def test_summary_json_round_trips(written):
    # Prepare
    run_dir, result = written

    # Execute
    loaded = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))

    # Assert
    assert loaded == result.summary


def test_report_shows_results_and_strategy(written):
    # Prepare
    run_dir, _ = written

    # Execute
    report = (run_dir / "report.md").read_text(encoding="utf-8")

    # Assert
    assert report.startswith("# fedsim report: fl_digits")
    assert "**fedprox (proximal_mu=0.01, clip_norm=null)**" in report
    assert "| final accuracy | 92.5 % |" in report
    assert "| time to target (simulated) | 50.0 s (90.0 % in round 5) |" in report
    assert "| rounds aggregated / failed | 4 / 1 |" in report
    assert "Dirichlet draw, α = 0.5" in report
    assert "Faults injected: dropout=0.3." in report
    for name in ("accuracy_time", "round_breakdown", "timeline", "label_distribution"):
        assert f"](plots/{name}.png)" in report
    assert "- Client 3 (jetson): 1 TFLOP/s effective." in report


def test_report_has_a_compact_round_table(written):
    # Prepare
    run_dir, _ = written

    # Execute
    report = (run_dir / "report.md").read_text(encoding="utf-8")

    # Assert: a failed round is marked, rounds without evaluation show a dash.
    assert "| round | ends at [s] | completed / selected | train loss | test accuracy |" in report
    assert "| 1 | 10.0 | 3 / 3 | 2.000 | 58.5 % |" in report
    assert "| 2 | 20.0 | 3 / 3 | 1.000 | — |" in report
    assert "| 3 ✗ | 30.0 | 0 / 3 | — | — |" in report


def test_report_counts_failures_by_reason(written):
    # Prepare
    run_dir, _ = written

    # Execute
    report = (run_dir / "report.md").read_text(encoding="utf-8")

    # Assert
    assert "4 updates were lost or rejected, in 2 of 5 rounds." in report
    assert "| no result before the deadline | 3 | 3, 4, 8 | 3 |" in report
    assert "| update norm 1e9 above max_update_norm | 1 | 8 | 4 |" in report
    assert "Rounds not aggregated (1): 3." in report


def test_report_without_failures_says_so():
    # Prepare
    result = make_result()
    result.failures = []
    result.rows = [dataclasses.replace(r, aggregated=True) for r in result.rows]

    # Execute
    report = render_federated_report(result, {})

    # Assert
    assert "No update was lost or rejected, and every round was aggregated." in report
    assert "No plots were written (`report.plots=false`)." in report


def test_a_fleet_of_clients_is_named_by_id_ranges_not_one_by_one():
    # Prepare: fl_scale's 100,000 clients wrote every id into report.md (690 kB).
    result = make_result()
    result.summary = {**result.summary, "clients": [*range(1, 100_001), 100_005]}

    # Execute
    report = render_federated_report(result, {})

    # Assert
    assert "(clients: devices 1–100000, 100005)" in report
    assert len(report) < 20_000
    few = render_federated_report(make_result(), {})
    assert "(clients: devices 3, 4, 8)" in few


def test_long_runs_show_every_kth_round_and_the_failed_ones():
    # Prepare: 100 rounds, one failed in the middle.
    result = make_result()
    result.rows = [
        dataclasses.replace(make_round(1), round=n, aggregated=n != 57) for n in range(1, 101)
    ]

    # Execute
    report = render_federated_report(result, {})

    # Assert
    table = [line for line in report.splitlines() if line.startswith("| ") and "/ 3 |" in line]
    assert len(table) < 60
    assert any(line.startswith("| 57 ✗ |") for line in table)
    assert table[-1].startswith("| 100 |")
    assert "One evaluated round in 3 is shown, with the last and every one not aggregated" in report


def test_rounds_frame_without_rounds_has_the_columns():
    # Prepare / Execute
    frame = rounds_frame([])

    # Assert
    assert list(frame.columns) == ROUND_COLUMNS
    assert frame.empty


def test_server_is_inferred_from_the_events():
    # Prepare
    summary = make_summary()

    # Execute
    inferred = server_of(summary, make_events())
    given = server_of({**summary, "server": 7}, make_events())

    # Assert
    assert inferred == SERVER
    assert given == 7


def test_long_timeline_draws_the_first_rounds_only(tmp_path):
    # Prepare: 5 rounds of 12 or 9 events; room for about two rounds.
    result = make_result()
    events = events_frame(result.events)
    rounds = rounds_frame(result.rows)

    # Execute
    path = plot_federated_timeline(
        events, rounds, tmp_path / "timeline.png", server=SERVER, max_events=25
    )

    # Assert
    assert path.read_bytes()[:8] == PNG_SIGNATURE


def test_modelled_run_without_evaluations_or_labels_still_plots(tmp_path):
    # Prepare: time only, as fl.training=modelled produces.
    result = make_result()
    result.rows = [
        dataclasses.replace(r, accuracy=None, eval_loss=None, train_loss=None) for r in result.rows
    ]
    result.label_counts = {}
    result.summary.update(final_accuracy=None, best_accuracy=None, time_to_target_s=None)
    result.summary["round_to_target"] = None

    # Execute
    write_run(tmp_path, result)

    # Assert
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == PLOTS
    report = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "| final accuracy | — |" in report
    assert "not reached (90.0 % in 5 rounds)" in report


def test_console_federated_shows_the_outcome():
    # Prepare
    summary = make_summary()

    # Execute
    text = console_federated(summary)

    # Assert
    lines = text.splitlines()
    assert lines[0] == "fl_digits: 5 rounds of fedprox on 3 clients (sync, sim mode)"
    assert "final accuracy  92.5 %  (best 92.5 %)" in text
    assert "time to target  50.0 s (90.0 % in round 5)" in text
    assert "simulated time  50.0 s" in text
    one = console_federated({**summary, "rounds": 1}).splitlines()[0]
    assert one == "fl_digits: 1 round of fedprox on 3 clients (sync, sim mode)"
    assert len(lines) == 5


def test_console_federated_counts_rejected_updates_beside_lost_ones():
    # Prepare: fl.max_update_norm refused all six updates; the console said
    # "0 aggregated, 2 failed; 0 updates lost" and nothing of why.
    summary = {**make_summary(), "rounds": 2, "rounds_aggregated": 0, "rounds_failed": 2}
    summary.update(updates_lost=0, updates_rejected=6)

    # Execute
    text = console_federated(summary)

    # Assert
    assert "rounds          0 aggregated, 2 failed; 0 updates lost, 6 rejected" in text


def test_console_federated_without_target_or_accuracy():
    # Prepare
    summary = {**make_summary(), "target_accuracy": None, "final_accuracy": None}
    summary["simulated_time_s"] = 7260.0

    # Execute
    text = console_federated(summary)

    # Assert
    assert "final accuracy  —" in text
    assert "time to target  —" in text
    assert "7,260.0 s (2.0 h)" in text


def test_a_measured_run_calls_its_time_wall_clock(tmp_path):
    # Prepare: a real-mode summary, whose duration is wall-clock time (issue 15: it was called
    # "simulated time").
    result = make_result()
    summary = {**result.summary, "mode": "real", "wall_time_s": 50.0}
    del summary["simulated_time_s"]
    result.summary = summary

    # Execute
    text = console_federated(summary)
    write_run(tmp_path, result)

    # Assert
    assert "wall-clock time  50.0 s" in text and "simulated" not in text
    report = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "| wall-clock time | 50.0 s |" in report
    assert "| time to target (wall-clock) |" in report
    assert "simulated time" not in report


def test_long_runs_sample_the_evaluated_rounds():
    # Prepare: 200 rounds, evaluated every 5th, as with fl.eval_every=5.
    result = make_result()
    result.rows = [
        dataclasses.replace(make_round(1), round=n, accuracy=0.5 if n % 5 == 0 else None)
        for n in range(1, 201)
    ]

    # Execute
    report = render_federated_report(result, {})

    # Assert: every row shown has an accuracy; the last round is there.
    table = [line for line in report.splitlines() if line.startswith("| ") and "/ 3 |" in line]
    assert len(table) <= 41
    assert all(line.endswith("| 50.0 % |") for line in table)
    assert table[-1].startswith("| 200 |")
    assert "The 40 evaluated rounds are shown, with the last; `runs.csv` has all 200" in report
