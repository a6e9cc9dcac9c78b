"""Formula (1) of the seed paper and summary statistics."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def time_saving_rate(t_ref: Sequence[float], t_new: Sequence[float]) -> float:
    """Formula (1): the mean over repetitions of (t_ref - t_new) / t_ref, as a fraction.

    Positive when client-based (federated) training saves time over cloud-based training.
    """
    ref = np.asarray(t_ref, dtype=float)
    new = np.asarray(t_new, dtype=float)
    if ref.shape != new.shape or ref.size == 0:
        raise ValueError("t_ref and t_new need the same, non-zero number of repetitions")
    if np.any(ref <= 0):
        raise ValueError("t_ref must be positive")
    return float(np.mean((ref - new) / ref))


def describe(values: Sequence[float]) -> dict[str, float]:
    """Mean, sample standard deviation (0 for one value), min and max."""
    a = np.asarray(values, dtype=float)
    if a.size == 0:
        raise ValueError("no values to describe")
    std = float(a.std(ddof=1)) if a.size > 1 else 0.0
    return {"mean": float(a.mean()), "std": std, "min": float(a.min()), "max": float(a.max())}
