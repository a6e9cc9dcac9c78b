"""Checks an update must pass before it reaches a strategy, and the record of a rejected one.

A strategy assumes its updates match the global model name for name, shape for shape and
dtype for dtype, and hold finite numbers; one NaN would poison a mean for good. The round
coordinator can check each update against the current parameters with :func:`validate_update`
and keep those that fail out of aggregation, recorded as :class:`Rejection`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedsim.core.runtime import NDArrays
from fedsim.core.strategies.aggregate import delta_norm


@dataclass(frozen=True)
class Rejection:
    """An update left out of aggregation: which device sent it and why."""

    device: int
    reason: str


def _names(names: set[str]) -> str:
    return ", ".join(sorted(names))


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
        if np.issubdtype(arr.dtype, np.inexact) and not np.isfinite(arr).all():
            return f"{name}: non-finite values"
    if max_norm is not None:
        norm = delta_norm(update, reference)
        if norm > max_norm:
            return f"update norm {norm:.6g} > max_norm {max_norm:.6g}"
    return None
