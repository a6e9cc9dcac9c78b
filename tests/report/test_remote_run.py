"""``mode.server_url``: a job on a running server, followed and written here (fedsim/remote.py).

The server is stood in for by the two calls the client makes of it; tests/real/test_cluster.py
runs the same against a real server.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import pytest
from test_federated_report import make_result

from fedsim.config import build_spec, compose, conf_dir
from fedsim.remote import ServerCallError, run_remote
from fedsim.report.console import console
from fedsim.report.tables import events_frame

SERVER = "http://192.0.2.1:8080"


@pytest.fixture
def finished_job(monkeypatch: pytest.MonkeyPatch) -> dict:
    """A server whose job has finished its rounds, and whose event log can be fetched."""
    done = make_result()
    job = {
        "id": "j1",
        "state": "succeeded",
        "round": len(done.rows),
        "error": None,
        "results": "/srv/results/j1",
        "rounds": [dataclasses.asdict(r) for r in done.rows],
    }
    fetched: list[str] = []

    def download(url: str, token: str, dest: Path) -> None:
        fetched.append(url)
        events_frame(done.events).to_csv(dest, index=False)

    monkeypatch.setattr("fedsim.remote._call", lambda *args, **kwargs: job)
    monkeypatch.setattr("fedsim.remote.server_download", download)
    monkeypatch.setenv("FEDSIM_ADMIN_TOKEN", "secret")
    return {"job": job, "fetched": fetched, "events": len(done.all_events())}


def remote_spec():
    overrides = ["+experiment=fl_digits", "mode=real", f"mode.server_url={SERVER}", "fl.rounds=5"]
    return build_spec(compose(overrides), conf_dir())


def test_a_remote_run_writes_the_jobs_events_and_plots_here(finished_job, tmp_path: Path):
    # Prepare
    spec = remote_spec()

    # Execute
    result = run_remote(spec, tmp_path, poll_s=0, progress=False)

    # Assert: issue 15 found events.csv and the plots missing.
    assert finished_job["fetched"] == [f"{SERVER}/api/v1/jobs/j1/events"]
    events = (tmp_path / "events.csv").read_text().splitlines()
    assert len(events) == 1 + finished_job["events"]
    plots = tmp_path / "plots"
    assert (plots / "timeline.png").stat().st_size > 10_000  # a chart, not an empty notice
    assert (plots / "accuracy_time.png").exists()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["job"] == "j1" and summary["wall_time_s"] == pytest.approx(50.0)
    assert "simulated_time_s" not in summary
    assert result.summary["state"] == "succeeded"


def test_a_remote_runs_label_plot_says_why_it_has_no_counts(
    finished_job, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    # Prepare
    caplog.set_level(logging.WARNING, logger="fedsim.report")

    # Execute
    result = run_remote(remote_spec(), tmp_path, poll_s=0, progress=False)

    # Assert: issue 15's run trained on data, yet the notice blamed "training without data".
    notices = [m for m in caplog.messages if m.startswith("label_distribution.png")]
    assert notices == [
        "label_distribution.png: no label counts recorded "
        "(the server's devices train on data it does not see)"
    ]
    assert result.label_counts == {} and "training without data" not in caplog.text
    assert (tmp_path / "plots" / "label_distribution.png").exists()


def test_a_remote_run_prints_its_outcome_formatted(finished_job, tmp_path: Path):
    # Execute
    text = console(run_remote(remote_spec(), tmp_path, poll_s=0, progress=False))

    # Assert: issue 15 saw "final accuracy 0.9693593314763231".
    assert "92.5 %  (best 92.5 %)" in text and "0.925" not in text
    assert "wall-clock time  50.0 s" in text
    assert "4 aggregated, 1 failed; 3 updates lost" in text


def test_a_remote_run_says_when_it_reached_the_target_accuracy(finished_job, tmp_path: Path):
    # Prepare: fl_digits aims at 90 %; the job's round 5, ending at 50 s, is the first there.
    spec = remote_spec()
    assert spec.fl.target_accuracy == 0.9

    # Execute
    result = run_remote(spec, tmp_path, poll_s=0, progress=False)

    # Assert: a job on a server that reached 91.6 % printed "time to target —", as if the
    # run had no target, and summary.json had none of the three keys a run here writes.
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["target_accuracy"] == 0.9
    assert summary["round_to_target"] == 5
    assert summary["time_to_target_s"] == pytest.approx(50.0)
    assert "time to target   50.0 s (90.0 % in round 5)" in console(result)


def test_a_remote_run_without_the_jobs_events_still_writes_its_rounds(
    finished_job, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    # Prepare: a server that does not serve the job's events.
    def refuse(url: str, token: str, dest: Path) -> None:
        dest.write_text("partial")
        raise ServerCallError(f"GET {url}: 404 Not Found")

    monkeypatch.setattr("fedsim.remote.server_download", refuse)

    # Execute
    run_remote(remote_spec(), tmp_path, poll_s=0, progress=False)

    # Assert: no half-fetched file is taken for the log.
    assert (tmp_path / "events.csv").read_text().startswith("repetition,scenario,device")
    assert len((tmp_path / "runs.csv").read_text().splitlines()) == 1 + 5
