"""Aggregation arithmetic as plain numpy functions over named arrays."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from fedsim.core.runtime import Update

NDArrays = dict[str, np.ndarray]


class WeightedSum:
    """A running weighted sum of named arrays: O(model size) memory, however many clients.

    Sums are kept in float64 so that thousands of float32 updates add up without drift; the
    average comes back as float32.
    """

    def __init__(self) -> None:
        self._sums: dict[str, np.ndarray] | None = None
        self.total_weight = 0.0
        self.count = 0

    def add(self, arrays: NDArrays, weight: float) -> None:
        if weight <= 0:
            raise ValueError(f"weight must be > 0, got {weight}")
        if self._sums is None:
            self._sums = {k: np.asarray(v, dtype=np.float64) * weight for k, v in arrays.items()}
        else:
            if arrays.keys() != self._sums.keys():
                raise ValueError("update names differ from the first update's")
            for k, v in arrays.items():
                if v.shape != self._sums[k].shape:
                    raise ValueError(f"{k}: shape {v.shape} != {self._sums[k].shape}")
                self._sums[k] += np.asarray(v, dtype=np.float64) * weight
        self.total_weight += weight
        self.count += 1

    def average(self, dtype: type[np.floating] = np.float32) -> NDArrays:
        """The weighted mean; ``dtype=np.float64`` for callers that keep computing with it."""
        if self._sums is None:
            raise ValueError("no updates to average")
        return {k: (s / self.total_weight).astype(dtype) for k, s in self._sums.items()}


def weighted_average(pairs: Iterable[tuple[NDArrays, float]]) -> NDArrays:
    """The weighted mean of ``(arrays, weight)`` pairs, e.g. weights = example counts."""
    acc = WeightedSum()
    for arrays, weight in pairs:
        acc.add(arrays, weight)
    return acc.average()


def updates_with_arrays(
    updates: Sequence[Update], who: str
) -> list[tuple[Update, NDArrays]] | None:
    """Each update with its arrays, checked to all carry some; None when none does (a
    timing-only round)."""
    if not updates:
        raise ValueError(f"{who} needs at least one update")
    with_arrays = [(u, u.parameters) for u in updates if u.parameters is not None]
    if not with_arrays:
        return None
    if len(with_arrays) != len(updates):
        raise ValueError("some updates carry parameters and some do not")
    return with_arrays


def stacked(arrays: Sequence[NDArrays]) -> dict[str, np.ndarray]:
    """Each name's arrays stacked along a new first axis, in float64.

    Rules that look at every update at once (median, Krum) need this; all updates must have
    the first one's names and shapes.
    """
    first = arrays[0]
    for a in arrays[1:]:
        if a.keys() != first.keys():
            raise ValueError("update names differ from the first update's")
        for k, v in a.items():
            if np.shape(v) != np.shape(first[k]):
                raise ValueError(f"{k}: shape {np.shape(v)} != {np.shape(first[k])}")
    return {k: np.stack([np.asarray(a[k], dtype=np.float64) for a in arrays]) for k in first}


def coordinate_median(arrays: Sequence[NDArrays]) -> NDArrays:
    """The coordinate-wise median (Yin et al., ICML 2018), unweighted."""
    return {k: np.median(s, axis=0).astype(np.float32) for k, s in stacked(arrays).items()}


def trimmed_mean(arrays: Sequence[NDArrays], *, beta: float) -> NDArrays:
    """The coordinate-wise mean after dropping the ``floor(beta * n)`` lowest and highest values."""
    if not 0.0 <= beta < 0.5:
        raise ValueError(f"beta must be in [0, 0.5), got {beta}")
    n = len(arrays)
    # The epsilon keeps e.g. 0.29 * 100 = 28.999999999999996 from trimming one value too few.
    k = int(np.floor(beta * n + 1e-9))
    return {
        name: np.sort(s, axis=0)[k : n - k].mean(axis=0).astype(np.float32)
        for name, s in stacked(arrays).items()
    }


def pairwise_sq_distances(arrays: Sequence[NDArrays]) -> np.ndarray:
    """The (n, n) squared L2 distances between updates, each flattened over all its arrays."""
    n = len(arrays)
    dist = np.zeros((n, n))
    for s in stacked(arrays).values():
        x = s.reshape(n, -1)
        # Centring first keeps the Gram-matrix identity |a-b|^2 = |a|^2 + |b|^2 - 2ab from
        # cancelling catastrophically when updates are large and close together.
        x = x - x.mean(axis=0)
        sq = np.einsum("ij,ij->i", x, x)
        dist += sq[:, None] + sq[None, :] - 2.0 * (x @ x.T)
    np.fill_diagonal(dist, 0.0)
    return np.maximum(dist, 0.0)


def krum_scores(arrays: Sequence[NDArrays], *, f: int) -> np.ndarray:
    """Each update's Krum score (Blanchard et al., NeurIPS 2017).

    The score is the sum of squared distances to the update's ``n - f - 2`` nearest neighbours;
    Krum's guarantee needs ``n >= 2f + 3``.
    """
    n = len(arrays)
    if f < 0:
        raise ValueError(f"f must be >= 0, got {f}")
    if n < 2 * f + 3:
        raise ValueError(f"Krum needs n >= 2f + 3 updates (f={f}: {2 * f + 3}), got n={n}")
    dist = pairwise_sq_distances(arrays)
    # Column 0 of each sorted row is the distance to itself (0): skip it.
    nearest = np.sort(dist, axis=1)[:, 1 : n - f - 1]
    return nearest.sum(axis=1)


def delta_norm(arrays: NDArrays, reference: NDArrays) -> float:
    """The L2 norm of ``arrays - reference`` over all arrays together."""
    if arrays.keys() != reference.keys():
        raise ValueError("update names differ from the reference's")
    total = 0.0
    for k, ref in reference.items():
        if np.shape(arrays[k]) != np.shape(ref):
            raise ValueError(f"{k}: shape {np.shape(arrays[k])} != {np.shape(ref)}")
        d = np.asarray(arrays[k], dtype=np.float64) - np.asarray(ref, dtype=np.float64)
        total += float(np.vdot(d, d))
    return float(np.sqrt(total))
