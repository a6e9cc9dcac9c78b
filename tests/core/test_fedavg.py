"""FedAvg and the weighted mean under it: weights, float64 accumulation, blocks, bad input."""

import numpy as np
import pytest

from fedsim.core.runtime import Update
from fedsim.core.strategies import aggregate
from fedsim.core.strategies.aggregate import weighted_average
from fedsim.core.strategies.fedavg import FedAvg


def upd(value, n):
    arrays = {"w": np.full((2, 2), value, np.float32), "b": np.array([value], np.float32)}
    return Update(num_examples=n, nbytes=20, parameters=arrays)


def test_fedavg_weights_by_examples():
    # Prepare: 1 example says 0, 3 examples say 4 -> weighted mean 3.
    updates = [upd(0.0, 1), upd(4.0, 3)]
    # Execute
    out = FedAvg().aggregate_fit(None, updates)
    # Assert
    assert out["w"].dtype == np.float32
    np.testing.assert_allclose(out["w"], 3.0)
    np.testing.assert_allclose(out["b"], [3.0])


def float64_mean(pairs, key="x"):
    """The weighted mean and the weighted mean of |values|, exactly as float64 has them."""
    total = sum(w for _, w in pairs)
    mean = sum(a[key].astype(np.float64) * w for a, w in pairs) / total
    magnitude = sum(np.abs(a[key].astype(np.float64)) * w for a, w in pairs) / total
    return mean, magnitude


@pytest.mark.parametrize("n", [8, 40])
def test_a_float32_mean_is_within_its_error_bound(n):
    # Prepare: values of both signs, so that sums cancel; 40 updates make 3 groups.
    rng = np.random.default_rng(n)
    pairs = [
        ({"x": rng.normal(size=10_000).astype(np.float32)}, float(rng.integers(1, 500)))
        for _ in range(n)
    ]
    exact, magnitude = float64_mean(pairs)
    # Execute
    mean = weighted_average(pairs)["x"]
    # Assert: the bound weighted_average documents.
    assert mean.dtype == np.float32
    bound = (min(n, aggregate.STACK_ROWS) + 3) * 2.0**-24 * magnitude
    assert np.all(np.abs(mean - exact) <= bound)


def test_trained_copies_average_to_within_a_few_ulps():
    # Prepare: 8 updates within 1 % of one model, as clients' copies of it are after training.
    rng = np.random.default_rng(2)
    model = rng.normal(size=100_000)
    pairs = [
        ({"x": (model * (1 + 0.01 * rng.normal(size=model.size))).astype(np.float32)}, w)
        for w in (120.0, 75.0, 300.0, 64.0, 210.0, 99.0, 180.0, 150.0)
    ]
    exact, _ = float64_mean(pairs)
    # Execute
    mean = weighted_average(pairs)["x"]
    # Assert: exact rounding would be within 0.5 units in the last place.
    ulps = np.abs(mean - exact) / np.spacing(np.abs(exact).astype(np.float32))
    assert ulps.max() <= 4.0
    assert ulps.mean() <= 1.0


def test_a_float64_mean_is_exact_where_float32_sums_cancel():
    # Prepare: 2**24 + 1 - 2**24 is 1 in float64, but 0 in float32 (2**24 + 1 rounds to 2**24).
    big = float(2**24)
    pairs = [({"x": np.array([v], np.float32)}, 1.0) for v in (big, 1.0, -big)]
    # Execute
    mean = weighted_average(pairs, np.float64)["x"]
    # Assert
    assert mean.dtype == np.float64
    assert mean[0] == pytest.approx(1.0 / 3.0, rel=1e-9)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_blocks_and_row_groups_cover_every_value(monkeypatch, dtype):
    # Prepare: blocks of 4 rows x 8 values, so 37 updates make 10 row groups and the arrays
    # (sizes 21, 1, 0 and a scalar) end mid-block.
    monkeypatch.setattr(aggregate, "STACK_ROWS", 4)
    monkeypatch.setattr(aggregate, "STACK_BYTES", 4 * 8 * np.dtype(dtype).itemsize)
    rng = np.random.default_rng(1)
    shapes = {"w": (3, 7), "b": (1,), "empty": (0, 2), "s": ()}
    pairs = [
        ({k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}, float(i + 1))
        for i in range(37)
    ]
    # Execute
    mean = weighted_average(pairs, dtype)
    # Assert
    for k, s in shapes.items():
        exact, magnitude = float64_mean(pairs, k)
        assert mean[k].shape == s and mean[k].dtype == dtype
        if dtype == np.float64:
            np.testing.assert_allclose(mean[k], exact, rtol=1e-12, atol=1e-15)
        else:
            assert np.all(np.abs(mean[k] - exact) <= 7 * 2.0**-24 * magnitude)


def test_the_updates_are_not_modified():
    a, b = {"x": np.arange(5, dtype=np.float32)}, {"x": np.ones(5, np.float32)}
    weighted_average([(a, 1.0), (b, 2.0)])
    np.testing.assert_array_equal(a["x"], np.arange(5))
    np.testing.assert_array_equal(b["x"], np.ones(5))


@pytest.mark.parametrize(
    ("second", "weight", "message"),
    [
        ({"x": np.zeros(4, np.float32)}, 1.0, r"x: shape \(4,\) != \(3,\)"),
        ({"y": np.zeros(3, np.float32)}, 1.0, "names differ"),
        ({"x": np.zeros(3, np.float32)}, 0.0, "weight must be a finite number > 0, got 0.0"),
        ({"x": np.zeros(3, np.float32)}, float("nan"), "weight must be a finite number > 0"),
        ({"x": np.zeros(3, np.float32)}, float("inf"), "weight must be a finite number > 0"),
    ],
)
def test_mismatched_updates_and_bad_weights_are_rejected(second, weight, message):
    first = {"x": np.zeros(3, np.float32)}
    with pytest.raises(ValueError, match=message):
        weighted_average([(first, 1.0), (second, weight)])


def test_no_updates_is_an_error():
    with pytest.raises(ValueError, match="no updates"):
        weighted_average([])


def test_timing_only_updates_aggregate_to_none():
    updates = [Update(num_examples=5, nbytes=100), Update(num_examples=7, nbytes=100)]
    assert FedAvg().aggregate_fit(None, updates) is None
    with pytest.raises(ValueError):
        FedAvg().aggregate_fit(None, [updates[0], upd(1.0, 2)])
