import numpy as np
import pytest

from fedsim.core.runtime import Update
from fedsim.core.strategies.aggregate import WeightedSum, weighted_average
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


def test_streaming_sum_matches_batch_mean():
    rng = np.random.default_rng(0)
    pairs = [({"x": rng.normal(size=5).astype(np.float32)}, float(n)) for n in range(1, 50)]
    expected = sum(a["x"].astype(np.float64) * w for a, w in pairs) / sum(w for _, w in pairs)
    np.testing.assert_allclose(weighted_average(pairs)["x"], expected, rtol=1e-6)


def test_mismatched_updates_are_rejected():
    acc = WeightedSum()
    acc.add({"x": np.zeros(3, np.float32)}, 1.0)
    with pytest.raises(ValueError, match="shape"):
        acc.add({"x": np.zeros(4, np.float32)}, 1.0)
    with pytest.raises(ValueError, match="names"):
        acc.add({"y": np.zeros(3, np.float32)}, 1.0)
    with pytest.raises(ValueError):
        acc.add({"x": np.zeros(3, np.float32)}, 0.0)


def test_timing_only_updates_aggregate_to_none():
    updates = [Update(num_examples=5, nbytes=100), Update(num_examples=7, nbytes=100)]
    assert FedAvg().aggregate_fit(None, updates) is None
    with pytest.raises(ValueError):
        FedAvg().aggregate_fit(None, [updates[0], upd(1.0, 2)])
