"""Experiment tracking: a run logged to a local MLflow store and a TensorBoard event file, read
back with their own readers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import fedsim
from fedsim import tracking
from fedsim.api import Result
from fedsim.config import ConfigError

ROOT = Path(__file__).resolve().parent.parent
DIGITS = ["+experiment=fl_digits", "fl.rounds=3"]


@pytest.fixture(scope="module")
def tracked(tmp_path_factory: pytest.TempPathFactory) -> tuple[Result, Path, Path]:
    """One run logged to both stores: (its result, the MLflow store, TensorBoard's root)."""
    base = tmp_path_factory.mktemp("tracked")
    store, board = base / "mlruns", base / "tb"
    result = fedsim.run(
        [*DIGITS, f"tracking.mlflow.uri={store}", f"tracking.tensorboard.dir={board}"],
        out_dir=base / "run",
        progress=False,
    )
    return result, store, board


@pytest.fixture
def client(tracked, monkeypatch: pytest.MonkeyPatch) -> MlflowClient:
    # MLflow 3 opens its file store only when allowed to (fedsim allows it while it logs).
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    return MlflowClient(tracking_uri=tracked[1].as_uri())


def only_run(client: MlflowClient, experiment: str):
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no MLflow experiment {experiment!r}"
    runs = client.search_runs([found.experiment_id])
    assert len(runs) == 1
    return runs[0]


def test_mlflow_holds_the_config_as_params(tracked, client):
    result, _, _ = tracked

    # Execute
    run = only_run(client, "fl_digits")

    # Assert: the config, flattened, spelled as overrides would; the run directory as a tag.
    params = run.data.params
    assert params["fl.rounds"] == "3"
    assert params["experiment.name"] == "fl_digits"
    assert params["strategy.name"] == "fedavg"
    assert params["tracking.mlflow.uri"] == str(tracked[1])
    assert run.info.run_name == result.dir.name
    assert run.data.tags["fedsim.run_dir"] == str(result.dir)


def test_mlflow_holds_each_rounds_metrics_and_the_runs_times(tracked, client):
    result, _, _ = tracked
    run = only_run(client, "fl_digits")

    # Execute
    accuracy = client.get_metric_history(run.info.run_id, "round/accuracy")
    round_time = client.get_metric_history(run.info.run_id, "round/time_s")

    # Assert: one point per round, at the round's step, with runs.csv's value.
    rounds = result.rounds
    assert [m.step for m in accuracy] == [0, 1, 2]
    assert [m.value for m in accuracy] == pytest.approx(rounds["accuracy"].tolist())
    assert [m.value for m in round_time] == pytest.approx(rounds["total_s"].tolist())
    figures = run.data.metrics
    assert figures["run/simulated_time_s"] == pytest.approx(result.summary["simulated_time_s"])
    assert figures["run/final_accuracy"] == pytest.approx(result.summary["final_accuracy"])
    assert figures["run/process_time_s"] > 0
    assert "run/seed" not in figures  # an identifier is a param, not a metric


def test_mlflow_holds_the_report_plots_and_config_as_artifacts(tracked, client, tmp_path):
    result, _, _ = tracked
    run = only_run(client, "fl_digits")

    # Execute
    top = {a.path for a in client.list_artifacts(run.info.run_id)}
    plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    config = client.download_artifacts(run.info.run_id, "config.json", str(tmp_path))

    # Assert
    assert top >= {"report.md", "report.html", "summary.json", "runs.csv", "config.json"}
    assert plots == {f"plots/{p.name}" for p in (result.dir / "plots").glob("*.png")}
    assert json.loads(Path(config).read_text())["fl"]["rounds"] == 3


def test_the_file_store_setting_is_left_as_it_was(tracked):
    # Assert: fedsim allowed MLflow's file store only while it logged.
    assert "MLFLOW_ALLOW_FILE_STORE" not in os.environ


def test_tensorboard_holds_scalars_per_round_the_plots_and_the_texts(tracked):
    result, _, board = tracked

    # Execute
    events = EventAccumulator(str(board / "fl_digits" / result.dir.name), size_guidance={})
    events.Reload()
    tags = events.Tags()

    # Assert: round metrics at each round's step, the run's figures, plots and texts.
    accuracy = events.Scalars("round/accuracy")
    assert [e.step for e in accuracy] == [0, 1, 2]
    assert [e.value for e in accuracy] == pytest.approx(result.rounds["accuracy"].tolist())
    assert {"round/time_s", "round/clock_s", "run/simulated_time_s", "run/process_time_s"} <= set(
        tags["scalars"]
    )
    assert set(tags["images"]) == {f"plots/{p.stem}" for p in (result.dir / "plots").glob("*.png")}
    assert {"config/text_summary", "report/text_summary"} <= set(tags["tensors"])


def test_the_cli_logs_the_same_way(tmp_path):
    # Execute: python -m fedsim, logging to a store of its own.
    store = tmp_path / "mlruns"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "fedsim",
            "+experiment=fl_digits",
            "fl.rounds=2",
            "fl.training=modelled",
            f"tracking.mlflow.uri={store}",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )

    # Assert
    assert proc.returncode == 0, proc.stderr[-3000:]
    with pytest.MonkeyPatch.context() as m:
        m.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
        client = MlflowClient(tracking_uri=store.as_uri())
        run = only_run(client, "fl_digits")
        history = client.get_metric_history(run.info.run_id, "round/time_s")
    assert [h.step for h in history] == [0, 1]
    assert run.data.params["fl.training"] == "modelled"


def test_a_missing_package_is_one_error_naming_the_extra(monkeypatch, tmp_path):
    # Prepare: this interpreter as one without MLflow.
    real = tracking.find_spec
    monkeypatch.setattr(
        tracking, "find_spec", lambda name: None if name == "mlflow" else real(name)
    )

    # Execute / Assert: refused before the run writes anything.
    with pytest.raises(ConfigError) as caught:
        fedsim.run(
            [*DIGITS, f"tracking.mlflow.uri={tmp_path / 'mlruns'}"],
            out_dir=tmp_path / "run",
            progress=False,
        )
    message = str(caught.value)
    assert message.startswith("tracking.mlflow.uri: ")
    assert "fedsim-testbed[tracking]" in message
    assert not list((tmp_path / "run").iterdir())


def test_a_store_mlflow_cannot_open_is_refused_before_the_run(tmp_path):
    # Execute / Assert: a scheme MLflow has no store for.
    with pytest.raises(ConfigError, match=r"^tracking\.mlflow\.uri: MLflow cannot open nosuch:"):
        fedsim.run([*DIGITS, "tracking.mlflow.uri=nosuch://x"], out_dir=tmp_path, progress=False)
    assert not list(tmp_path.iterdir())


def test_tracking_is_off_by_default():
    # Execute / Assert
    assert tracking.trackers({}) == []
    assert tracking.trackers({"tracking": {"mlflow": {"uri": None}}}) == []


def test_a_directory_becomes_a_file_store_and_a_uri_stays(tmp_path, monkeypatch):
    # Prepare
    monkeypatch.chdir(tmp_path)

    # Execute / Assert
    assert tracking.mlflow_uri("mlruns") == (tmp_path / "mlruns").as_uri()
    assert tracking.mlflow_uri("sqlite:///db/mlflow.db") == "sqlite:///db/mlflow.db"
    assert tracking.mlflow_uri("file:///srv/mlruns") == "file:///srv/mlruns"


def test_a_comparison_is_logged_per_scenario_and_repetition():
    # Prepare: runs.csv of a comparison, two repetitions of two scenarios.
    rows = pd.DataFrame(
        {
            "repetition": [0, 0, 1, 1],
            "scenario": ["cloud_based", "client_based"] * 2,
            "total_s": [10.0, 4.0, 11.0, 5.0],
            "transfer_s": [8.0, 1.0, 9.0, 1.5],
            "compute_s": [2.0, 3.0, 2.0, 3.5],
            "aggregation_s": [0.0] * 4,
            "waiting_s": [0.0] * 4,
        }
    )

    # Execute
    points = tracking.series(rows)

    # Assert
    cloud = [(p.step, p.value) for p in points if p.tag == "cloud_based/total_s"]
    assert cloud == [(0, 10.0), (1, 11.0)]
    assert {p.tag.split("/")[0] for p in points} == {"cloud_based", "client_based"}


def test_a_job_on_a_server_is_not_tracked_there(monkeypatch, tmp_path):
    # Prepare: a job whose poster asked for tracking; the pipeline's run recorded, not run.
    from fedsim import pipeline

    job = pipeline.Jobs().prepare(
        "federated",
        {"experiment": {"name": "fl_digits"}, "tracking": {"mlflow": {"uri": str(tmp_path)}}},
    )
    calls: list[dict] = []
    monkeypatch.setattr(pipeline, "runtime", lambda name, **kw: name)
    monkeypatch.setattr(pipeline, "run_and_write", lambda *a, **kw: calls.append(kw))

    # Execute
    job.run(tmp_path / "run", stores=None, channel="c", on_round=lambda row: None)

    # Assert: the paths name the poster's host, which the server does not write to.
    assert job.spec.config["tracking"]["mlflow"]["uri"] == str(tmp_path)
    assert calls == [{"track": False}]
