"""Byzantine clients in a federated run: 4 of 20 clients attack, and robust rules hold.

``+experiment=fl_digits`` in the simulator on 20 clients with an IID split, 5 local epochs and
5 rounds (a few seconds a run). The clean FedAvg accuracy is computed once for the module; each
attack then runs against the coordinate-wise median and the trimmed mean, which must stay
within 5 points of it, and against FedAvg where the attack is one FedAvg cannot absorb.
``benchmarks/bench_byzantine.py`` runs the whole table, Krum and Multi-Krum included.
"""

from __future__ import annotations

import pytest

from fedsim.config import ConfigError, build_spec, compose, conf_dir
from fedsim.core.attacks import ATTACKS
from fedsim.core.results import RunResult
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
    "fl.local_epochs=5",
    "fl.rounds=5",
    "fl.attack.baselines=false",  # each test runs what it compares; the last one checks them
)
POINTS = 0.05


def federated(tmp_path, *overrides: str) -> RunResult:
    spec = build_spec(compose([*SETUP, *overrides]), conf_dir())
    return run(spec, runtime("sim"), tmp_path, Hooks(progress=False))


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> float:
    """The final accuracy of FedAvg without attackers."""
    result = federated(tmp_path_factory.mktemp("clean"), "strategy=fedavg")
    assert "attack" not in result.summary
    return result.summary["final_accuracy"]


@pytest.mark.parametrize("attack", ATTACKS)
@pytest.mark.parametrize("strategy", ["median", "trimmed_mean"])
def test_robust_rules_stay_within_5_points_of_the_clean_run(tmp_path, clean, attack, strategy):
    # Execute
    result = federated(tmp_path, f"strategy={strategy}", f"fl.attack.kind={attack}")
    # Assert
    record = result.summary["attack"]
    assert record["kind"] == attack and len(record["attackers"]) == 4
    assert record["updates_sent"] == 4 * 5
    assert result.summary["final_accuracy"] >= clean - POINTS, (attack, strategy, clean)
    if attack == "count_inflation":
        # Every inflated claim is refused before any rule sees it.
        assert record["updates_rejected"] == 4 * 5


@pytest.mark.parametrize("attack", ["sign_flip", "gaussian"])
def test_fedavg_drops_more_than_5_points_and_the_report_says_why(tmp_path, clean, attack):
    # Execute
    result = federated(tmp_path, "strategy=fedavg", f"fl.attack.kind={attack}")
    report = render_federated_report(result, {})
    # Assert
    assert result.summary["final_accuracy"] < clean - POINTS
    attackers = result.summary["attack"]["attackers"]
    assert "## Byzantine clients" in report
    assert f"4 of the 20 clients (devices {attackers[0]}" in report
    assert f"they **{attack}**" in report


def test_the_report_shows_what_the_attack_costs_the_rule_and_fedavg(tmp_path, clean):
    # Execute: the median under sign_flip, with its baselines simulated.
    result = federated(
        tmp_path, "strategy=median", "fl.attack.kind=sign_flip", "fl.attack.baselines=true"
    )
    report = render_federated_report(result, {})

    # Assert: the median's clean twin and FedAvg's pair are in the summary and the report.
    baselines = result.summary["attack"]["baselines"]
    assert set(baselines) == {"median", "fedavg"}
    median, fedavg = baselines["median"], baselines["fedavg"]
    assert median["attacked"] == result.summary["final_accuracy"]
    assert fedavg["clean"] == pytest.approx(clean)  # the same spec and seed as the fixture's
    assert fedavg["drop_points"] > 100 * POINTS > median["drop_points"]
    assert fedavg["drop_points"] == pytest.approx(100 * (fedavg["clean"] - fedavg["attacked"]))
    assert "What the attack costs" in report
    assert f"| fedavg | {100 * fedavg['attacked']:.1f} %" in report


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["fl.attack.kind=flip"], "fl.attack.kind: 'flip' is not one of"),
        (["fl.attack.kind=scale", "fl.attack.fraction=0.01"], "fl.attack.fraction: 0.01 of 20"),
        (["fl.attack.kind=label_flip", "fl.training=modelled"], "fl.attack.kind: label_flip"),
    ],
)
def test_bad_attack_settings_are_refused_naming_the_field(overrides, message):
    with pytest.raises(ConfigError, match=message):
        build_spec(compose([*SETUP, *overrides]), conf_dir())
