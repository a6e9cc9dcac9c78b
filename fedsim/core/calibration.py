"""Measured training time: a per-batch step model and its least-squares fit to timings.

Training one batch of ``n`` samples takes ``overhead_s + per_sample_s * n`` seconds. The
overhead is what a step costs whatever its size (Python and framework dispatch, the optimizer's
pass over the parameters, kernel launches); the per-sample cost is the arithmetic and memory
traffic that grows with the batch. FLOPs / peak models the second term only, which is why it
underestimates small models on CPUs, where the first dominates.

``fit_step_model`` recovers the two figures from timings at three or more batch sizes (two
sizes determine a line exactly and leave nothing to judge the fit by) and reports how far the
timings lie from the fitted line.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

MIN_BATCH_SIZES = 3


@dataclass(frozen=True, kw_only=True)
class StepModel:
    """Seconds for one training step of ``n`` samples: ``overhead_s + per_sample_s * n``."""

    overhead_s: float
    per_sample_s: float

    def __post_init__(self) -> None:
        for name in ("overhead_s", "per_sample_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name}: must be finite and >= 0, got {value}")

    def seconds(self, batch_size: int) -> float:
        """The time of one step over ``batch_size`` samples."""
        return self.overhead_s + self.per_sample_s * batch_size

    def epoch_seconds(self, samples: int, batch_size: int) -> float:
        """One pass over ``samples`` samples in batches of ``batch_size`` (the last one partial).

        Every batch pays the overhead once and every sample its own cost, so a partial last
        batch is charged its real size.
        """
        if samples < 0 or batch_size < 1:
            raise ValueError(
                f"samples must be >= 0 and batch_size >= 1, got {samples} and {batch_size}"
            )
        batches = math.ceil(samples / batch_size)
        return batches * self.overhead_s + samples * self.per_sample_s


@dataclass(frozen=True, kw_only=True)
class StepFit:
    """A fitted ``StepModel`` and how well it explains the timings it came from.

    ``residual_s`` is the root mean square of (measured - fitted) seconds over all timings;
    ``relative_residual`` the root mean square of those differences divided by the measured
    time, so one figure reads the same for a 1 ms and a 1 s step.
    """

    model: StepModel
    residual_s: float
    relative_residual: float
    batch_sizes: tuple[int, ...]
    timings: int


def fit_step_model(batch_sizes: Sequence[int], seconds: Sequence[float]) -> StepFit:
    """Fit ``seconds[i] ~ overhead_s + per_sample_s * batch_sizes[i]`` by least squares.

    Repeated batch sizes are welcome (each timing counts once); at least three distinct sizes
    are needed. Neither figure can be negative, so the fit is non-negative least squares: when
    the unconstrained line would have a negative overhead (or slope), the best line with that
    figure at zero is taken instead, which is the constrained optimum for two unknowns.
    """
    if len(batch_sizes) != len(seconds):
        raise ValueError(
            f"batch_sizes and seconds differ in length: {len(batch_sizes)} != {len(seconds)}"
        )
    sizes = np.asarray(batch_sizes, dtype=float)
    times = np.asarray(seconds, dtype=float)
    if sizes.ndim != 1 or times.ndim != 1:
        raise ValueError("batch_sizes and seconds must be flat sequences")
    bad_size = [b for b in batch_sizes if not (float(b).is_integer() and b >= 1)]
    if bad_size:
        raise ValueError(f"batch sizes must be integers >= 1, got {bad_size}")
    bad_time = [t for t in seconds if not (math.isfinite(t) and t >= 0)]
    if bad_time:
        raise ValueError(f"timings must be finite and >= 0 seconds, got {bad_time}")
    distinct = sorted({int(b) for b in batch_sizes})
    if len(distinct) < MIN_BATCH_SIZES:
        raise ValueError(
            f"need timings at >= {MIN_BATCH_SIZES} distinct batch sizes, got {distinct or 'none'}"
        )

    design = np.column_stack([np.ones_like(sizes), sizes])
    (overhead, per_sample), *_ = np.linalg.lstsq(design, times, rcond=None)
    if overhead < 0:
        overhead, per_sample = 0.0, float(sizes @ times / (sizes @ sizes))
    elif per_sample < 0:
        overhead, per_sample = float(times.mean()), 0.0
    model = StepModel(overhead_s=float(overhead), per_sample_s=float(per_sample))

    residuals = times - (model.overhead_s + model.per_sample_s * sizes)
    # A zero timing has no relative error to speak of; it counts by its absolute one.
    scale = np.where(times > 0, times, 1.0)
    return StepFit(
        model=model,
        residual_s=float(np.sqrt(np.mean(residuals**2))),
        relative_residual=float(np.sqrt(np.mean((residuals / scale) ** 2))),
        batch_sizes=tuple(distinct),
        timings=len(times),
    )
