"""Krum and Multi-Krum (Blanchard et al., NeurIPS 2017): keep the updates with most company.

Each update is scored by the sum of squared distances to its ``n - f - 2`` nearest neighbours
(all arrays flattened together); ``f`` Byzantine updates far from the honest ones score high.
The guarantee needs ``n >= 2f + 3`` (``min_updates``): ``aggregate_fit`` raises below it, and
a round with fewer updates does not aggregate.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedsim.core.runtime import NDArrays, Update
from fedsim.core.strategies.aggregate import (
    krum_scores,
    updates_with_arrays,
    weighted_average,
)
from fedsim.core.strategies.base import Strategy


def _check_f(f: int) -> int:
    if isinstance(f, bool) or int(f) != f or f < 0:
        raise ValueError(f"f must be an integer >= 0, got {f!r}")
    return int(f)


class Krum(Strategy):
    """The single update with the lowest score becomes the new model.

    ``f = 0`` is Flower's default; set it to the number of Byzantine clients expected.
    """

    name = "krum"
    streaming = False

    def __init__(self, *, f: int = 0) -> None:
        self.f = _check_f(f)

    def min_updates(self) -> int:
        return 2 * self.f + 3

    def aggregate_fit(self, current: NDArrays | None, updates: Sequence[Update]) -> NDArrays | None:
        with_arrays = updates_with_arrays(updates, self.name)
        if with_arrays is None:
            return None
        arrays = [a for _, a in with_arrays]
        best = int(np.argmin(krum_scores(arrays, f=self.f)))
        return {k: np.asarray(v, dtype=np.float32).copy() for k, v in arrays[best].items()}


class MultiKrum(Strategy):
    """The plain mean of the ``m`` lowest-scored updates (scores computed once, as in the paper).

    The mean is unweighted, as in Blanchard et al.: example counts are reported by the clients
    and a Byzantine one that got selected could otherwise claim a huge count. ``m = None``
    means ``n - f``, every update Krum does not suspect (El Mhamdi et al., ICML 2018).
    """

    name = "multikrum"
    streaming = False

    def __init__(self, *, f: int = 0, m: int | None = None) -> None:
        self.f = _check_f(f)
        if m is not None and (isinstance(m, bool) or int(m) != m or m < 1):
            raise ValueError(f"m must be an integer >= 1 or None, got {m!r}")
        self.m = None if m is None else int(m)

    def min_updates(self) -> int:
        return max(2 * self.f + 3, self.m or 1)

    def aggregate_fit(self, current: NDArrays | None, updates: Sequence[Update]) -> NDArrays | None:
        with_arrays = updates_with_arrays(updates, self.name)
        if with_arrays is None:
            return None
        arrays = [a for _, a in with_arrays]
        scores = krum_scores(arrays, f=self.f)
        n = len(arrays)
        m = n - self.f if self.m is None else self.m
        if m > n:
            raise ValueError(f"m={m} exceeds the {n} updates of the round")
        # A stable sort, so ties go to the earlier update, as with Krum's argmin.
        chosen = np.argsort(scores, kind="stable")[:m]
        return weighted_average((arrays[i], 1.0) for i in chosen)
