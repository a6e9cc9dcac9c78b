"""Differential privacy over real agents: the same private model as the simulator's.

Local DP runs in the agents' trainers (the fit config tells them to clip and noise). The noise
is seeded from the run's seed in both runtimes, so the same config and seed give the same global
model and the same epsilon in sim and real mode. (Central DP runs in the coordinator, the same
code in both modes; tests/sim/test_privacy_runs.py checks it.)
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.real.test_real_mode import same_model_in_sim_and_real


def test_local_dp_gives_the_same_model_in_sim_and_real(tmp_path: Path, monkeypatch):
    # Prepare: the same arithmetic on both sides (see test_real_mode)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    # Execute
    summaries = same_model_in_sim_and_real(
        tmp_path, "privacy=local", "privacy.noise_multiplier=0.5", "fl.rounds=2", "seed=3"
    )
    # Assert
    sim, real = summaries["sim"]["privacy"], summaries["real"]["privacy"]
    assert real["kind"] == "local" and real["releases"] == 2
    assert real["epsilon"] == pytest.approx(sim["epsilon"]) and real["epsilon"] > 0
