"""Differential privacy in federated runs: config, accounting in the summary, the report.

``+experiment=fl_digits`` in the simulator on a 20-client edge fleet with an IID split (a few
seconds a run).
"""

from __future__ import annotations

import pytest

from fedsim.config import ConfigError, build_spec, compose, conf_dir
from fedsim.core.results import RunResult
from fedsim.ml.accounting import epsilon
from fedsim.pipeline import run
from fedsim.report.federated_markdown import render_federated_report
from fedsim.runtimes import runtime
from fedsim.scenarios import Hooks

SETUP = (
    "+experiment=fl_digits",
    "topology=edge_fleet",
    "topology.generate.groups=2",
    "topology.generate.devices_per_group=10",
    "partition.kind=iid",
    "fl.rounds=3",
)


def spec_of(*overrides: str):
    return build_spec(compose([*SETUP, *overrides]), conf_dir())


def federated(tmp_path, *overrides: str) -> RunResult:
    return run(spec_of(*overrides), runtime("sim"), tmp_path, Hooks(progress=False))


def test_central_dp_reports_epsilon_per_round_and_in_the_report(tmp_path):
    # Execute
    result = federated(
        tmp_path, "privacy=central", "privacy.noise_multiplier=0.8", "fl.clients_per_round=5"
    )
    # Assert
    privacy = result.summary["privacy"]
    assert privacy["kind"] == "central" and privacy["sample_rate"] == 5 / 20
    assert privacy["noise_std"] == pytest.approx(0.8 * 1.0 / 5)
    assert privacy["releases"] == 3
    by_round = privacy["epsilon_by_round"]
    assert len(by_round) == 3 and by_round[0] < by_round[1] < by_round[2]
    assert privacy["epsilon"] == pytest.approx(
        epsilon(noise_multiplier=0.8, sample_rate=0.25, steps=3, delta=1e-5)
    )
    report = render_federated_report(result, {})
    assert "## Differential privacy" in report and "Central DP-FedAvg" in report
    assert privacy["clients_per_round"] == 5 and "over the 5 clients a round expects" in report
    assert f"epsilon {privacy['epsilon']:.3g} at delta 1e-05" in report


def test_same_seed_same_private_model(tmp_path):
    # Execute
    a = federated(tmp_path / "a", "privacy=central", "seed=4")
    b = federated(tmp_path / "b", "privacy=central", "seed=4")
    c = federated(tmp_path / "c", "privacy=central", "seed=5")
    # Assert
    assert a.summary["final_accuracy"] == b.summary["final_accuracy"]
    assert [r.train_loss for r in a.rows] == [r.train_loss for r in b.rows]
    assert [r.train_loss for r in a.rows] != [r.train_loss for r in c.rows]


def test_local_dp_noise_changes_what_clients_send(tmp_path):
    # Execute: the same run with and without local DP, and with almost no noise
    plain = federated(tmp_path / "plain")
    private = federated(tmp_path / "private", "privacy=local", "privacy.noise_multiplier=2")
    # Assert: each client's noised move makes the global model, and so the next rounds'
    # training losses, differ from the plain run's; epsilon counts each client's releases
    plain_losses = [r.train_loss for r in plain.rows]
    private_losses = [r.train_loss for r in private.rows]
    assert plain_losses[0] == private_losses[0]  # round 1 trains from the same model
    assert plain_losses[1:] != private_losses[1:]
    summary = private.summary["privacy"]
    assert summary["kind"] == "local" and summary["sample_rate"] == 1.0
    assert summary["releases"] == 3 and summary["noise_std"] == pytest.approx(2.0)
    assert "privacy" not in plain.summary


def test_target_epsilon_chooses_the_noise():
    # Execute
    spec = spec_of(
        "privacy=central",
        "privacy.noise_multiplier=null",
        "privacy.target_epsilon=4",
        "fl.clients_per_round=10",
    )
    # Assert
    z = spec.privacy.noise_multiplier
    assert z is not None and z > 0
    spent = epsilon(noise_multiplier=z, sample_rate=0.5, steps=3, delta=1e-5)
    assert 3.9 <= spent <= 4.0


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (("privacy=central", "strategy=krum"), "central DP gives the strategy one noised mean"),
        (("privacy=local", "fl.mode=async"), "synchronous, flat rounds"),
        (("privacy=central", "privacy.target_epsilon=3"), "give exactly one of"),
        (("privacy=local", "privacy.clip_norm=-1"), "privacy.clip_norm: must be finite and > 0"),
        (("privacy=local", "secagg=on"), "do not run together yet"),
    ],
)
def test_bad_privacy_configs_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        spec_of(*overrides)


def test_no_privacy_by_default():
    assert spec_of().privacy.kind is None


def test_local_dp_rounds_take_longer_by_the_clients_noise(tmp_path):
    # Execute: the same rounds timed with and without local DP's work on each client
    plain = federated(tmp_path / "plain", "fl.training=modelled")
    private = federated(tmp_path / "private", "fl.training=modelled", "privacy=local")
    # Assert: every round's compute (on its critical path) grows
    grown = [p.compute_s - q.compute_s for p, q in zip(private.rows, plain.rows, strict=True)]
    assert all(g > 0 for g in grown)
