"""examples/byo: a user's own strategy, model, data set and selection, run as its README says.

The package is on PYTHONPATH of the run and so of its agents (mode=real), and the config comes
from the example's own config directory (``--config-dir``); nothing of fedsim is patched. Each
assertion checks that one of the user's pieces did the work: the strategy's trace of what it
combined, the selection's turns in that trace, the data set's shard sizes in the summary, the
model's parameter count and the state the agents sent back.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fedsim.store.safetensors_io import decode
from fedsim.store.sqlite import SqliteRepository

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "byo"
MODEL = "byo_fl.model.TinyNet"
ROUNDS = 6
# Shards of 60, 120 and 180 images (byo_fl.data.stripes: samples_per_client x (1 + i % 3)),
# on the KETI testbed's trainers 3, 4 and 8.
SHARDS = {"3": 60, "4": 120, "8": 180}


def run_example(run_dir: Path, *overrides: str) -> dict:
    """``PYTHONPATH=examples/byo python -m fedsim --config-dir examples/byo/conf
    +experiment=byo`` and the run's summary."""
    paths = [str(EXAMPLE), str(ROOT), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "fedsim",
            "--config-dir",
            str(EXAMPLE / "conf"),
            "+experiment=byo",
            f"hydra.run.dir={run_dir}",
            *overrides,
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads((run_dir / "summary.json").read_text())


def tiny_net_state() -> dict[str, tuple[int, ...]]:
    """The names and shapes of TinyNet's state at the example's 4 classes."""
    sys.path.insert(0, str(EXAMPLE))
    try:
        from byo_fl.model import TinyNet
    finally:
        sys.path.remove(str(EXAMPLE))
    return {k: tuple(v.shape) for k, v in TinyNet(num_classes=4).state_dict().items()}


def latest_state(run_dir: Path) -> dict[str, tuple[int, ...]]:
    repo = SqliteRepository(run_dir / "repository")
    try:
        latest = repo.latest(MODEL)
        with repo.open_blob(MODEL, latest.version) as f:
            return {k: v.shape for k, v in decode(f.read()).items()}
    finally:
        repo.close()


@pytest.mark.parametrize("mode", ["sim", "real"])
def test_the_users_strategy_model_data_and_selection_run_the_experiment(tmp_path, mode):
    # Prepare: where the strategy traces each aggregation.
    record = tmp_path / "record.jsonl"

    # Execute
    summary = run_example(tmp_path / "run", f"mode={mode}", f"strategy.record={record}")

    # Assert: every round aggregated, well above the 25 % of guessing among 4 classes.
    assert summary["mode"] == mode and summary["rounds_aggregated"] == ROUNDS
    assert summary["final_accuracy"] > 0.6
    # The strategy and the selection are the user's, by import path, with their parameters.
    assert summary["strategy"]["name"] == "byo_fl.strategy.FedAvgM"
    assert summary["strategy"]["momentum"] == 0.5
    assert summary["selection"] == "byo_fl.selection.RoundRobin"
    # The model is TinyNet, measured on its module: 80 + 33 x 4 parameters.
    state = tiny_net_state()
    model = summary["workload"]["model"]
    assert model["name"] == MODEL
    assert model["parameters"] == sum(torch.Size(s).numel() for s in state.values()) == 212
    # The shards are the data set factory's.
    assert summary["workload"]["samples_per_client"] == SHARDS
    assert summary["partition"]["kind"] == "byo_fl.data.stripes"
    # FedAvgM combined each round's two updates, clients taking turns (RoundRobin, k = 2):
    # (3, 4), (3, 8), (4, 8), ... hold 60 + 120, 60 + 180, 120 + 180 examples. In real mode the
    # last trace is the simulator's prediction of the run, which builds the strategy anew.
    lines = [json.loads(line) for line in record.read_text().splitlines()]
    assert [line["updates"] for line in lines] == [2] * ROUNDS
    assert [line["examples"] for line in lines] == [180, 240, 300] * (ROUNDS // 3)
    # The global model kept is TinyNet's state (in real mode: what the agents, which built
    # TinyNet from its import path, sent back).
    assert latest_state(tmp_path / "run") == state
