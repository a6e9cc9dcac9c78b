"""The SimPy runtime: the transport interface over modelled links and devices.

Each task is a SimPy process on the device it targets: transfers go through the flow-level
network, compute steps queue for the device's processor and last as long as the compute model
says. ``wait`` advances the virtual clock until enough results arrived or the deadline passed.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from typing import Any, TypeVar

import numpy as np
import simpy

from fedsim.core.events import Event, EventKind
from fedsim.core.runtime import (
    Cost,
    FitIns,
    NDArrays,
    Task,
    TaskResult,
    Transport,
    Update,
    UploadDataIns,
)
from fedsim.core.topology import Topology
from fedsim.sim.compute import compute_seconds, jitter_factor
from fedsim.sim.network import FlowNetwork, FlowNetworkBase

T = TypeVar("T")
# Trains a FitIns for real on a device (the simulator's virtual time is modelled regardless).
LocalTrainer = Callable[[int, FitIns], tuple[NDArrays, dict[str, float]]]


class SimTransport(Transport):
    """A simulated device topology behind the transport interface."""

    def __init__(
        self,
        topology: Topology,
        *,
        seed: np.random.SeedSequence | int = 0,
        trainer: LocalTrainer | None = None,
        network: type[FlowNetworkBase] = FlowNetwork,
    ) -> None:
        super().__init__()
        self.topology = topology
        self.server = topology.server
        self.env = simpy.Environment()
        links = topology.links()
        self.network = network(
            self.env,
            capacity={k: p.bandwidth for k, p in links.items()},
            latency={k: p.latency for k, p in links.items()},
        )
        self.rng = np.random.default_rng(seed)
        self.trainer = trainer
        # One compute job at a time per device: a second one queues (and that shows as waiting).
        self._processor = {dev: simpy.Resource(self.env, capacity=1) for dev in topology.devices}
        self._inbox: list[TaskResult] = []
        self._arrived = self.env.event()

    def now(self) -> float:
        return self.env.now

    def submit(self, tasks: Sequence[Task]) -> None:
        for task in tasks:
            if task.device not in self.topology.devices:
                raise ValueError(f"task {task.id}: no device {task.device}")
            self.env.process(self._task(task))

    def wait(self, *, count: int, deadline: float | None = None) -> list[TaskResult]:
        while len(self._inbox) < count:
            if deadline is not None and self.env.now >= deadline:
                break
            if self.env.peek() == float("inf"):
                break  # nothing left that could deliver a result
            stops = [self._arrived]
            if deadline is not None:
                stops.append(self.env.timeout(deadline - self.env.now))
            self.env.run(until=self.env.any_of(stops))
        out, self._inbox = self._inbox[:count], self._inbox[count:]
        return out

    def server_work(
        self, kind: EventKind, cost: Cost, fn: Callable[[], T] | None = None
    ) -> T | None:
        value = fn() if fn is not None else None
        done = self.env.process(self._compute(self.server, cost, kind, task=kind.value))
        self.env.run(until=done)
        return value

    # -- processes -------------------------------------------------------------------------

    def _task(self, task: Task) -> Generator[simpy.Event, Any, None]:
        started = self.env.now
        ins, dev = task.ins, task.device
        update = None
        if isinstance(ins, UploadDataIns):
            yield from self._send(dev, self.server, ins.nbytes, EventKind.DATA_UPLOAD, task.id)
        elif isinstance(ins, FitIns):
            yield from self._send(
                self.server, dev, ins.model.nbytes, EventKind.MODEL_DOWNLOAD, task.id
            )
            yield from self._compute(dev, Cost(flops=ins.flops), EventKind.TRAIN, task.id)
            params, metrics = self.trainer(dev, ins) if self.trainer else (None, {})
            yield from self._send(
                dev, self.server, ins.update_nbytes, EventKind.UPDATE_UPLOAD, task.id
            )
            update = Update(
                num_examples=ins.samples,
                nbytes=ins.update_nbytes,
                parameters=params,
                metrics=metrics,
            )
        else:
            raise TypeError(f"task {task.id}: unknown instruction {type(ins).__name__}")
        self._inbox.append(
            TaskResult(
                task_id=task.id, device=dev, started=started, finished=self.env.now, update=update
            )
        )
        self._arrived.succeed()
        self._arrived = self.env.event()

    def _send(
        self, src: int, dst: int, nbytes: int, kind: EventKind, task: str
    ) -> Generator[simpy.Event, Any, None]:
        start = self.env.now
        path = self.topology.path(src, dst)
        extra = sum(
            abs(self.rng.normal(0.0, self.topology.link_profile(n).latency_jitter))
            for n, _ in path
            if self.topology.link_profile(n).latency_jitter > 0
        )
        if extra:
            yield self.env.timeout(extra)
        yield self.network.transfer(path, nbytes, cap=self.topology.flow_cap(path))
        device = dst if src == self.server else src
        self.events.record(
            Event(device=device, kind=kind, start=start, end=self.env.now, nbytes=nbytes, task=task)
        )

    def _compute(
        self, dev: int, cost: Cost, kind: EventKind, task: str
    ) -> Generator[simpy.Event, Any, None]:
        hw = self.topology.devices[dev].hardware
        with self._processor[dev].request() as turn:
            yield turn
            start = self.env.now
            yield self.env.timeout(compute_seconds(cost, hw) * jitter_factor(self.rng, hw.jitter))
        self.events.record(Event(device=dev, kind=kind, start=start, end=self.env.now, task=task))
