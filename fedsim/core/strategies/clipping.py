"""Norm clipping of client moves before any strategy sees them (DP-FedAvg's clipping step).

McMahan et al. (ICLR 2018) bound each client's influence by clipping its update
``w_i - current`` to an L2 norm of at most ``max_norm``, over all arrays together; that bound
is what differential-privacy noise is then calibrated to, and on its own it limits how far a
single scaled-up (e.g. Byzantine) update can drag the model.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from fedsim.core.runtime import NDArrays, Update
from fedsim.core.strategies.aggregate import delta_norm, updates_with_arrays
from fedsim.core.strategies.base import Strategy, Wrapper


def clip_update(arrays: NDArrays, current: NDArrays, *, max_norm: float) -> NDArrays:
    """``arrays``, moved back towards ``current`` so that their difference has norm <= max_norm."""
    norm = delta_norm(arrays, current)
    if norm <= max_norm:
        return arrays
    scale = max_norm / norm
    out: NDArrays = {}
    for k, ref in current.items():
        ref64 = np.asarray(ref, dtype=np.float64)
        moved = ref64 + (np.asarray(arrays[k], dtype=np.float64) - ref64) * scale
        out[k] = moved.astype(np.asarray(arrays[k]).dtype)
    return out


# Passes over an update's values that clipping makes: its norm (a dot product) and, when it is
# too long, the move scaled back (a subtraction, a scaling and an addition).
CLIP_PASSES = 3.0


class Clipped(Wrapper):
    """Wraps ``inner``: every update's move is clipped to ``max_norm`` before ``inner`` runs."""

    def __init__(self, *, inner: Strategy, max_norm: float) -> None:
        if not max_norm > 0:
            raise ValueError(f"max_norm must be > 0, got {max_norm}")
        # Clipping looks at one update at a time, so it streams whenever the inner rule does.
        super().__init__(inner, "clip")
        self.max_norm = float(max_norm)

    def aggregation_passes(self, n: int) -> float:
        return CLIP_PASSES * n + self.inner.aggregation_passes(n)

    def aggregate_fit(self, current: NDArrays | None, updates: Sequence[Update]) -> NDArrays | None:
        with_arrays = updates_with_arrays(updates, self.name)
        if with_arrays is None:
            return self.inner.aggregate_fit(current, updates)
        if current is None:
            raise ValueError("clipping needs the current parameters to measure each update's move")
        clipped = [
            dataclasses.replace(u, parameters=clip_update(arrays, current, max_norm=self.max_norm))
            for u, arrays in with_arrays
        ]
        return self.inner.aggregate_fit(current, clipped)
