"""validate_update, check_count and check_metrics: every reason an update is refused, and the
Rejection record."""

import dataclasses

import numpy as np
import pytest

from fedsim.core.runtime import Update
from fedsim.core.strategies import aggregate, validation
from fedsim.core.strategies.registry import STRATEGIES, make_strategy
from fedsim.core.strategies.validation import (
    MAX_ABS_VALUE,
    Rejection,
    check_count,
    check_metrics,
    largest_magnitude,
    validate_update,
)


def reference():
    return {"w": np.zeros((2, 2), np.float32), "b": np.zeros(2, np.float32)}


def good():
    return {"w": np.full((2, 2), 0.5, np.float32), "b": np.ones(2, np.float32)}


def test_a_matching_update_passes():
    assert validate_update(reference(), good()) is None
    # The move has norm sqrt(4 * 0.25 + 2) = sqrt(3): at the bound is still fine.
    assert validate_update(reference(), good(), max_norm=float(np.sqrt(3.0))) is None


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda u: u.pop("b"), "missing arrays: b"),
        (lambda u: u.update(extra=np.zeros(1, np.float32)), "unexpected arrays: extra"),
        (lambda u: u.update(w=np.zeros((4,), np.float32)), "w: shape (4,) != (2, 2)"),
        (lambda u: u.update(b=np.zeros(2, np.float64)), "b: dtype float64 != float32"),
        (lambda u: u.update(b=np.array([0.0, np.nan], np.float32)), "b: non-finite values"),
        (lambda u: u.update(w=np.full((2, 2), np.inf, np.float32)), "w: non-finite values"),
        (lambda u: u.update(b=[0.0, 0.0]), "b: not an array (list)"),
        (
            lambda u: u.update(w=np.full((2, 2), 3e38, np.float32)),
            f"w: a value of magnitude 3e+38 > {MAX_ABS_VALUE:.3g}",
        ),
    ],
)
def test_each_reason(change, reason):
    # Prepare
    update = good()
    change(update)
    # Execute
    got = validate_update(reference(), update)
    # Assert
    assert got == reason


def test_a_move_above_max_norm_is_refused():
    # Prepare: the move has norm sqrt(3) = 1.732.
    update = good()
    # Execute
    got = validate_update(reference(), update, max_norm=1.5)
    # Assert
    assert got == "update norm 1.73205 > max_norm 1.5"


@pytest.mark.parametrize(
    ("values", "reason"),
    [
        # A value too large in the first block, NaN in the last: non-finite wins, as it would
        # over the whole array at once.
        ([3e38, 0, 0, 0, 0, 0, 0, 0, 0, np.nan], "w: non-finite values"),
        ([0, 0, 0, 0, 0, 0, 0, 0, 0, -np.inf], "w: non-finite values"),
        # The largest magnitude is negative and in the second block.
        (
            [1, 2, 3, 4, -3.2e38, 5, 0, 0, 0, 2e38],
            f"w: a value of magnitude 3.2e+38 > {MAX_ABS_VALUE:.3g}",
        ),
        ([1, 2, 3, 4, -5, 6, 7, 8, 9, -10], None),
    ],
)
def test_every_block_of_an_array_is_checked(monkeypatch, values, reason):
    # Prepare: blocks of 4 values, so 10 values make 3 blocks, the last one short.
    monkeypatch.setattr(validation, "SCAN_BLOCK", 4)
    ref = {"w": np.zeros((2, 5), np.float32)}
    update = {"w": np.array(values, np.float32).reshape(2, 5)}
    # Execute
    got = validate_update(ref, update)
    # Assert
    assert got == reason


def test_largest_magnitude_of_real_complex_and_empty_arrays():
    assert largest_magnitude(np.array([-7.5, 2.0], np.float16)) == 7.5
    assert largest_magnitude(np.array([3 + 4j, 1j], np.complex64)) == 5.0
    assert largest_magnitude(np.array([1.0, complex(np.nan, 0)])) is None
    assert largest_magnitude(np.zeros(0, np.float32)) == 0.0


def test_the_norm_of_a_move_spans_every_block(monkeypatch):
    # Prepare: blocks of 3 values over arrays of 7 and 2 values, float32 against float64.
    monkeypatch.setattr(aggregate, "SCAN_BLOCK", 3)
    rng = np.random.default_rng(0)
    ref = {"w": rng.normal(size=7), "b": rng.normal(size=2)}
    update = {k: (v + rng.normal(size=v.shape)).astype(np.float32) for k, v in ref.items()}
    expected = np.sqrt(sum(np.sum((update[k].astype(np.float64) - ref[k]) ** 2) for k in ref))
    # Execute
    norm = aggregate.delta_norm(update, ref)
    # Assert
    assert norm == pytest.approx(expected, rel=1e-12)


def test_several_missing_names_are_listed_in_order():
    got = validate_update(
        {"b": np.zeros(1), "a": np.zeros(1), "c": np.zeros(1)}, {"c": np.zeros(1)}
    )
    assert got == "missing arrays: a, b"


def test_rejection_is_a_frozen_record():
    rejection = Rejection(3, "w: non-finite values")
    assert rejection == Rejection(device=3, reason="w: non-finite values")
    with pytest.raises(dataclasses.FrozenInstanceError):
        rejection.device = 4


def test_values_up_to_the_bound_pass_and_their_squares_stay_finite_in_float32():
    # Prepare: the largest value allowed, with either sign.
    edge = np.float32(MAX_ABS_VALUE)
    update = {"w": np.array([[edge, -edge], [0, 0]], np.float32), "b": np.zeros(2, np.float32)}
    # Execute
    got = validate_update(reference(), update)
    # Assert
    assert got is None
    assert np.isfinite(np.square(update["w"])).all()


@pytest.mark.parametrize("name", STRATEGIES)
def test_every_rule_aggregates_updates_at_the_bounds_to_finite_values(name):
    # Prepare: 7 updates at the value bound, alternating in sign, each claiming the largest
    # count a wire header may carry (what passes validation when a task asks for that many).
    f = {"krum": 2, "multikrum": 2}.get(name)
    rule = make_strategy(name, **({} if f is None else {"f": f}))
    big = np.float32(MAX_ABS_VALUE)
    updates = [
        Update(
            num_examples=2**63 - 1,
            nbytes=8,
            parameters={"w": np.full(3, big if i % 2 else -big, np.float32)},
        )
        for i in range(7)
    ]
    # Execute: two rounds, so that stateful rules (FedAdam's moments) step twice.
    current = {"w": np.zeros(3, np.float32)}
    for _ in range(2):
        current = rule.aggregate_fit(current, updates)
    # Assert
    assert np.isfinite(current["w"]).all()


@pytest.mark.parametrize(
    ("count", "asked", "reason"),
    [
        (650, 650, None),
        (1, 650, None),
        (651, 650, "num_examples 651 > the 650 its task asked for"),
        (10**18, 650, "num_examples 1000000000000000000 > the 650 its task asked for"),
        (0, 650, "num_examples 0 < 1"),
        (-5, 650, "num_examples -5 < 1"),
    ],
)
def test_an_example_count_is_between_one_and_what_was_asked(count, asked, reason):
    assert check_count(count, asked) == reason


@pytest.mark.parametrize(
    ("metrics", "reason"),
    [
        ({"loss": 0.3, "num_examples": 650}, None),
        ({}, None),
        ({"loss": float("nan")}, "metric 'loss': non-finite value nan"),
        ({"loss": 0.1, "acc": float("inf")}, "metric 'acc': non-finite value inf"),
        ({"loss": "low"}, "metric 'loss': not a number (str)"),
        ({"loss": True}, "metric 'loss': not a number (bool)"),
    ],
)
def test_metrics_must_be_finite_numbers(metrics, reason):
    assert check_metrics(metrics) == reason
