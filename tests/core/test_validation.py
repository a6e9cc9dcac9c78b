"""validate_update: every reason an update is refused, and the Rejection record."""

import dataclasses

import numpy as np
import pytest

from fedsim.core.strategies.validation import Rejection, validate_update


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
