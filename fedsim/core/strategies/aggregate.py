"""Aggregation arithmetic as plain numpy functions over named arrays.

The streaming rules (weighted means, distances to a reference) run at memory speed: they walk
the arrays in blocks that stay in the CPU's cache and do their arithmetic, and any change of
precision, on those blocks, so no full-size temporary is made and each update is read from
memory once.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from fedsim.core.runtime import Update

NDArrays = dict[str, np.ndarray]

# A weighted mean copies one block of up to STACK_ROWS updates into the rows of a stack and
# reduces them with einsum's sum of products, which reads each row once. Not BLAS's matmul:
# OpenBLAS splits the product over threads, and on a machine whose other core was busy that
# made it 40 times slower. STACK_BYTES keeps the stack in cache: on a 2-core AMD EPYC with 32 MB
# of L3, 4-8 MB blocks were fastest, 0.5 MB ones half as fast.
STACK_BYTES = 8 << 20
STACK_ROWS = 16
# Elementwise scans over one update (differences, extremes) go 2**18 values at a time.
SCAN_BLOCK = 1 << 18


def _check_weight(weight: float) -> float:
    w = float(weight)
    if not (math.isfinite(w) and w > 0):
        raise ValueError(f"weight must be a finite number > 0, got {weight}")
    return w


def check_same_layout(arrays: Sequence[NDArrays]) -> None:
    """Raise unless every update has the first one's names and shapes."""
    first = arrays[0]
    for a in arrays[1:]:
        if a.keys() != first.keys():
            raise ValueError("update names differ from the first update's")
        for k, v in a.items():
            if np.shape(v) != np.shape(first[k]):
                raise ValueError(f"{k}: shape {np.shape(v)} != {np.shape(first[k])}")


def weighted_average(
    pairs: Iterable[tuple[NDArrays, float]], dtype: type[np.floating] = np.float32
) -> NDArrays:
    """The weighted mean of ``(arrays, weight)`` pairs, e.g. weights = example counts.

    Extra memory is the result plus a cache-sized scratch stack, however many updates there
    are. The updates are summed in groups of up to :data:`STACK_ROWS`, and the groups' sums in
    float64, so thousands of updates add up without drift. ``dtype=np.float64`` (for callers that
    keep computing with the mean) sums the groups in float64 too: exact to float64 rounding.
    A float32 mean sums each group in float32, which runs at twice the speed: for float32
    updates its error is at most ``(min(n, STACK_ROWS) + 3) * 2**-24`` times the weighted mean
    of the ``|values|``, a few units in the last place where the updates agree in sign, as
    trained copies of one model mostly do (wider updates are rounded to float32 first).
    """
    arrays: list[NDArrays] = []
    weights: list[float] = []
    for a, w in pairs:
        arrays.append(a)
        weights.append(_check_weight(w))
    if not arrays:
        raise ValueError("no updates to average")
    check_same_layout(arrays)
    exact = np.dtype(dtype) != np.float32
    work = np.dtype(np.float64 if exact else np.float32)
    # Normalised first, so the product of the weights with the stack is the mean itself.
    share = (np.array(weights) / math.fsum(weights)).astype(work)
    n = len(arrays)
    rows = min(n, STACK_ROWS)
    # No wider than the largest array: a small model needs no 8 MB of scratch.
    widest = max((math.prod(np.shape(v)) for v in arrays[0].values()), default=0)
    block = max(1, min(widest, STACK_BYTES // (work.itemsize * rows)))
    scratch = np.empty(rows * block, dtype=work)
    part = np.empty(block, dtype=work)
    # Several groups: their sums add up in float64.
    acc = np.empty(block) if n > rows else None
    mean: NDArrays = {}
    for name, first in arrays[0].items():
        # ravel is a view of a contiguous array: nothing is copied whole.
        flats = [np.ravel(np.asarray(a[name])) for a in arrays]
        result = np.empty(np.shape(first), dtype=dtype)
        out = result.reshape(-1)
        for start in range(0, out.size, block):
            stop = min(out.size, start + block)
            m = stop - start
            for g in range(0, n, rows):
                group = flats[g : g + rows]
                # A contiguous (rows, m) view: einsum's inner loop runs fastest over one.
                stack = scratch[: len(group) * m].reshape(len(group), m)
                for i, flat in enumerate(group):
                    np.copyto(stack[i], flat[start:stop], casting="same_kind")
                np.einsum("i,ij->j", share[g : g + len(group)], stack, out=part[:m])
                if acc is not None:
                    if g:
                        acc[:m] += part[:m]
                    else:
                        np.copyto(acc[:m], part[:m])
            total = part[:m] if acc is None else acc[:m]
            np.copyto(out[start:stop], total, casting="same_kind")
        mean[name] = result
    return mean


def updates_with_arrays(
    updates: Sequence[Update], who: str
) -> list[tuple[Update, NDArrays]] | None:
    """Each update with its arrays, checked to all carry some; None when none does (a
    timing-only round)."""
    if not updates:
        raise ValueError(f"{who} needs at least one update")
    with_arrays = [(u, u.parameters) for u in updates if u.parameters is not None]
    if not with_arrays:
        return None
    if len(with_arrays) != len(updates):
        raise ValueError("some updates carry parameters and some do not")
    return with_arrays


def stacked(arrays: Sequence[NDArrays]) -> dict[str, np.ndarray]:
    """Each name's arrays stacked along a new first axis, in float64.

    Rules that look at every update at once (median, Krum) need this; all updates must have
    the first one's names and shapes.
    """
    check_same_layout(arrays)
    return {k: np.stack([np.asarray(a[k], dtype=np.float64) for a in arrays]) for k in arrays[0]}


def coordinate_median(arrays: Sequence[NDArrays]) -> NDArrays:
    """The coordinate-wise median (Yin et al., ICML 2018), unweighted."""
    return {k: np.median(s, axis=0).astype(np.float32) for k, s in stacked(arrays).items()}


def trimmed_mean(arrays: Sequence[NDArrays], *, beta: float) -> NDArrays:
    """The coordinate-wise mean after dropping the ``floor(beta * n)`` lowest and highest values."""
    if not 0.0 <= beta < 0.5:
        raise ValueError(f"beta must be in [0, 0.5), got {beta}")
    n = len(arrays)
    # The epsilon keeps e.g. 0.29 * 100 = 28.999999999999996 from trimming one value too few.
    k = int(np.floor(beta * n + 1e-9))
    return {
        name: np.sort(s, axis=0)[k : n - k].mean(axis=0).astype(np.float32)
        for name, s in stacked(arrays).items()
    }


def pairwise_sq_distances(arrays: Sequence[NDArrays]) -> np.ndarray:
    """The (n, n) squared L2 distances between updates, each flattened over all its arrays."""
    n = len(arrays)
    dist = np.zeros((n, n))
    for s in stacked(arrays).values():
        x = s.reshape(n, -1)
        # Centring first keeps the Gram-matrix identity |a-b|^2 = |a|^2 + |b|^2 - 2ab from
        # cancelling catastrophically when updates are large and close together.
        x = x - x.mean(axis=0)
        sq = np.einsum("ij,ij->i", x, x)
        dist += sq[:, None] + sq[None, :] - 2.0 * (x @ x.T)
    np.fill_diagonal(dist, 0.0)
    return np.maximum(dist, 0.0)


def krum_scores(arrays: Sequence[NDArrays], *, f: int) -> np.ndarray:
    """Each update's Krum score (Blanchard et al., NeurIPS 2017).

    The score is the sum of squared distances to the update's ``n - f - 2`` nearest neighbours;
    Krum's guarantee needs ``n >= 2f + 3``.
    """
    n = len(arrays)
    if f < 0:
        raise ValueError(f"f must be >= 0, got {f}")
    if n < 2 * f + 3:
        raise ValueError(f"Krum needs n >= 2f + 3 updates (f={f}: {2 * f + 3}), got n={n}")
    dist = pairwise_sq_distances(arrays)
    # Column 0 of each sorted row is the distance to itself (0): skip it.
    nearest = np.sort(dist, axis=1)[:, 1 : n - f - 1]
    return nearest.sum(axis=1)


def delta_norm(arrays: NDArrays, reference: NDArrays) -> float:
    """The L2 norm of ``arrays - reference`` over all arrays together."""
    if arrays.keys() != reference.keys():
        raise ValueError("update names differ from the reference's")
    for k, ref in reference.items():
        if np.shape(arrays[k]) != np.shape(ref):
            raise ValueError(f"{k}: shape {np.shape(arrays[k])} != {np.shape(ref)}")
    scratch = np.empty(SCAN_BLOCK)
    total = 0.0
    for k, ref in reference.items():
        a, r = np.ravel(np.asarray(arrays[k])), np.ravel(np.asarray(ref))
        for start in range(0, a.size, SCAN_BLOCK):
            stop = min(a.size, start + SCAN_BLOCK)
            d = scratch[: stop - start]
            np.subtract(a[start:stop], r[start:stop], out=d, dtype=np.float64)
            total += float(np.dot(d, d))
    return math.sqrt(total)
