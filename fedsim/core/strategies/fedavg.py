"""FedAvg (McMahan et al., AISTATS 2017): the example-weighted mean of client updates."""

from __future__ import annotations

from collections.abc import Sequence

from fedsim.core.runtime import NDArrays, Update
from fedsim.core.strategies.aggregate import updates_with_arrays, weighted_average
from fedsim.core.strategies.base import Strategy


class FedAvg(Strategy):
    """Weighted FedAvg: one pass over each update, in cache-sized blocks.

    Updates of a timing-only workload carry no arrays: the round still happens (and costs what
    it costs), but there are no numbers to average, so the result is None. Mixing the two kinds
    in one round is an error.
    """

    name = "fedavg"

    def aggregate_fit(self, current: NDArrays | None, updates: Sequence[Update]) -> NDArrays | None:
        with_arrays = updates_with_arrays(updates, self.name)
        if with_arrays is None:
            return None
        return weighted_average((arrays, float(u.num_examples)) for u, arrays in with_arrays)
