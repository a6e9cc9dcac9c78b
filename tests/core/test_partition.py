"""Client splits: every sample placed once, label skew set by alpha, reproducible, clear errors."""

from __future__ import annotations

import numpy as np
import pytest

from fedsim.core.partition import dirichlet_partition, iid_partition, label_distribution

# 10 classes of 100 samples, in a shuffled order as real data sets come.
LABELS = np.random.default_rng(123).permutation(np.repeat(np.arange(10), 100))


def label_shares(parts: list[np.ndarray]) -> np.ndarray:
    counts = label_distribution(LABELS, parts)
    return counts / counts.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("alpha", [0.1, 1.0, 100.0])
def test_dirichlet_places_every_sample_exactly_once(alpha: float) -> None:
    # Execute
    parts = dirichlet_partition(LABELS, 8, alpha, rng=np.random.default_rng(0))

    # Assert
    assert len(parts) == 8
    assert sum(len(p) for p in parts) == len(LABELS)
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(len(LABELS)))
    assert all(np.all(np.diff(p) > 0) for p in parts)  # sorted, hence no duplicates within


def test_small_alpha_skews_labels_and_large_alpha_evens_them() -> None:
    # Prepare
    uniform = 0.1

    # Execute
    skewed = label_shares(dirichlet_partition(LABELS, 8, 0.05, rng=np.random.default_rng(1)))
    even = label_shares(dirichlet_partition(LABELS, 8, 1000.0, rng=np.random.default_rng(1)))

    # Assert: a client's largest class dominates under small alpha, not under large alpha.
    assert np.median(skewed.max(axis=1)) > 0.6
    assert np.abs(even - uniform).max() < 0.03


def test_min_size_is_respected() -> None:
    # Execute
    parts = dirichlet_partition(LABELS, 10, 0.3, rng=np.random.default_rng(2), min_size=40)

    # Assert
    assert min(len(p) for p in parts) >= 40


def test_same_seed_same_split_other_seed_other_split() -> None:
    # Execute
    first = dirichlet_partition(LABELS, 5, 0.5, rng=np.random.default_rng(7))
    again = dirichlet_partition(LABELS, 5, 0.5, rng=np.random.default_rng(7))
    other = dirichlet_partition(LABELS, 5, 0.5, rng=np.random.default_rng(8))

    # Assert
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other, strict=True))


def test_impossible_request_fails_at_once() -> None:
    # Execute / Assert
    with pytest.raises(ValueError, match="cannot give 10 clients 101 samples each from 1000"):
        dirichlet_partition(LABELS, 10, 1.0, rng=np.random.default_rng(0), min_size=101)


def test_unlikely_request_gives_up_after_max_tries() -> None:
    # Prepare: under alpha=0.01 a client almost never gets a share of every one of 10 classes.
    rng = np.random.default_rng(0)

    # Execute / Assert
    with pytest.raises(ValueError, match=r"in 20 tries.*raise alpha, lower min_size"):
        dirichlet_partition(LABELS, 10, 0.01, rng=rng, min_size=100, max_tries=20)


@pytest.mark.parametrize(
    ("n_clients", "alpha", "match"),
    [(0, 1.0, "n_clients must be >= 1"), (3, 0.0, "alpha must be > 0")],
)
def test_invalid_arguments_are_named(n_clients: int, alpha: float, match: str) -> None:
    # Execute / Assert
    with pytest.raises(ValueError, match=match):
        dirichlet_partition(LABELS, n_clients, alpha, rng=np.random.default_rng(0))


def test_iid_partition_balances_sizes_and_covers_all() -> None:
    # Execute
    parts = iid_partition(103, 4, np.random.default_rng(0))

    # Assert
    assert sorted(len(p) for p in parts) == [25, 26, 26, 26]
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(103))


def test_label_distribution_counts_per_client_and_class() -> None:
    # Prepare
    labels = np.array([3, 7, 3, 3, 9])
    parts = [np.array([0, 1]), np.array([2, 3, 4]), np.array([], dtype=np.int64)]

    # Execute
    counts = label_distribution(labels, parts)

    # Assert: columns are classes 3, 7, 9.
    np.testing.assert_array_equal(counts, [[1, 1, 0], [2, 0, 1], [0, 0, 0]])
