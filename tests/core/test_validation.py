"""validate_update, check_count and check_metrics: every reason an update is refused, and the
Rejection record."""

import dataclasses

import numpy as np
import pytest

from fedsim.core.runtime import Update
from fedsim.core.strategies.registry import STRATEGIES, make_strategy
from fedsim.core.strategies.validation import (
    MAX_ABS_VALUE,
    Rejection,
    check_count,
    check_metrics,
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
