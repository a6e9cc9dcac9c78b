"""The one interface both runtimes implement: send work to devices, get results back.

The coordinator and the scenarios are written against :class:`Transport` only. The simulator
moves a virtual clock through modelled transfers and compute; the real runtime sends the same
tasks over HTTP and reads the wall clock. Nothing in here may import a runtime: adapters live in
``fedsim.sim`` and ``fedsim.real``.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from fedsim.core.events import EventKind, EventLog
from fedsim.core.secagg import SecAggParams

NDArrays = dict[str, np.ndarray]
T = TypeVar("T")


@dataclass(frozen=True, kw_only=True, slots=True)
class ModelRef:
    """A published model version as devices see it: what to download and how big it is."""

    name: str
    version: int
    nbytes: int


@dataclass(frozen=True, kw_only=True, slots=True)
class Cost:
    """Work done on one device: arithmetic, memory traffic, bytes written to disk.

    Training also says what it trains: ``model`` (its name), ``samples`` per epoch in batches
    of ``batch_size``, for ``epochs`` epochs. A device with a measured step model for that model
    is timed by it; every other device by the FLOPs. Other work leaves them unset.
    ``evaluation`` says the work is an evaluation of the model (forward passes over ``samples``
    in batches of ``batch_size``, once): a device with a measured evaluation step model for
    ``model`` is timed by that one instead, every other device by the FLOPs.
    ``post_flops`` is work after the training steps that no step model covers (local DP's
    clipping and noise), timed by FLOPs on every device.
    """

    flops: float = 0.0
    post_flops: float = 0.0
    memory_bytes: float = 0.0
    disk_bytes: float = 0.0
    model: str = ""
    samples: int = 0
    batch_size: int = 0
    epochs: int = 1
    evaluation: bool = False


@dataclass(frozen=True, kw_only=True, slots=True)
class SecAggFit:
    """A fit task's part in secure aggregation: the device uploads its update masked in
    ``session`` (``nbytes``: ``bits`` per value) instead of the update, at fixed-point
    ``scale``."""

    session: str
    scale: float
    nbytes: int


@dataclass(frozen=True, kw_only=True, slots=True)
class FitIns:
    """Train ``model`` on the device's local data and send the update back.

    ``samples`` is how many samples the device processes per epoch (its share of the round's
    work). The model comes from ``source`` and the update goes to ``sink``: the server when
    None, a group aggregator in hierarchical rounds.
    """

    model: ModelRef
    samples: int
    epochs: int
    batch_size: int
    flops: float
    post_flops: float = 0.0  # after training, timed by FLOPs (local DP's noise)
    update_nbytes: int
    parameters: NDArrays | None = None
    config: Mapping[str, Any] = field(default_factory=dict)
    source: int | None = None
    sink: int | None = None
    secagg: SecAggFit | None = None

    def cost(self) -> Cost:
        """The training this instruction asks for, as the compute model times it."""
        return Cost(
            flops=self.flops,
            post_flops=self.post_flops,
            model=self.model.name,
            samples=self.samples,
            batch_size=self.batch_size,
            epochs=self.epochs,
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class RelayIns:
    """Fetch ``model`` from the server and hold it for the devices of the group to fetch.

    ``parameters`` are the model's arrays when training runs for real: a runtime that ships
    bytes (the real one) publishes them for the aggregator to fetch.
    """

    model: ModelRef
    parameters: NDArrays | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class ForwardIns:
    """Combine the updates gathered here (``cost``) and send the result to the server."""

    cost: Cost
    nbytes: int
    num_examples: int


@dataclass(frozen=True, kw_only=True, slots=True)
class UploadDataIns:
    """Ship ``samples`` training samples (``nbytes`` in all) to the server."""

    samples: int
    nbytes: int


@dataclass(frozen=True, kw_only=True, slots=True)
class SecAggIns:
    """One message round of secure aggregation on a device (``fedsim.core.secagg``): fetch
    the server's ``message``, answer it with the device's side of the protocol
    (:class:`~fedsim.core.secagg.SecAggDevices`, ``cost``: key agreements, sharing, masks),
    send the answer back (the result's ``payload``); an empty side is not a transfer.
    ``stage`` names the round, ``session`` the protocol run it belongs to."""

    session: str
    stage: str
    params: SecAggParams
    message: bytes
    cost: Cost


Instruction = FitIns | UploadDataIns | RelayIns | ForwardIns | SecAggIns


@dataclass(frozen=True, kw_only=True, slots=True)
class Task:
    """One piece of work for one device."""

    id: str
    device: int
    ins: Instruction


@dataclass(frozen=True, kw_only=True, slots=True)
class Update:
    """What a device trained: example count, and the arrays when training ran for real.

    A timing-only workload (a large model whose training is modelled, not run) carries no
    arrays; its update still has a size on the wire and an example count to weight by.
    """

    num_examples: int
    nbytes: int
    parameters: NDArrays | None = None
    metrics: Mapping[str, float] = field(default_factory=dict)
    masked: bytes | None = None  # under secure aggregation: the masked input, not the arrays


@dataclass(frozen=True, kw_only=True, slots=True)
class TaskResult:
    """A task's outcome, stamped with the runtime's clock (seconds)."""

    task_id: str
    device: int
    started: float
    finished: float
    update: Update | None = None
    error: str | None = None
    payload: bytes | None = None  # a secure aggregation stage's answer
    # Processor seconds the device spent on the task, of which training: the agent's own
    # count in a measured run (the task, and keeping and sending the previous result; None
    # where it sent none), the work charged in a simulated one (the task, its result's).
    cpu_s: float | None = None
    train_cpu_s: float | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class Transport(abc.ABC):
    """Sends tasks to devices and collects their results within a deadline.

    ``submit`` starts tasks without waiting; ``wait`` returns results as they arrive. Work the
    server does itself goes through ``server_work``: the simulator charges its modelled cost to
    the virtual clock, the real runtime runs it and measures it. Every transfer and compute
    step is recorded in ``events``, in seconds of the transport's clock.
    """

    def __init__(self) -> None:
        self.events = EventLog()

    @abc.abstractmethod
    def now(self) -> float:
        """The runtime's clock in seconds."""

    @abc.abstractmethod
    def submit(self, tasks: Sequence[Task]) -> None:
        """Start ``tasks``; their results become available to :meth:`wait`."""

    @abc.abstractmethod
    def wait(self, *, count: int, deadline: float | None = None) -> list[TaskResult]:
        """Block until ``count`` results are available or the clock reaches ``deadline``.

        Returns the results that arrived (at most ``count``, in arrival order); results that
        arrive later stay queued for the next call.
        """

    @abc.abstractmethod
    def server_work(
        self, kind: EventKind, cost: Cost, fn: Callable[[], T] | None = None
    ) -> T | None:
        """Do work on the server: returns ``fn()``, after the time the work takes."""

    def wait_online(self, devices: Sequence[int], deadline: float | None = None) -> bool:
        """Let the clock run until one of ``devices`` that is offline now comes back online,
        or until ``deadline``; returns whether one came back.

        Rounds call it when they find no device online. A runtime that cannot tell when an
        offline device returns does not wait and returns False: this default.
        """
        return False

    def run(self, tasks: Sequence[Task], *, deadline: float | None = None) -> list[TaskResult]:
        """Submit ``tasks`` and wait for all of them (or the deadline)."""
        self.submit(tasks)
        return self.wait(count=len(tasks), deadline=deadline)
