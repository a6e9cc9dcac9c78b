"""FedAvg (McMahan et al., AISTATS 2017): the example-weighted mean of client updates."""

from __future__ import annotations

from collections.abc import Sequence

from fedsim.core.runtime import NDArrays, Update
from fedsim.core.strategies.aggregate import WeightedSum
from fedsim.core.strategies.base import Strategy


class FedAvg(Strategy):
    """Weighted FedAvg, streamed through a running sum.

    Updates of a timing-only workload carry no arrays: the round still happens (and costs what
    it costs), but there are no numbers to average, so the result is None. Mixing the two kinds
    in one round is an error.
    """

    name = "fedavg"

    def aggregate_fit(self, current: NDArrays | None, updates: Sequence[Update]) -> NDArrays | None:
        if not updates:
            raise ValueError("FedAvg needs at least one update")
        with_arrays = [(u, u.parameters) for u in updates if u.parameters is not None]
        if not with_arrays:
            return None
        if len(with_arrays) != len(updates):
            raise ValueError("some updates carry parameters and some do not")
        acc = WeightedSum()
        for u, arrays in with_arrays:
            acc.add(arrays, float(u.num_examples))
        return acc.average()
