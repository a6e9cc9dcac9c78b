"""Timing a zoo model's training steps on this host, for ``fedsim calibrate``.

A timed step is the step ``TorchTrainer`` takes: forward, the trainer's own per-sample loss,
``zero_grad``, backward, an SGD step with momentum. Batch sizes are timed round-robin (each
repeat times every size once) so that a drift in the host's speed while calibrating (another
process, frequency scaling) spreads over all sizes instead of bending the fitted line; each size
first runs warm-up steps, which pay for one-off costs (oneDNN picks and caches its kernels per
shape, the allocator grows its pools) that a training run pays once, not per step.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from fedsim.core.runtime import NDArrays
from fedsim.ml.models import build_model
from fedsim.ml.params import get_parameters
from fedsim.ml.spec import MODELS, PACKAGED_ENTRIES

# The trainer's own loss: a timed step is the step it takes.
from fedsim.ml.train import DEFAULT_LEARNING_RATE, DEFAULT_MOMENTUM, _per_sample_loss

STATISTICS: dict[str, Callable[[list[float]], float]] = {
    "median": statistics.median,
    "min": min,
}


@dataclass(frozen=True, kw_only=True)
class StepTimings:
    """Seconds of each timed step, by batch size, of ``model`` at ``input_size`` on ``threads``."""

    model: str
    input_size: int
    num_classes: int
    threads: int
    seconds: dict[int, list[float]]

    def per_size(self, statistic: str = "median") -> tuple[list[int], list[float]]:
        """Each batch size and one figure for its steps.

        ``median`` is robust to the odd slow step; ``min`` also to a host whose other
        processes take the core away for stretches (then every figure but the fastest is
        inflated, the median included), at the price of describing the host at its quietest.
        """
        if statistic not in STATISTICS:
            raise ValueError(f"statistic must be one of {', '.join(STATISTICS)}, got {statistic!r}")
        pick = STATISTICS[statistic]
        sizes = sorted(self.seconds)
        return sizes, [pick(self.seconds[b]) for b in sizes]


def default_shape(model: str) -> tuple[int, int]:
    """The input size and class count the model zoo measures ``model`` at (its first entry)."""
    if model not in MODELS:
        raise KeyError(f"unknown model {model!r}; known models: {', '.join(sorted(MODELS))}")
    return next((size, classes) for name, size, classes in PACKAGED_ENTRIES if name == model)


@contextmanager
def torch_threads(threads: int | None) -> Iterator[int]:
    """Run with ``threads`` intra-op threads (torch's own choice when None), then restore."""
    before = torch.get_num_threads()
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def time_training_steps(
    model: str,
    batch_sizes: Sequence[int],
    *,
    repeats: int,
    warmup: int,
    input_size: int,
    num_classes: int,
    threads: int | None = None,
    seed: int = 0,
) -> StepTimings:
    """Time ``repeats`` training steps of ``model`` at each batch size, after ``warmup`` each."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got {repeats} and {warmup}")
    bad = [b for b in batch_sizes if b < 1]
    if bad or not batch_sizes:
        raise ValueError(f"batch sizes must be >= 1, got {list(batch_sizes)}")
    with torch_threads(threads) as used, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = build_model(model, num_classes)
        net.train()
        shape = (getattr(type(net), "in_channels", 3), input_size, input_size)
        optimizer = torch.optim.SGD(
            net.parameters(), lr=DEFAULT_LEARNING_RATE, momentum=DEFAULT_MOMENTUM
        )
        # Random inputs cost what real ones do; labels in range keep the loss well defined.
        batches = {
            b: (torch.rand((b, *shape)), torch.randint(0, num_classes, (b,))) for b in batch_sizes
        }

        # The trainer keeps running sums of the loss and its square; so does a timed step.
        loss_sum = torch.zeros(())
        loss_sq_sum = torch.zeros(())

        def step(b: int) -> float:
            X, y = batches[b]
            start = time.perf_counter()
            losses = _per_sample_loss(net, net(X), y)
            optimizer.zero_grad(set_to_none=True)
            losses.mean().backward()
            optimizer.step()
            detached = losses.detach()
            loss_sum.add_(detached.sum())
            loss_sq_sum.add_(detached.square().sum())
            return time.perf_counter() - start

        for b in batch_sizes:
            for _ in range(warmup):
                step(b)
        seconds: dict[int, list[float]] = {b: [] for b in batch_sizes}
        for _ in range(repeats):
            for b in batch_sizes:
                seconds[b].append(step(b))
    return StepTimings(
        model=model, input_size=input_size, num_classes=num_classes, threads=used, seconds=seconds
    )


def model_state(model: str, num_classes: int, seed: int = 0) -> NDArrays:
    """The model's shipped state as initialised under ``seed``: what travels and is aggregated."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return get_parameters(build_model(model, num_classes))
