"""Measuring this host for a model: what ``fedsim calibrate`` and the agent report.

What is measured, for one model of the zoo or a user's (an import path, ``docs/plugins.md``):

- training time per step, timed with PyTorch at three or more batch sizes (warm-up steps, then
  repeats, the median per size, or the fastest) and fitted as per-batch overhead + per-sample
  cost (``fedsim.core.calibration``), with the fit's residual;
- evaluation time: whole calls of the server's ``Evaluator`` (setting the parameters, the
  forward passes, the loss and accuracy) on :data:`EVAL_SAMPLES` synthetic samples, each
  within one of its batches (``EVAL_BATCH_SIZE``), fitted the same way as per-batch overhead +
  per-sample cost, with the fit's residual;
- safetensors serialization and load throughput of the model's state (``fedsim.store``'s
  ``encode`` and ``decode``, as the server and the agents ship models);
- the server's aggregation throughput: FedAvg over copies of the state, counted as the memory
  traffic ``aggregation_cost`` charges (n updates read, one model written) per second;
- the cold start: building the model and its optimizer and taking the first step (the first
  batch size's; wall or processor time, the less), less the fitted time of a steady step of
  that size. It is what a device's
  first training task costs beyond a steady one, as far as a short measurement can tell: the
  trainer's data loading is not in it, and a process that trained before measures it warm;
- the server's round overhead: deploying the round's version as the real transport does
  before the round's tasks go out (serializing it, hashing it, finding it among the versions
  that the run stored as the previous round ended);
- the task overhead: what a ``TorchTrainer`` task of a few steps, started after the process
  idled as a device idles between its tasks, takes beyond its fitted steps (setting the
  parameters, building the optimizer, the sample order, reading the parameters back, and the
  first steps' re-warming of caches and processor after the idle time), which every training
  task pays once.

The processor cost of one HTTP request (``request_cpu_s``) and of each TCP segment of a body
that a link paces (``segment_cpu_s``) need an HTTP client and server: ``fedsim.real.
request_cost`` measures them; what the agent's keeping an update on disk costs
(``persist_cpu_s``, ``persist_io_s``) is the agent's state directory's to measure
(``fedsim.real.agent.state.measure_persist``). The callers (``fedsim calibrate``, the agent)
add both to the :class:`Calibration`.

A timed step is the step ``TorchTrainer`` takes: gathering the batch from the shard by a
shuffled index, forward, the trainer's own per-sample loss, ``zero_grad``, backward, an SGD step
with momentum. Batch sizes are timed round-robin (each
repeat times every size once) so that a drift in the host's speed while calibrating (another
process, frequency scaling) spreads over all sizes instead of bending the fitted line; each size
first runs warm-up steps, which pay for one-off costs (oneDNN picks and caches its kernels per
shape, the allocator grows its pools) that a training run pays once, not per step.

:func:`profile_document` is the measured hardware profile (``kind: measured``) as a plain
document: the fields ``fedsim.schema.HardwareConf`` reads, and what an agent sends the server.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import platform
import socket
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fedsim.core.calibration import MIN_BATCH_SIZES, StepFit, StepModel, fit_step_model
from fedsim.core.runtime import FitIns, ModelRef, NDArrays, Update
from fedsim.core.strategies.fedavg import FedAvg
from fedsim.ml.models import build_model
from fedsim.ml.params import get_parameters
from fedsim.ml.spec import calibration_shape, model_spec

# The trainer's own loss: a timed step is the step it takes.
from fedsim.ml.train import (
    DEFAULT_LEARNING_RATE,
    DEFAULT_MOMENTUM,
    EVAL_BATCH_SIZE,
    Evaluator,
    MomentumSGD,
    TorchTrainer,
    _per_sample_loss,
)
from fedsim.store.safetensors_io import decode, encode
from fedsim.store.sqlite import SqliteRepository

AGGREGATE_UPDATES = 8  # a round's worth of updates for the aggregation timing
SHARD_BATCHES = 8  # the timed steps draw their batches from a shard of this many of the largest
GB = 1e9
# Evaluation is timed at these sample counts, each within one of the Evaluator's batches, so
# that a call is one batch and the fit's overhead is a batch's: a sample count that spans
# several would charge the overhead once per batch.
EVAL_SAMPLES = (32, 128, 512)
EVAL_WARMUP = 2  # untimed calls per count first: oneDNN's kernels per shape, the allocator
EVAL_REPEATS = 15
MIN_EVAL_REPEATS = 3
# A sample count whose training step the fit puts above this many seconds is not timed as an
# evaluation (a call would take about a third of it: forward passes only; see eval_samples).
EVAL_CALL_S = 0.5
# The timed evaluation calls stop after this many seconds (at least MIN_EVAL_REPEATS rounds),
# so that a large model's evaluation adds seconds to the calibration, not minutes.
EVAL_BUDGET_S = 2.0

STATISTICS: dict[str, Callable[[list[float]], float]] = {
    "median": statistics.median,
    "min": min,
}


@dataclass(frozen=True, kw_only=True)
class StepTimings:
    """Seconds of each timed step, by batch size, of ``model`` at ``input_size`` on ``threads``.

    ``first_s`` is the cold start's timing: building the model and optimizer, then one step
    of the first batch size (before any warm-up), in seconds of wall time or of this process's
    processor time, whichever is less. The processor's figure is what the work is where other
    processes take the cores meanwhile (their share inflates the wall time: twice the agents'
    own count of their first task's processor seconds on a host at load 4 on 2 cores,
    2026-11-30); the wall time is where the step runs on more threads than one.
    """

    model: str
    input_size: int
    num_classes: int
    threads: int
    seconds: dict[int, list[float]]
    first_s: float

    def per_size(self, statistic: str = "median") -> tuple[list[int], list[float]]:
        """Each batch size and one figure for its steps (:func:`per_size`)."""
        return per_size(self.seconds, statistic)


def per_size(
    seconds: Mapping[int, Sequence[float]], statistic: str = "median"
) -> tuple[list[int], list[float]]:
    """Each size of ``seconds`` (training steps by batch size, evaluation calls by sample
    count), ascending, and one figure for its times: what a step model is fitted to.

    ``median`` is robust to the odd slow call; ``min`` also to a host whose other processes
    take the core away for stretches (then every figure but the fastest is inflated, the median
    included), at the price of describing the host at its quietest.
    """
    if statistic not in STATISTICS:
        raise ValueError(f"statistic must be one of {', '.join(STATISTICS)}, got {statistic!r}")
    pick = STATISTICS[statistic]
    sizes = sorted(seconds)
    return sizes, [pick(seconds[b]) for b in sizes]


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
    clock: Callable[[], float] = time.perf_counter,
    before_timing: Callable[[], None] | None = None,
) -> StepTimings:
    """Time ``repeats`` training steps of ``model`` at each batch size, after ``warmup`` each,
    by ``clock`` (wall time; ``time.thread_time`` counts the processor the step used instead).
    ``before_timing``, if given, is called once between the warm-up and the timed steps."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got {repeats} and {warmup}")
    bad = [b for b in batch_sizes if b < 1]
    if bad or not batch_sizes:
        raise ValueError(f"batch sizes must be >= 1, got {list(batch_sizes)}")
    with torch_threads(threads) as used, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        built, built_cpu = time.perf_counter(), time.process_time()
        net = build_model(model, num_classes)
        net.train()
        shape = (getattr(type(net), "in_channels", 3), input_size, input_size)
        # The trainer's own optimizer: its cold start is what a first task pays.
        optimizer = MomentumSGD(
            list(net.parameters()), lr=DEFAULT_LEARNING_RATE, momentum=DEFAULT_MOMENTUM
        )
        build_s = time.perf_counter() - built
        build_cpu_s = time.process_time() - built_cpu
        # Random inputs cost what real ones do; labels in range keep the loss well defined.
        # The trainer gathers each batch from the device's shard by a shuffled index: so does
        # a timed step, from a shard of a few of the largest batches.
        shard_size = SHARD_BATCHES * max(batch_sizes)
        shard_X = torch.rand((shard_size, *shape))
        shard_y = torch.randint(0, num_classes, (shard_size,))
        order = torch.randperm(shard_size)
        offsets = dict.fromkeys(batch_sizes, 0)

        # The trainer keeps running sums of the loss and its square; so does a timed step.
        loss_sum = torch.zeros(())
        loss_sq_sum = torch.zeros(())

        def step(b: int) -> float:
            at = offsets[b] = (offsets[b] + b) % (shard_size - b + 1)
            start = clock()
            batch = order[at : at + b]
            X, y = shard_X[batch], shard_y[batch]
            losses = _per_sample_loss(net, net(X), y)
            optimizer.zero_grad()
            losses.mean().backward()
            optimizer.step()
            detached = losses.detach()
            loss_sum.add_(detached.sum())
            loss_sq_sum.add_(detached.square().sum())
            return clock() - start

        # The cold step is extra, not one of the warm-up steps: it is timed whatever warmup is.
        stepped_cpu = time.process_time()
        first_s = build_s + step(batch_sizes[0])
        first_s = min(first_s, build_cpu_s + time.process_time() - stepped_cpu)
        for b in batch_sizes:
            for _ in range(warmup):
                step(b)
        if before_timing is not None:
            before_timing()
        seconds: dict[int, list[float]] = {b: [] for b in batch_sizes}
        for _ in range(repeats):
            for b in batch_sizes:
                seconds[b].append(step(b))
    return StepTimings(
        model=model,
        input_size=input_size,
        num_classes=num_classes,
        threads=used,
        seconds=seconds,
        first_s=first_s,
    )


def eval_samples(step: StepModel, batch_sizes: Sequence[int]) -> list[int]:
    """The sample counts to time evaluation at: those of :data:`EVAL_SAMPLES` whose training
    step ``step`` puts within :data:`EVAL_CALL_S`, when at least three are; else the training
    batch sizes within one evaluation batch, which the training calibration could afford (a
    model whose forward pass over a few hundred samples takes seconds, such as YOLOv4 at
    608x608)."""
    affordable = [n for n in EVAL_SAMPLES if step.seconds(n) <= EVAL_CALL_S]
    if len(affordable) >= MIN_BATCH_SIZES:
        return affordable
    return sorted({b for b in batch_sizes if b <= EVAL_BATCH_SIZE})


def time_evaluation(
    model: str,
    state: NDArrays,
    samples: Sequence[int] = EVAL_SAMPLES,
    *,
    input_size: int,
    num_classes: int,
    repeats: int = EVAL_REPEATS,
    warmup: int = EVAL_WARMUP,
    budget_s: float = EVAL_BUDGET_S,
    seed: int = 0,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[int, list[float]]:
    """Seconds of whole ``Evaluator`` calls of ``model`` with parameters ``state``, by sample
    count: an Evaluator per count on synthetic data of that many samples, ``warmup`` untimed
    calls each, then rounds of one timed call per count (round-robin, as the training steps
    are timed), ``repeats`` of them or fewer once ``budget_s`` seconds have passed (never
    fewer than :data:`MIN_EVAL_REPEATS`). Each count must fit one batch (``EVAL_BATCH_SIZE``).
    """
    if repeats < MIN_EVAL_REPEATS or warmup < 0:
        raise ValueError(
            f"repeats must be >= {MIN_EVAL_REPEATS} and warmup >= 0, got {repeats} and {warmup}"
        )
    bad = [n for n in samples if not 1 <= n <= EVAL_BATCH_SIZE]
    if bad or not samples:
        raise ValueError(
            f"sample counts must be within one evaluation batch, 1 to {EVAL_BATCH_SIZE}, "
            f"got {list(samples)}"
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        in_channels = getattr(type(build_model(model, num_classes)), "in_channels", 3)
        larger = min(2 * max(samples), EVAL_BATCH_SIZE)
        X = torch.rand((larger, in_channels, input_size, input_size))
        y = torch.randint(0, num_classes, (larger,))
        evaluators = {
            n: Evaluator(model_name=model, num_classes=num_classes, X=X[:n], y=y[:n])
            for n in samples
        }
        # A server that has run a while has freed larger blocks than one evaluation's
        # activations (the data set, models, updates), and glibc's malloc, whose threshold for
        # mapping a block afresh rises to the largest block freed, serves them from its heap.
        # A process that has not maps and faults in fresh pages for its largest activations
        # on every call: 8.6 ms instead of 5.2 for 360 samples of digits_cnn on the 2-core VM
        # of benchmarks/README.md (2026-11-30; 5.2 with glibc's thresholds raised by
        # MALLOC_MMAP_THRESHOLD_), and a bent line. One larger call first sets the threshold.
        Evaluator(model_name=model, num_classes=num_classes, X=X, y=y)(state)
    for evaluator in evaluators.values():
        for _ in range(warmup):
            evaluator(state)
    seconds: dict[int, list[float]] = {n: [] for n in samples}
    began = clock()
    for done in range(repeats):
        if done >= MIN_EVAL_REPEATS and clock() - began > budget_s:
            break
        for n, evaluator in evaluators.items():
            start = clock()
            evaluator(state)
            seconds[n].append(clock() - start)
    return seconds


def model_state(model: str, num_classes: int, seed: int = 0) -> NDArrays:
    """The model's shipped state as initialised under ``seed``: what travels and is aggregated."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return get_parameters(build_model(model, num_classes))


@dataclass(frozen=True, kw_only=True)
class Calibration:
    """What ``calibrate`` measured on this host, in base units (seconds, bytes, bytes/s)."""

    model: str
    input_size: int
    threads: int
    fit: StepFit
    flops_per_sample: int
    state_bytes: int
    serialize_bytes_per_s: float
    load_bytes_per_s: float
    aggregate_bytes_per_s: float
    eval_fit: StepFit
    cold_start_s: float
    round_overhead_s: float
    task_overhead_s: float
    memory_bytes: float
    source: str
    # Added by a caller that can time HTTP and the agent's state directory.
    request_cpu_s: float | None = None
    segment_cpu_s: float | None = None
    persist_cpu_s: float | None = None
    persist_io_s: float | None = None


def calibrate(
    model: str,
    batch_sizes: Sequence[int],
    *,
    repeats: int,
    warmup: int,
    threads: int | None,
    statistic: str = "median",
    io_repeats: int = 50,
    by: str = "fedsim calibrate",
    input_size: int | None = None,
    num_classes: int | None = None,
) -> Calibration:
    """Measure this host for ``model``, a zoo name or a user's import path (see the module
    docstring), at ``input_size`` and ``num_classes`` (:func:`calibration_shape`); ``by``
    names the measuring command in the profile's ``source``."""
    input_size, num_classes = calibration_shape(model, input_size, num_classes)
    timings = time_training_steps(
        model,
        batch_sizes,
        repeats=repeats,
        warmup=warmup,
        input_size=input_size,
        num_classes=num_classes,
        threads=threads,
    )
    fit = fit_step_model(*timings.per_size(statistic))
    # A first step faster than the fitted line (noise) is no cold start, not a negative one.
    cold_start = max(0.0, timings.first_s - fit.model.seconds(batch_sizes[0]))
    state = model_state(model, num_classes)
    with torch_threads(threads):
        blob = encode(state)
        serialize = len(blob) / _median_seconds(lambda: encode(state), io_repeats)
        load = len(blob) / _median_seconds(lambda: decode(blob), io_repeats)
        updates = [
            Update(
                num_examples=1, nbytes=len(blob), parameters={k: v.copy() for k, v in state.items()}
            )
            for _ in range(AGGREGATE_UPDATES)
        ]
        fedavg = FedAvg()
        state_bytes = sum(a.nbytes for a in state.values())
        aggregate = (
            (AGGREGATE_UPDATES + 1)
            * state_bytes
            / _median_seconds(lambda: fedavg.aggregate_fit(state, updates), io_repeats)
        )
        round_overhead = deploy_seconds(state, min(io_repeats, DEPLOY_REPEATS))
        task = task_seconds(model, num_classes, input_size, batch_sizes[0], io_repeats)
        evaluations = time_evaluation(
            model,
            state,
            eval_samples(fit.model, batch_sizes),
            input_size=input_size,
            num_classes=num_classes,
        )
        eval_fit = fit_step_model(*per_size(evaluations, statistic))
        # A task faster than its fitted steps (noise) has no overhead, not a negative one.
        task_overhead = max(0.0, task - TASK_STEPS * fit.model.seconds(batch_sizes[0]))
    today = datetime.date.today().isoformat()
    return Calibration(
        model=model,
        input_size=input_size,
        threads=timings.threads,
        fit=fit,
        eval_fit=eval_fit,
        flops_per_sample=model_spec(
            model, input_size=input_size, num_classes=num_classes
        ).train_flops,
        state_bytes=len(blob),
        serialize_bytes_per_s=serialize,
        load_bytes_per_s=load,
        aggregate_bytes_per_s=aggregate,
        cold_start_s=cold_start,
        round_overhead_s=round_overhead,
        task_overhead_s=task_overhead,
        memory_bytes=float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")),
        source=(
            f"{by} on {socket.gethostname()}, {today}, torch {torch.__version__}, "
            f"{threads_text(timings.threads)}"
        ),
    )


DEPLOY_REPEATS = 10  # each writes a version to disk; a few tell the median
# A timed training task: its steps, the idle time before it, and at most this many repeats.
# After idling, a process's first steps run slower (caches and the processor cooled down):
# on the 2-core VM of benchmarks/README.md, the first three of a task 0.2 ms a step slower
# after 10 ms idle, 0.4 ms after 50 ms, 0.5 ms after 300 ms (a steady step: 0.8 ms). A device
# idles between its tasks (the rest of the round, the aggregation) for tens to hundreds of ms.
TASK_STEPS = 4
TASK_IDLE_S = 0.1
TASK_REPEATS = 15


def task_seconds(
    model: str, num_classes: int, input_size: int, batch_size: int, repeats: int
) -> float:
    """The median seconds of a ``TorchTrainer`` task of :data:`TASK_STEPS` steps of
    ``batch_size`` samples on a synthetic shard, each after :data:`TASK_IDLE_S` of idling (at
    most :data:`TASK_REPEATS` of them, after two untimed ones): the steps, what the trainer
    does around the steps of every task (setting the parameters, building its optimizer,
    drawing the sample order, reading the parameters back), and the first steps' re-warming
    after the idle time."""
    in_channels = getattr(type(build_model(model, num_classes)), "in_channels", 3)
    shard = (
        torch.rand((SHARD_BATCHES * batch_size, in_channels, input_size, input_size)),
        torch.randint(0, num_classes, (SHARD_BATCHES * batch_size,)),
    )
    trainer = TorchTrainer(model_name=model, num_classes=num_classes, data={0: shard}, seed=0)
    ins = FitIns(
        model=ModelRef(name=model, version=0, nbytes=0),
        samples=TASK_STEPS * batch_size,
        epochs=1,
        batch_size=batch_size,
        flops=0.0,
        update_nbytes=0,
    )
    return _median_seconds(
        lambda: trainer(0, ins), max(2, min(repeats, TASK_REPEATS)), warm=2, idle_s=TASK_IDLE_S
    )


def deploy_seconds(state: NDArrays, repeats: int) -> float:
    """The median seconds of a round's deployment as the real transport does it before the
    round's tasks go out: safetensors-encode the version, hash it (sha256) and find it among
    the model's versions in a model repository (SQLite and blob files, in a temporary
    directory). A run that trains keeps every version (``fedsim.store.recorder``), and stores
    each one, fsyncs and all, as the round that made it ends, between two rounds: so a round's
    deployment finds its version there, and so does each repeat, whose version is stored first,
    untimed."""
    if repeats < 1:
        raise ValueError(f"repeats: must be >= 1, got {repeats}")
    changed = {k: v.copy() for k, v in state.items()}
    first = next(iter(changed.values()), None)
    times = []
    with tempfile.TemporaryDirectory(prefix="fedsim-calibrate-") as tmp:
        repository = SqliteRepository(Path(tmp))
        repository.register_model("calibration", "calibration", {"source": "fedsim calibrate"})
        for i in range(repeats + 1):  # the first one warms up, untimed
            if first is not None and first.size:
                first.flat[0] = i + 1  # a new version each time
            repository.add_version("calibration", encode(changed))
            start = time.perf_counter()
            sha = hashlib.sha256(encode(changed)).hexdigest()
            if not any(v.sha256 == sha for v in repository.list_versions("calibration")):
                raise RuntimeError("the version just stored is not among the model's versions")
            times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def _median_seconds(
    fn: Callable[[], object], repeats: int, warm: int = 1, idle_s: float = 0.0
) -> float:
    """The median wall time of ``fn`` over ``repeats`` calls, after ``warm`` untimed calls;
    each timed call after ``idle_s`` of sleep."""
    for _ in range(warm):
        fn()
    times = []
    for _ in range(repeats):
        if idle_s:
            time.sleep(idle_s)
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def profile_document(cal: Calibration) -> dict[str, Any]:
    """The hardware profile's fields (``fedsim.schema.HardwareConf``) for ``cal``."""
    return {
        "kind": "measured",
        "source": cal.source,
        "description": f"{socket.gethostname()}: {cpu_model()}, {threads_text(cal.threads)}",
        "cpu_model": cpu_model(),
        "cpu_cores": cal.threads,
        "train_on": "cpu",
        "memory_gb": round(cal.memory_bytes / GB, 3),
        "steps": {cal.model: _fit_entry(cal.fit, flops_per_sample=cal.flops_per_sample)},
        "eval_steps": {cal.model: _fit_entry(cal.eval_fit)},
        "serialize_bytes_per_s": float(f"{cal.serialize_bytes_per_s:.4g}"),
        "load_bytes_per_s": float(f"{cal.load_bytes_per_s:.4g}"),
        "aggregate_bytes_per_s": float(f"{cal.aggregate_bytes_per_s:.4g}"),
        "cold_start_s": float(f"{cal.cold_start_s:.4g}"),
        "round_overhead_s": float(f"{cal.round_overhead_s:.4g}"),
        "task_overhead_s": float(f"{cal.task_overhead_s:.4g}"),
        **{
            key: float(f"{value:.4g}")
            for key, value in (
                ("request_cpu_s", cal.request_cpu_s),
                ("segment_cpu_s", cal.segment_cpu_s),
                ("persist_cpu_s", cal.persist_cpu_s),
                ("persist_io_s", cal.persist_io_s),
            )
            if value is not None
        },
    }


def _fit_entry(fit: StepFit, **extra: Any) -> dict[str, Any]:
    """A fitted step model as a profile's ``steps`` or ``eval_steps`` entry (``StepConf``)."""
    return {
        "overhead_s": float(f"{fit.model.overhead_s:.4g}"),
        "per_sample_s": float(f"{fit.model.per_sample_s:.4g}"),
        "residual_s": float(f"{fit.residual_s:.3g}"),
        **extra,
        "batch_sizes": list(fit.batch_sizes),
    }


def threads_text(n: int) -> str:
    """``1 thread``, ``4 threads``."""
    return f"{n} thread{'s' if n > 1 else ''}"


def cpu_model() -> str:
    """The CPU's model name, as /proc/cpuinfo gives it (else what ``platform`` knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
