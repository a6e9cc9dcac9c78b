"""The fidelity benchmark's pure helpers: Kendall's tau, the slowed profiles, the table.

The benchmark itself needs root and minutes of emulated runs; it is not a test.
"""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest

PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_fidelity.py"
_spec = importlib.util.spec_from_file_location("bench_fidelity", PATH)
assert _spec is not None and _spec.loader is not None
bench = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = bench  # dataclasses look their module up while the class is made
_spec.loader.exec_module(bench)


def test_tau_is_one_for_the_same_order_and_minus_one_for_the_reverse():
    # Prepare: four configurations timed on two scales (the order is what counts).
    emulated = [1.0, 2.0, 3.0, 4.0]

    # Execute
    same = bench.kendall_tau(emulated, [10.0, 20.0, 35.0, 90.0])
    reverse = bench.kendall_tau(emulated, [4.0, 3.0, 2.0, 1.0])

    # Assert
    assert same == pytest.approx(1.0)
    assert reverse == pytest.approx(-1.0)


def test_tau_counts_one_swapped_pair_of_four_items():
    # Prepare: six pairs, one of them discordant: (5 - 1) / 6.
    a, b = [1.0, 2.0, 3.0, 4.0], [1.0, 3.0, 2.0, 4.0]

    # Execute
    tau = bench.kendall_tau(a, b)

    # Assert
    assert tau == pytest.approx(4 / 6)


def test_tau_b_with_a_tie_and_configurations_that_never_reached_the_target():
    # Prepare: the last two never reached the target (inf) in the simulator: a tie there.
    a, b = [1.0, 2.0, 3.0, 4.0], [1.0, 2.0, math.inf, math.inf]

    # Execute
    tau = bench.kendall_tau(a, b)

    # Assert: 5 concordant pairs, 1 tie in b: 5 / sqrt(6 * 5).
    assert tau == pytest.approx(5 / math.sqrt(30))


def test_tau_refuses_scorings_it_cannot_compare():
    with pytest.raises(ValueError, match="3 scores against 2"):
        bench.kendall_tau([1.0, 2.0, 3.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="ties every item"):
        bench.kendall_tau([1.0, 2.0], [5.0, 5.0])


def test_a_slowed_profile_gets_the_share_of_the_core_it_is_given():
    # Prepare: a measured host profile.
    host = {
        "kind": "measured",
        "source": "fedsim calibrate",
        "steps": {
            "digits_cnn": {"overhead_s": 1e-3, "per_sample_s": 2e-5, "flops_per_sample": 2e6}
        },
        "aggregate_bytes_per_s": 4e9,
        "cold_start_s": 0.5,
        "request_cpu_s": 1e-3,
        "segment_cpu_s": 3e-5,
    }

    # Execute
    slowed = bench.scaled_profile(host, 0.25)

    # Assert: times four times longer, throughputs four times lower, the host untouched, and
    # the speed the emulation's quota is computed from a quarter of the host's.
    step = slowed["steps"]["digits_cnn"]
    assert (step["overhead_s"], step["per_sample_s"]) == pytest.approx((4e-3, 8e-5))
    assert slowed["aggregate_bytes_per_s"] == pytest.approx(1e9)
    assert (slowed["cold_start_s"], slowed["request_cpu_s"]) == pytest.approx((2.0, 4e-3))
    assert slowed["segment_cpu_s"] == pytest.approx(1.2e-4)
    assert "round_overhead_s" not in slowed  # what the host did not measure stays unmeasured
    assert host["steps"]["digits_cnn"]["overhead_s"] == 1e-3
    assert bench.host_gflops(slowed) / bench.host_gflops(host) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="share"):
        bench.scaled_profile(host, 1.5)


def test_the_table_has_a_line_per_scenario_and_says_why_one_was_skipped():
    # Prepare: the figures of two fidelity.csv rows, and a skipped scenario.
    rows = [
        {"round": "0", "predicted_s": "1.0", "measured_s": "2.0", "abs_rel_error": "0.5",
         **{f"{c}_abs_rel_error": "0.5" for c in bench.COMPONENTS}},
        {"round": "1", "predicted_s": "1.0", "measured_s": "1.1", "abs_rel_error": "0.1",
         **{f"{c}_abs_rel_error": "" for c in bench.COMPONENTS}},
    ]  # fmt: skip
    figures = bench.scenario_figures(rows)
    results = [
        {"scenario": "a", **figures, "notes": "n"},
        {"scenario": "b", "skipped": "no netem"},
    ]

    # Execute
    table = bench.markdown_table(results)

    # Assert: medians over both rounds and over round 1 alone; an empty error is left out.
    lines = table.splitlines()
    assert len(lines) == 4
    assert lines[2].startswith("| a | 2 | 30.0 / 46.0 | 10.0 / 10.0 | 50.0 / 50.0 |")
    assert lines[3] == "| b | - | - | - | - | - | - | - | skipped: no netem |"


def test_a_second_run_is_taken_against_the_first_as_a_prediction_is():
    # Prepare: two runs' round times, the first with a round of 0 s.
    first, second = [1.0, 2.0, 0.0, 4.0], [1.1, 1.0, 0.5, 4.0]
    # Execute
    errors = bench.repeatability(first, second)
    # Assert: |second - first| / first; no error where the first run took no time.
    assert errors == pytest.approx([0.1, 0.5, None, 0.0]) and errors[2] is None
    with pytest.raises(ValueError, match="4 and 3 rounds"):
        bench.repeatability(first, second[:3])


def test_the_table_of_scenarios_run_twice_has_two_more_columns():
    # Prepare: one scenario run twice (its second run 10 % and 30 % off the first), one once.
    first = {"measured_s": [1.0, 1.0], "round": {"median": 0.2, "p90": 0.4}}
    second = {
        "measured_s": [1.1, 0.7],
        "round": {"median": 0.05, "p90": 0.08},
        "errors": [0.05, 0.08],
        "emulation": {},
        "host_load_1min": {},
    }
    again = bench.again_figures(first, second)
    plain = {k: {"median": 0.2, "p90": 0.4} for k in ("round", "round_after_first")}
    plain |= {c: {"median": None, "p90": None} for c in bench.COMPONENTS}
    results = [
        {"scenario": "a", "rounds": 2, **plain, "again": again, "notes": "n"},
        {"scenario": "b", "rounds": 2, **plain, "notes": "m"},
    ]
    # Execute
    lines = bench.markdown_table(results).splitlines()
    # Assert: the header and its rule have the two columns; scenario b, run once, has none.
    assert lines[0].endswith("| waiting | run 2 vs run 1 | prediction vs run 2 | notes |")
    assert lines[1].count("|") == lines[0].count("|") == 12
    assert again["repeat"] == pytest.approx({"median": 0.2, "p90": 0.28})
    assert lines[2].endswith("| 20.0 / 28.0 | 5.0 / 8.0 | n |")
    assert lines[3].endswith("| - | - | m |")
