"""Checks an update must pass before it reaches a strategy, and the record of a rejected one.

A strategy assumes its updates match the global model name for name, shape for shape and
dtype for dtype, and hold finite numbers; one NaN would poison a mean for good. The round
coordinator checks each update against the current parameters with :func:`validate_update`,
its example count against what its task asked for with :func:`check_count` and its metrics
with :func:`check_metrics`, and keeps those that fail out of aggregation, recorded as
:class:`Rejection`. The server runs the same array checks on an update as it arrives.

Finite is not enough: a value of 3e38 is finite, but its square, or the model's outputs
computed from it, are not. Values are therefore bounded by :data:`MAX_ABS_VALUE`, the square
root of float32's largest number, so that squares (second moments, distances, norms) stay
finite even in float32. Under that bound, with example counts no larger than asked, every
built-in rule's aggregate is finite: the weighted means are bounded by the largest value,
and the rest is computed in float64.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from fedsim.core.limits import MAX_ABS_VALUE
from fedsim.core.runtime import NDArrays
from fedsim.core.strategies.aggregate import SCAN_BLOCK, delta_norm


@dataclass(frozen=True)
class Rejection:
    """An update left out of aggregation: which device sent it and why."""

    device: int
    reason: str


def _names(names: set[str]) -> str:
    return ", ".join(sorted(names))


def largest_magnitude(arr: np.ndarray) -> float | None:
    """The largest ``|value|`` in ``arr`` (0 when empty), or None if any value is NaN or infinite.

    The whole array is scanned in cache-sized blocks with no temporary as large as ``arr``:
    this runs on every value of every update.
    """
    flat = arr.reshape(-1)
    real = flat.dtype.kind != "c"
    largest = 0.0
    for start in range(0, flat.size, SCAN_BLOCK):
        block = flat[start : start + SCAN_BLOCK]
        if real:
            # min and max propagate NaN, and an infinity is one of them: two reductions that
            # read the block from cache find both, and the magnitude, without np.abs's copy.
            low, high = float(block.min()), float(block.max())
            if not (math.isfinite(low) and math.isfinite(high)):
                return None
            largest = max(largest, -low, high)
        else:
            high = float(np.abs(block).max())
            if not math.isfinite(high):
                return None
            largest = max(largest, high)
    return largest


def validate_update(
    reference: NDArrays, update: NDArrays, *, max_norm: float | None = None
) -> str | None:
    """None when ``update`` fits ``reference``, else a short reason.

    ``max_norm`` bounds the L2 norm of ``update - reference`` over all arrays together.
    """
    missing = reference.keys() - update.keys()
    if missing:
        return f"missing arrays: {_names(missing)}"
    extra = update.keys() - reference.keys()
    if extra:
        return f"unexpected arrays: {_names(extra)}"
    for name, ref in reference.items():
        arr = update[name]
        if not isinstance(arr, np.ndarray):
            return f"{name}: not an array ({type(arr).__name__})"
        if arr.shape != ref.shape:
            return f"{name}: shape {arr.shape} != {ref.shape}"
        if arr.dtype != ref.dtype:
            return f"{name}: dtype {arr.dtype} != {ref.dtype}"
        # Non-numeric dtypes equal to the reference's cannot hold NaN; only test what can.
        if arr.dtype.kind in "fc" and arr.size:
            largest = largest_magnitude(arr)
            if largest is None:
                return f"{name}: non-finite values"
            if largest > MAX_ABS_VALUE:
                return f"{name}: a value of magnitude {largest:.3g} > {MAX_ABS_VALUE:.3g}"
    if max_norm is not None:
        norm = delta_norm(update, reference)
        if norm > max_norm:
            return f"update norm {norm:.6g} > max_norm {max_norm:.6g}"
    return None


def check_count(num_examples: int, asked: int) -> str | None:
    """None when an update's example count is between 1 and what its task ``asked`` for.

    The count is the update's weight in an example-weighted mean, and the client reports it:
    more than it was asked to train on is a claim to outweigh the others, and 0 would be a
    weight no mean can divide by.
    """
    if num_examples < 1:
        return f"num_examples {num_examples} < 1"
    if num_examples > asked:
        return f"num_examples {num_examples} > the {asked} its task asked for"
    return None


def check_metrics(metrics: Mapping[str, float]) -> str | None:
    """None when every metric an update reports is a finite number, else the first that is not.

    The round's training loss is their example-weighted mean, and one NaN would make it NaN.
    """
    for k, v in metrics.items():
        if isinstance(v, bool) or not isinstance(v, (int, float, np.number)):
            return f"metric {k!r}: not a number ({type(v).__name__})"
        if not math.isfinite(float(v)):
            return f"metric {k!r}: non-finite value {v}"
    return None
