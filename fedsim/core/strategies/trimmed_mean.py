"""Coordinate-wise trimmed mean (Yin et al., ICML 2018)."""

from __future__ import annotations

from collections.abc import Sequence

from fedsim.core.runtime import NDArrays, Update
from fedsim.core.strategies.aggregate import trimmed_mean, updates_with_arrays
from fedsim.core.strategies.base import Strategy


class TrimmedMean(Strategy):
    """Per coordinate, drop the ``floor(beta * n)`` largest and smallest values, average the rest.

    Unweighted, like the median, because example counts come from the clients. ``beta`` must
    exceed the fraction of Byzantine clients to remove them all; the default 0.2 is Flower's
    (FedTrimmedAvg).
    """

    name = "trimmed_mean"
    streaming = False

    def __init__(self, *, beta: float = 0.2) -> None:
        if not 0.0 <= beta < 0.5:
            raise ValueError(f"beta must be in [0, 0.5), got {beta}")
        self.beta = float(beta)

    def aggregate_fit(self, current: NDArrays | None, updates: Sequence[Update]) -> NDArrays | None:
        with_arrays = updates_with_arrays(updates, self.name)
        if with_arrays is None:
            return None
        return trimmed_mean([arrays for _, arrays in with_arrays], beta=self.beta)
