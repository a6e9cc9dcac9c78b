"""fedsim's Python API (fedsim.run): composes like the CLI, runs, and reads the run back."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hydra.core.global_hydra import GlobalHydra

import fedsim
from fedsim.api import Result, compose_run
from fedsim.config import ConfigError
from fedsim.report.tables import EVENT_COLUMNS

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ["+experiment=fl_digits", "fl.rounds=2"]


HEARD: list[dict] = []  # the rounds the second run's on_round was handed


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Result, Result]:
    """Two runs in this one process: override strings with real training, then a mapping."""
    first = fedsim.run(DIGITS, out_dir=tmp_path_factory.mktemp("a") / "run", progress=False)
    second = fedsim.run(
        {"fl.rounds": 3, "fl.training": "modelled", "seed": 7},
        experiment="fl_digits",
        out_dir=tmp_path_factory.mktemp("b") / "run",
        progress=False,
        on_round=HEARD.append,
    )
    return first, second


def test_two_runs_in_one_process_each_run_their_own_config(two_runs):
    # Execute: the fixture ran both.
    first, second = two_runs

    # Assert: each ran what it was given, and Hydra is left as it was found.
    assert (len(first.rounds), len(second.rounds)) == (2, 3)
    assert first.summary["training"] == "real" and second.summary["training"] == "modelled"
    assert second.summary["seed"] == 7
    assert [row["round"] for row in HEARD] == [0, 1, 2]
    assert first.dir != second.dir
    assert not GlobalHydra.instance().is_initialized()


def test_the_result_reads_its_run_directory(two_runs):
    first, _ = two_runs

    # Assert: the usual files, and the result's tables are theirs.
    for name in ("report.md", "report.html", "summary.json", "runs.csv", "events.csv"):
        assert (first.dir / name).is_file(), name
    assert list((first.dir / "plots").glob("*.png"))
    assert first.summary["experiment"] == "fl_digits"
    assert first.summary["rounds"] == 2
    assert first.report == first.dir / "report.md"


def test_rounds_and_events_are_dataframes_with_the_run_tables_columns(two_runs):
    first, _ = two_runs

    # Assert: one row per round with its accuracy and time split; every event with its span.
    rounds, events = first.rounds, first.events
    for column in ("round", "accuracy", "eval_loss", "total_s", "transfer_s", "compute_s"):
        assert column in rounds.columns, column
    assert rounds["round"].tolist() == [0, 1]
    assert rounds["accuracy"].between(0, 1).all()
    assert list(events.columns) == list(EVENT_COLUMNS)
    assert len(events) == first.summary["events_recorded"]
    assert set(events["kind"]) >= {"train", "model_download"}


@pytest.mark.parametrize(
    "overrides, named",
    [
        (["+experiment=fl_digits", "fl.roundz=3"], "fl.roundz"),
        (["+experiment=fl_digits", "fl.rounds=many"], "'many'"),
        # Added with +, a misspelt key was accepted and nothing read it: the run went on.
        (["+experiment=fl_digits", "+fl.roundz=3"], "fl.roundz: not a setting"),
        (["+experiment=fl_digits", "+reptitions=3"], "did you mean repetitions?"),
        (["+experiment=fl_digits", "+topology.devices.3.hardwar=rpi4"], "devices[3].hardwar"),
        (["+experiment=no_such_experiment"], "fl_digits"),  # the names to choose from
        (["experiment=fl_digits"], "+experiment=fl_digits"),  # the hint for the missing +
        ({"fl.roundz": 3}, "fl.roundz"),
        ({"fl.rounds": "many"}, "fl.rounds"),
        ("fl.rounds=3", "a list of override strings"),
        ([3], "each must be a string"),
    ],
)
def test_a_bad_override_raises_a_config_error_naming_it(overrides, named, tmp_path):
    # Execute / Assert
    with pytest.raises(ConfigError) as caught:
        fedsim.run(overrides, out_dir=tmp_path / "run", progress=False)
    assert named in str(caught.value)
    assert not (tmp_path / "run").exists()  # nothing ran
    assert not GlobalHydra.instance().is_initialized()


def test_a_bad_value_is_refused_before_the_run(tmp_path):
    # Execute / Assert: composes, but build_spec's checks refuse it.
    with pytest.raises(ConfigError, match="repetitions"):
        fedsim.run([*DIGITS, "repetitions=0"], out_dir=tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_a_directory_that_holds_files_is_refused(tmp_path):
    # Prepare: a directory with something in it.
    (tmp_path / "old.txt").write_text("a previous run\n")

    # Execute / Assert
    with pytest.raises(ConfigError, match="out_dir"):
        fedsim.run(DIGITS, out_dir=tmp_path, progress=False)
    assert [p.name for p in tmp_path.iterdir()] == ["old.txt"]


def test_the_default_directory_is_the_clis(tmp_path, monkeypatch):
    # Prepare
    monkeypatch.chdir(tmp_path)

    # Execute
    _, run_dir = compose_run(DIGITS)
    _, moved = compose_run([*DIGITS, "hydra.run.dir=elsewhere/${experiment.name}"])

    # Assert: results/NAME/TIMESTAMP, as conf/config.yaml's hydra.run.dir says; and it follows
    # an override of it.
    assert run_dir.parts[:2] == ("results", "fl_digits") and len(run_dir.parts) == 3
    assert moved == Path("elsewhere/fl_digits")


def test_importing_fedsim_loads_neither_hydra_nor_pandas_nor_torch():
    # Execute: a fresh interpreter, this tree first on its path.
    code = (
        "import sys, fedsim; "
        "print(sorted(m for m in ('hydra', 'pandas', 'torch', 'fedsim.api') if m in sys.modules)); "
        "import fedsim.api; print(fedsim.run is fedsim.api.run)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout.split("\n")

    # Assert
    assert out[:2] == ["[]", "True"]
