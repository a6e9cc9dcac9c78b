"""Coordinate-wise median (Yin et al., ICML 2018): robust to a minority of arbitrary updates."""

from __future__ import annotations

from collections.abc import Sequence

from fedsim.core.runtime import NDArrays, Update
from fedsim.core.strategies.aggregate import coordinate_median, updates_with_arrays
from fedsim.core.strategies.base import Strategy


class Median(Strategy):
    """Each coordinate of the result is the median of the clients' values for it.

    Unweighted: example counts are reported by the clients, and a Byzantine client could
    claim any count to weigh the result its way.
    """

    name = "median"
    streaming = False

    def aggregate_fit(self, current: NDArrays | None, updates: Sequence[Update]) -> NDArrays | None:
        with_arrays = updates_with_arrays(updates, self.name)
        if with_arrays is None:
            return None
        return coordinate_median([arrays for _, arrays in with_arrays])
