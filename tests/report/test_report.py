"""The report layer: tables, plots, report.md, the run directory and the console table."""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fedsim.core.events import Event, EventKind
from fedsim.core.results import (
    CLIENT,
    CLOUD,
    COMPARISON,
    CrossoverPoint,
    RepetitionEvents,
    RunResult,
    ScenarioRun,
)
from fedsim.report.console import console_table
from fedsim.report.markdown import render_report
from fedsim.report.plots import drawn_kinds, plot_crossover, rate_scale
from fedsim.report.tables import EVENT_COLUMNS, crossover_frame, events_frame, table_ii
from fedsim.report.write import write_run

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# The shared checks lie beside the repository: ../shared from its root.
CONTRACT = Path(__file__).resolve().parents[2] / ".." / "shared" / "checks" / "run-contract"
SERVER, CLIENTS = 0, (4, 8)


def make_summary(*, t_ref: float = 7.0, t_new: float = 6.5, repetitions: int = 3) -> dict:
    # numpy scalars on purpose: the engine computes these with numpy.
    return {
        "experiment": "imagenet_yolo",
        "mode": "sim",
        "repetitions": np.int64(repetitions),
        "seed": 0,
        "t_ref_s": {"mean": np.float64(t_ref), "std": np.float32(0.25), "min": 6.7, "max": 7.3},
        "t_new_s": {"mean": t_new, "std": 0.125, "min": 6.3, "max": 6.7},
        "time_saving_rate": (t_ref - t_new) / t_ref,
        "paper": {"t_ref_s": 6.02, "t_new_s": 6.72, "time_saving_rate": -0.116},
        "topology": "keti_testbed",
        "server": SERVER,
        "clients": list(CLIENTS),
        "workload": {
            "model": {
                "name": "yolov4",
                "input_size": 608,
                "num_classes": 80,
                "parameters": 64_363_101,
                "buffers": 72_000,
                "state_values": 64_435_101,
                "state_bytes": 257_740_404,
                "forward_flops": 128_000_000_000,
                "train_flops": 384_000_000_000,
            },
            "dataset": {
                "name": "imagenet",
                "samples": 1_281_167,
                "total_bytes": 147_897_477_120,
                "bytes_per_sample": 110_000.0,
            },
            "samples_per_device": 64,
            "batch_size": 64,
            "epochs": 1,
        },
        "fedsim_version": "0.1.0",
    }


def make_events(repetition: int) -> list[RepetitionEvents]:
    cloud = (
        Event(device=4, kind=EventKind.DATA_UPLOAD, start=0.0, end=2.0, nbytes=7_040_000),
        Event(device=8, kind=EventKind.DATA_UPLOAD, start=0.0, end=2.2, nbytes=7_040_000),
        Event(device=SERVER, kind=EventKind.TRAIN, start=2.2, end=6.9, task="cloud"),
        Event(device=SERVER, kind=EventKind.PUBLISH, start=6.9, end=7.0),
    )
    client = (
        Event(device=4, kind=EventKind.MODEL_DOWNLOAD, start=0.0, end=2.4, nbytes=257_740_404),
        Event(device=8, kind=EventKind.MODEL_DOWNLOAD, start=0.0, end=2.5, nbytes=257_740_404),
        Event(device=4, kind=EventKind.TRAIN, start=2.4, end=3.8, task="round-1"),
        Event(device=8, kind=EventKind.TRAIN, start=2.5, end=4.0, task="round-1"),
        Event(device=4, kind=EventKind.UPDATE_UPLOAD, start=3.8, end=6.2, nbytes=257_740_404),
        Event(device=8, kind=EventKind.UPDATE_UPLOAD, start=4.0, end=6.3, nbytes=257_740_404),
        Event(device=SERVER, kind=EventKind.AGGREGATE, start=6.3, end=6.45),
        Event(device=SERVER, kind=EventKind.PUBLISH, start=6.45, end=6.5),
    )
    return [
        RepetitionEvents(repetition=repetition, scenario=CLOUD, events=cloud),
        RepetitionEvents(repetition=repetition, scenario=CLIENT, events=client),
    ]


def make_crossover() -> list[CrossoverPoint]:
    # Uploading data costs 0.2 s per sample at 1 Mb/s; client-based costs 5 s flat, so it
    # wins at low bandwidth with much data and loses elsewhere.
    return [
        CrossoverPoint(
            bandwidth_mbps=bandwidth,
            samples_per_device=samples,
            t_ref_s=1.0 + 0.2 * samples / bandwidth,
            t_new_s=5.0,
        )
        for bandwidth in (1.0, 10.0, 100.0)
        for samples in (16, 64, 256)
    ]


def make_result(*, repetitions: int = 3, crossover: bool = True, **summary) -> RunResult:
    runs = []
    for rep in range(repetitions):
        jitter = 0.1 * (rep - 1)
        runs.append(
            ScenarioRun(
                repetition=rep,
                scenario=CLOUD,
                total_s=7.0 + jitter,
                transfer_s=2.2,
                compute_s=4.7 + jitter,
                aggregation_s=0.0,
                waiting_s=0.1,
                bytes_moved=14_080_000,
            )
        )
        runs.append(
            ScenarioRun(
                repetition=rep,
                scenario=CLIENT,
                total_s=6.5 + jitter,
                transfer_s=4.8,
                compute_s=1.5 + jitter,
                aggregation_s=0.15,
                waiting_s=0.05,
                bytes_moved=1_030_961_616,
            )
        )
    return RunResult(
        kind=COMPARISON,
        summary=make_summary(repetitions=repetitions, **summary),
        rows=runs,
        events=[e for rep in range(repetitions) for e in make_events(rep)],
        crossover=make_crossover() if crossover else [],
        crossover_link="edge_uplink",
        assumptions=[
            "Devices 4 and 8 train on one GTX 1080 each.",
            "The server trains on one Titan XP.",
        ],
    )


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, RunResult]:
    run_dir = tmp_path_factory.mktemp("run")
    result = make_result()
    write_run(run_dir, result)
    return run_dir, result


def test_write_run_writes_every_file(written):
    # Prepare / Execute: the module fixture wrote a run.
    run_dir, _ = written

    # Assert
    for name in ("summary.json", "runs.csv", "events.csv", "crossover.csv", "report.md"):
        assert (run_dir / name).is_file(), name
    assert sorted(p.name for p in (run_dir / "plots").iterdir()) == [
        "breakdown.png",
        "crossover.png",
        "timeline.png",
        "tref_tnew.png",
    ]


def test_plots_are_four_pngs(written):
    # Prepare
    run_dir, _ = written

    # Execute
    pngs = list((run_dir / "plots").glob("*.png"))

    # Assert
    assert len(pngs) == 4
    assert all(p.read_bytes()[:8] == PNG_SIGNATURE for p in pngs)


def test_report_shows_paper_and_fedsim_numbers(written):
    # Prepare
    run_dir, _ = written

    # Execute
    report = (run_dir / "report.md").read_text(encoding="utf-8")

    # Assert: paper's Table II, fedsim's means, differences, the rate in percent.
    for text in ("6.02", "6.72", "-11.6", "7.00 ± 0.25", "6.50 ± 0.12", "+0.98 s", "-0.22 s"):
        assert text in report, text
    assert "7.1" in report  # fedsim's rate, (7.0 - 6.5) / 7.0 in percent
    assert "+18.7 pp" in report  # 7.1 - (-11.6)
    for name in ("tref_tnew", "breakdown", "timeline", "crossover"):
        assert f"](plots/{name}.png)" in report
    assert "- The server trains on one Titan XP." in report
    assert "64,363,101" in report  # parameters, as measured


def test_report_locates_the_crossover_in_the_grid(written):
    # Prepare
    run_dir, _ = written

    # Execute
    report = (run_dir / "report.md").read_text(encoding="utf-8")

    # Assert: t_ref > 5 s only at 1 Mb/s with 64 and 256 samples, and 10 Mb/s with 256.
    assert "`edge_uplink`" in report
    assert "wins (Δt > 0) at 3 of them" in report
    assert "| 256 | 28.16 | 1–10 |" in report
    assert "| 16 | 1.76 | nowhere |" in report


def test_report_says_so_when_client_based_never_wins():
    # Prepare: every grid point favours the cloud.
    result = make_result()
    result.crossover = [dataclasses.replace(p, t_new_s=p.t_ref_s * 1.5) for p in result.crossover]

    # Execute
    report = render_report(result, {})

    # Assert
    assert "wins (Δt > 0) at 0 of them" in report
    assert "does not win anywhere in this grid" in report


def test_table_ii_differences():
    # Prepare
    summary = make_summary(t_ref=7.0, t_new=6.72)

    # Execute
    table = table_ii(summary)

    # Assert
    assert table.loc["t_ref", "difference"] == pytest.approx(0.98)
    assert table.loc["t_ref", "relative difference"] == pytest.approx(0.98 / 6.02)
    assert table.loc["t_new", "difference"] == pytest.approx(0.0)
    assert table.loc["time-saving rate", "paper"] == pytest.approx(-11.6)
    assert table.loc["time-saving rate", "difference"] == pytest.approx(100 * 0.04 + 11.6)
    assert np.isnan(table.loc["time-saving rate", "relative difference"])


def test_summary_json_round_trips(written):
    # Prepare
    run_dir, result = written

    # Execute
    loaded = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))

    # Assert: equal to the summary with its numpy scalars as plain numbers.
    assert loaded["repetitions"] == 3
    assert loaded["t_ref_s"]["std"] == pytest.approx(0.25)
    assert loaded["paper"] == {"t_ref_s": 6.02, "t_new_s": 6.72, "time_saving_rate": -0.116}
    assert loaded["workload"] == result.summary["workload"]
    assert set(loaded) == set(result.summary)


def test_events_csv_has_one_row_per_event(written):
    # Prepare
    run_dir, result = written
    expected = sum(len(rep.events) for rep in result.events)

    # Execute
    with open(run_dir / "events.csv", newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)

    # Assert
    assert reader.fieldnames == EVENT_COLUMNS
    assert len(rows) == expected
    first = rows[0]
    assert first["kind"] == "data_upload"
    assert float(first["duration_s"]) == pytest.approx(2.0)
    assert int(first["bytes"]) == 7_040_000


def test_events_frame_uses_kind_values():
    # Prepare
    events = make_events(0)

    # Execute
    frame = events_frame(events)

    # Assert
    assert list(frame.columns) == EVENT_COLUMNS
    assert set(frame["kind"]) == {e.kind.value for rep in events for e in rep.events}
    assert frame["duration_s"].tolist() == pytest.approx(frame["end_s"] - frame["start_s"])


def test_empty_crossover_skips_its_plot(tmp_path, caplog):
    # Prepare
    result = make_result(crossover=False)

    # Execute
    with caplog.at_level(logging.WARNING, logger="fedsim.report.plots"):
        write_run(tmp_path, result)

    # Assert
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == [
        "breakdown.png",
        "timeline.png",
        "tref_tnew.png",
    ]
    assert not (tmp_path / "crossover.csv").exists()
    assert "crossover.png not written" in caplog.text
    report = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "No crossover grid was computed" in report
    assert "plots/crossover.png" not in report


def test_crossover_swept_along_one_axis_still_plots(tmp_path):
    # Prepare: bandwidth only, at one data size; a contour needs two of each.
    points = [p for p in make_crossover() if p.samples_per_device == 64]

    # Execute
    path = plot_crossover(
        crossover_frame(points), tmp_path / "crossover.png", link="edge_uplink", current_samples=64
    )

    # Assert
    assert path is not None
    assert path.read_bytes()[:8] == PNG_SIGNATURE


def test_crossover_colour_scale_tells_rates_below_minus_100_apart():
    # Prepare: client-based up to ten times slower (issue 15: the scale clipped at -100 %, so
    # most of such a map was one flat red).
    low, high = -900.0, 60.0

    # Execute
    norm, levels = rate_scale(low, high)

    # Assert
    shades = [float(norm(v)) for v in (-900.0, -300.0, -100.0, -20.0, 0.0, 20.0, 60.0)]
    assert shades == sorted(shades) and len(set(shades)) == len(shades)
    assert shades[0] >= 0.0 and shades[-1] <= 1.0 and shades[4] == pytest.approx(0.5)
    assert levels[0] <= low and levels[-1] >= high and 0.0 in levels


def test_the_timeline_legend_lists_only_the_kinds_that_show():
    # Prepare: a 1 ms aggregation after 6 s of training (issue 15: "aggregate" was in the
    # legend of a timeline on which no aggregation bar could be seen).
    events = events_frame(
        [
            RepetitionEvents(
                repetition=0,
                scenario=CLIENT,
                events=(
                    Event(device=4, kind=EventKind.TRAIN, start=0.0, end=6.0),
                    Event(device=0, kind=EventKind.AGGREGATE, start=6.0, end=6.001),
                    Event(device=4, kind=EventKind.UPDATE_UPLOAD, start=6.0, end=6.5),
                ),
            )
        ]
    )

    # Execute
    kinds = drawn_kinds(events, span=6.5)

    # Assert
    assert kinds == ["train", "update_upload"]
    assert drawn_kinds(events, span=0.1) == ["aggregate", "train", "update_upload"]


def test_console_table_shows_both_scenarios():
    # Prepare
    summary = make_summary(t_ref=7.0, t_new=6.5)

    # Execute
    text = console_table(summary)

    # Assert
    assert "t_ref" in text and "cloud-based" in text and "7.00" in text and "6.02" in text
    assert "t_new" in text and "client-based" in text and "6.50" in text and "6.72" in text
    assert "+0.98 s" in text
    assert "-11.6" in text and "7.1" in text


def test_a_scaled_run_states_the_job_it_ran():
    # Prepare: a real-mode run of the scaled job (issue 15: the report stated the full job, 64
    # samples in batches of 64, and the console compared the scaled times with the paper's).
    result = make_result()
    result.summary["mode"] = "real"
    result.summary["scaled"] = {
        "input_size": [608, 128],
        "samples_per_device": [64, 4],
        "train_flops_per_sample": [384e9, 17e9],
    }

    # Execute
    report = render_report(result, {})
    text = console_table(result.summary)

    # Assert
    what = report.split("## What was run")[1].split("\n## ")[0]
    assert "uploads its 4 local samples" in what and "batch size 4)" in what
    assert "4 samples per client instead of 64" in what and "128x128 inputs instead of 608" in what
    assert "not comparable with the paper's" in text.splitlines()[1]
    assert "4 samples per client instead of 64" in text


def table_ii_section(report: str) -> str:
    """The Table II section of a report.md, up to the next section."""
    return next(part for part in report.split("\n## ") if part.startswith("Table II"))


@pytest.fixture(scope="module")
def written_without_paper(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # An experiment with no reference figures: its summary has no "paper".
    run_dir = tmp_path_factory.mktemp("run_without_paper")
    result = make_result()
    del result.summary["paper"]
    write_run(run_dir, result)
    return run_dir


def test_without_paper_write_run_writes_every_file(written_without_paper):
    # Prepare / Execute: the module fixture wrote a run without reference figures.
    run_dir = written_without_paper

    # Assert
    for name in ("summary.json", "runs.csv", "events.csv", "crossover.csv", "report.md"):
        assert (run_dir / name).is_file(), name
    pngs = sorted((run_dir / "plots").iterdir())
    assert [p.name for p in pngs] == [
        "breakdown.png",
        "crossover.png",
        "timeline.png",
        "tref_tnew.png",
    ]
    assert all(p.read_bytes()[:8] == PNG_SIGNATURE for p in pngs)
    assert "paper" not in json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))


def test_without_paper_report_shows_fedsim_alone(written_without_paper):
    # Prepare
    report = (written_without_paper / "report.md").read_text(encoding="utf-8")

    # Execute
    section = table_ii_section(report)

    # Assert: one fedsim column, no paper figures, differences or note anywhere.
    assert "|  | fedsim (mean ± std) |" in section
    assert "| t_ref, cloud-based [s] | 7.00 ± 0.25 |" in section
    assert "| t_new, client-based [s] | 6.50 ± 0.12 |" in section
    assert "| time-saving rate Δt [%] | 7.1 |" in section
    assert "paper" not in section and "difference" not in section
    for text in ("6.02", "6.72", "-11.6", "Note on the paper", "Paper figures", "beside the"):
        assert text not in report, text
    assert "](plots/tref_tnew.png)" in report


def test_table_ii_without_paper_has_the_fedsim_column_only():
    # Prepare
    summary = make_summary(t_ref=7.0, t_new=6.5)
    del summary["paper"]

    # Execute
    table = table_ii(summary)

    # Assert
    assert list(table.columns) == ["unit", "fedsim"]
    assert table["fedsim"].tolist() == pytest.approx([7.0, 6.5, 100 * 0.5 / 7.0])


def test_console_table_without_paper():
    # Prepare
    summary = make_summary(t_ref=7.0, t_new=6.5)
    del summary["paper"]

    # Execute
    text = console_table(summary)

    # Assert
    assert "7.00" in text and "6.50" in text and "7.1" in text
    assert "fedsim" in text and "paper" not in text and "difference" not in text
    assert len(text.splitlines()) == 5


def test_report_names_the_source_of_the_paper_figures():
    # Prepare
    result = make_result()
    result.summary["paper"]["source"] = "Park and Kum, Table II (average of 50 repetitions)"

    # Execute
    section = table_ii_section(render_report(result, {}))

    # Assert: under the table, before fedsim's range.
    assert (
        "|  |\n\nPaper figures: Park and Kum, Table II (average of 50 repetitions).\n\n"
        "fedsim's range" in section
    )


@pytest.mark.skipif(not CONTRACT.exists(), reason="the shared contract check is not here")
def test_written_run_keeps_the_contract(tmp_path):
    # Prepare
    write_run(tmp_path, make_result(repetitions=3))

    # Execute
    done = subprocess.run(
        [sys.executable, str(CONTRACT), str(tmp_path)], capture_output=True, text=True
    )

    # Assert
    assert done.returncode == 0, done.stdout + done.stderr
    assert "contract kept" in done.stdout
