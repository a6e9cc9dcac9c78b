"""Aggregation arithmetic as plain numpy functions over named arrays."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

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

    def average(self) -> NDArrays:
        if self._sums is None:
            raise ValueError("no updates to average")
        return {k: (s / self.total_weight).astype(np.float32) for k, s in self._sums.items()}


def weighted_average(pairs: Iterable[tuple[NDArrays, float]]) -> NDArrays:
    """The weighted mean of ``(arrays, weight)`` pairs, e.g. weights = example counts."""
    acc = WeightedSum()
    for arrays, weight in pairs:
        acc.add(arrays, weight)
    return acc.average()
