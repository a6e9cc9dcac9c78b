"""The SimPy runtime: the transport interface over modelled links and devices.

Each task is a SimPy process on the device it targets: transfers go through the flow-level
network, compute steps queue for the device's processor and last as long as the compute model
says. ``wait`` advances the virtual clock until enough results arrived or the deadline passed.

A measured profile also charges what the device's CPU spends around a transfer: loading the
model version it downloaded (``nbytes / load_bytes_per_s``) and serializing the update it
uploads (``nbytes / serialize_bytes_per_s``), as part of its compute step between the two
transfers (the training step; a forwarder's aggregation step before its upload), and, once per
device and run, its cold start (``cold_start_s``) on its first training step. Every transfer
a device makes (its downloads and uploads: the agent makes each request) costs it
``request_cpu_s`` of its processor before the bytes move, and a server whose profile has a
``round_overhead_s`` spends it deploying each new model version before the tasks that carry it
start (once a round in synchronous rounds). All of these run at the device's speed. Spec-sheet
profiles have none of these figures and pay nothing for them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator, Mapping, Sequence
from types import MappingProxyType
from typing import Any, TypeVar

import numpy as np
import simpy

from fedsim.core.events import Event, EventKind
from fedsim.core.faults import FaultPlan, LinkChange
from fedsim.core.runtime import (
    Cost,
    FitIns,
    ForwardIns,
    NDArrays,
    RelayIns,
    SecAggIns,
    Task,
    TaskResult,
    Transport,
    Update,
    UploadDataIns,
)
from fedsim.core.secagg import SecAggAborted, SecAggDevices
from fedsim.core.topology import Topology
from fedsim.sim.compute import compute_seconds, jitter_factor, load_seconds, serialize_seconds
from fedsim.sim.network import FlowNetwork, FlowNetworkBase

T = TypeVar("T")
# The metrics of a modelled update: one shared empty mapping, not a dict per device.
_NONE: Mapping[str, float] = MappingProxyType({})
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
        faults: FaultPlan | None = None,
        secagg: SecAggDevices | None = None,
    ) -> None:
        super().__init__()
        self.topology = topology
        # The devices' side of secure aggregation: it answers SecAggIns and masks updates.
        self.secagg = secagg
        self.server = topology.server
        self.env = simpy.Environment()
        links = topology.links()
        self.network = network(
            self.env,
            capacity={k: p.bandwidth for k, p in links.items()},
            latency={k: p.latency for k, p in links.items()},
        )
        self.rng = np.random.default_rng(seed)
        self._drops = FaultPlan.dropout_draws(seed)
        self.trainer = trainer
        self.faults = faults or FaultPlan()
        self._links = links
        for change in self.faults.link_changes:
            self.env.process(self._link_change(change))
        # One compute job at a time per device: a second one queues (and that shows as waiting).
        # A device's processor exists while it computes or has work queued, so that a fleet
        # holds one only for the devices computing at the moment.
        self._processor: dict[int, simpy.Resource] = {}
        # Whether any link jitters its latency: if none does, a transfer draws nothing for it.
        self._jitter = any(p.latency_jitter > 0 for p in links.values())
        # Devices that have started training in this run: their cold start is paid.
        self._warm: set[int] = set()
        # Model versions the server has deployed: each new one costs its round overhead.
        self._deployed: set[tuple[str, int]] = set()
        self._inbox: list[TaskResult] = []
        # Succeeds once the inbox holds the results a wait asks for (_wanted); no wait, no event.
        self._arrived = self.env.event()
        self._wanted = math.inf

    def now(self) -> float:
        return self.env.now

    def submit(self, tasks: Sequence[Task]) -> None:
        for task in tasks:
            if task.device not in self.topology.devices:
                raise ValueError(f"task {task.id}: no device {task.device}")
        after = self._deploy_seconds(tasks)
        for task in tasks:
            self.env.process(self._task(task, after=after))

    def _deploy_seconds(self, tasks: Sequence[Task]) -> float:
        """The server's round overhead when ``tasks`` carry a model version it has not
        deployed yet (as the real transport deploys each version once, before posting)."""
        versions = {
            (t.ins.model.name, t.ins.model.version)
            for t in tasks
            if isinstance(t.ins, (FitIns, RelayIns))
        }
        if versions <= self._deployed:
            return 0.0
        self._deployed |= versions
        server = self.topology.devices[self.server]
        return server.hardware.round_overhead_s / server.speed

    def wait(self, *, count: int, deadline: float | None = None) -> list[TaskResult]:
        # One run to the count or the deadline: the simulation is stopped once, not at every
        # result, and the deadline is one timer, not one per result.
        passed = deadline is not None and self.env.now >= deadline
        if len(self._inbox) < count and not passed and self.env.peek() != math.inf:
            self._wanted = count
            stop = self._arrived
            if deadline is not None:
                stop = self.env.any_of([stop, self.env.timeout(deadline - self.env.now)])
            try:
                self.env.run(until=stop)
            except RuntimeError:
                if self.env.peek() != math.inf:
                    raise
                # Nothing left that could deliver a result; the event stays unused.
                self._arrived = self.env.event()
            self._wanted = math.inf
        out, self._inbox = self._inbox[:count], self._inbox[count:]
        return out

    def server_work(
        self, kind: EventKind, cost: Cost, fn: Callable[[], T] | None = None
    ) -> T | None:
        value = fn() if fn is not None else None
        done = self.env.process(self._compute(self.server, cost, kind, task=kind.value))
        self.env.run(until=done)
        return value

    def wait_online(self, devices: Sequence[int], deadline: float | None = None) -> bool:
        now = self.env.now
        back = min(
            (self.faults.next_online(d, now) for d in devices if self.faults.offline(d, now)),
            default=float("inf"),
        )
        stop = back if deadline is None else min(back, deadline)
        if not now < stop < float("inf"):
            return False  # the deadline has passed, or none is set and no device comes back
        # Tasks still running (late ones of earlier rounds) go on meanwhile.
        self.env.run(until=self.env.timeout(stop - now))
        return back <= stop

    # -- processes -------------------------------------------------------------------------

    def offline(self, device: int) -> bool:
        """Whether ``device`` is unreachable now (an outage of the fault plan)."""
        return self.faults.offline(device, self.env.now)

    def busy(self, device: int) -> bool:
        processor = self._processor.get(device)
        return processor is not None and processor.count > 0

    def _steps(self, task: Task, answer: bytes = b"") -> list[Generator[simpy.Event, Any, None]]:
        """The task's transfers and compute, in order; ``answer``: a secure aggregation
        stage's answer, whose size its upload takes."""
        ins, dev, tid = task.ins, task.device, task.id
        if isinstance(ins, UploadDataIns):
            return [self._send(dev, self.server, ins.nbytes, EventKind.DATA_UPLOAD, tid, by=dev)]
        if isinstance(ins, FitIns):
            src = self.server if ins.source is None else ins.source
            sink = self.server if ins.sink is None else ins.sink
            hw = self.topology.devices[dev].hardware
            io = load_seconds(ins.model.nbytes, hw) + serialize_seconds(ins.update_nbytes, hw)
            return [
                self._send(src, dev, ins.model.nbytes, EventKind.MODEL_DOWNLOAD, tid, by=dev),
                self._compute(dev, ins.cost(), EventKind.TRAIN, tid, extra_s=io),
                self._send(dev, sink, ins.update_nbytes, EventKind.UPDATE_UPLOAD, tid, by=dev),
            ]
        if isinstance(ins, RelayIns):
            model = ins.model.nbytes
            return [self._send(self.server, dev, model, EventKind.MODEL_DOWNLOAD, tid, by=dev)]
        if isinstance(ins, ForwardIns):
            hw = self.topology.devices[dev].hardware
            io = serialize_seconds(ins.nbytes, hw)
            return [
                self._compute(dev, ins.cost, EventKind.AGGREGATE, tid, extra_s=io),
                self._send(dev, self.server, ins.nbytes, EventKind.UPDATE_UPLOAD, tid, by=dev),
            ]
        if isinstance(ins, SecAggIns):
            steps = []
            if ins.message:
                kind = EventKind.SECAGG_DOWNLOAD
                steps.append(self._send(self.server, dev, len(ins.message), kind, tid, by=dev))
            steps.append(self._compute(dev, ins.cost, EventKind.SECAGG, tid))
            if answer:
                kind = EventKind.SECAGG_UPLOAD
                steps.append(self._send(dev, self.server, len(answer), kind, tid, by=dev))
            return steps
        raise TypeError(f"task {tid}: unknown instruction {type(ins).__name__}")

    def _task(self, task: Task, *, after: float = 0.0) -> Generator[simpy.Event, Any, None]:
        if after:
            yield self.env.timeout(after)  # the server deploying the task's model version
        started = self.env.now
        ins, dev = task.ins, task.device
        drops = isinstance(ins, FitIns) and self.faults.dropout > 0
        drops = drops and self._drops.random() < self.faults.dropout
        update = None
        answer = None
        if isinstance(ins, SecAggIns):
            # The device's answer is computed up front for its size; the steps time it.
            if self.secagg is None:
                raise ValueError(f"task {task.id}: this transport runs no secure aggregation")
            try:
                answer = self.secagg.step(dev, ins.session, ins.stage, ins.params, ins.message)
            except (ValueError, SecAggAborted) as exc:
                # The device refuses the message, as an agent reports a task that failed.
                self._deliver(
                    TaskResult(
                        task_id=task.id,
                        device=dev,
                        started=started,
                        finished=self.env.now,
                        error=str(exc),
                    )
                )
                return
        for i, step in enumerate(self._steps(task, answer or b"")):
            begin = self.env.now
            yield from step
            # An unreachable or dropped device goes silent: no result ever arrives.
            if self.faults.offline(dev, begin, self.env.now):
                return
            if isinstance(ins, FitIns) and i == 1:
                if drops:
                    return
                params, metrics = self.trainer(dev, ins) if self.trainer else (None, _NONE)
                masked = None
                if ins.secagg is not None:
                    masked, params = self._mask(dev, ins, params), None
                update = Update(
                    num_examples=ins.samples * ins.epochs,
                    nbytes=ins.update_nbytes,
                    parameters=params,
                    metrics=metrics,
                    masked=masked,
                )
        if isinstance(ins, ForwardIns):
            update = Update(num_examples=ins.num_examples, nbytes=ins.nbytes)
        result = TaskResult(
            task_id=task.id,
            device=dev,
            started=started,
            finished=self.env.now,
            update=update,
            payload=answer,
        )
        self._deliver(result)

    def _deliver(self, result: TaskResult) -> None:
        self._inbox.append(result)
        if len(self._inbox) >= self._wanted:
            self._arrived.succeed()
            self._arrived = self.env.event()

    def _mask(self, dev: int, ins: FitIns, params: NDArrays | None) -> bytes:
        """Device ``dev``'s trained ``params`` masked for secure aggregation, as its agent
        would send them."""
        if ins.secagg is None or self.secagg is None or params is None:
            raise ValueError(
                f"device {dev}: a masked update needs trained arrays and a transport that runs "
                "secure aggregation"
            )
        weight = ins.samples * ins.epochs
        return self.secagg.mask(dev, ins.secagg.session, params, weight, ins.secagg.scale)

    def _link_change(self, change: LinkChange) -> Generator[simpy.Event, Any, None]:
        owners = [k for k, p in self._links.items() if p.name == change.network]
        yield self.env.timeout(change.start)
        for k in owners:
            self.network.set_capacity(k, self._links[k].bandwidth * change.factor)
        if change.end != float("inf"):
            yield self.env.timeout(change.end - change.start)
            for k in owners:
                self.network.set_capacity(k, self._links[k].bandwidth)

    def _send(
        self, src: int, dst: int, nbytes: int, kind: EventKind, task: str, *, by: int
    ) -> Generator[simpy.Event, Any, None]:
        """``nbytes`` from ``src`` to ``dst``, a request device ``by`` makes: its processor's
        per-request cost first, then the bytes over the path."""
        start = self.env.now
        requester = self.topology.devices[by]
        if requester.hardware.request_cpu_s:
            yield self.env.timeout(requester.hardware.request_cpu_s / requester.speed)
        path = self.topology.path(src, dst)
        if self._jitter:
            jitters = [self.topology.link_profile(n).latency_jitter for n, _ in path]
            extra = sum(abs(self.rng.normal(0.0, j)) for j in jitters if j > 0)
            if extra:
                yield self.env.timeout(extra)
        yield self.network.transfer(path, nbytes, cap=self.topology.flow_cap(path))
        device = src if dst == self.server else dst
        self.events.record(
            Event(device=device, kind=kind, start=start, end=self.env.now, nbytes=nbytes, task=task)
        )

    def _compute(
        self, dev: int, cost: Cost, kind: EventKind, task: str, *, extra_s: float = 0.0
    ) -> Generator[simpy.Event, Any, None]:
        """A compute step: ``cost`` plus ``extra_s`` seconds of the device's own work
        (serialization and loading), jittered together, plus the cold start on the device's
        first training step (a one-off figure, not jittered); all of it at the device's own
        speed relative to its profile."""
        device = self.topology.devices[dev]
        hw = device.hardware
        processor = self._processor.get(dev)
        if processor is None:
            processor = self._processor[dev] = simpy.Resource(self.env, capacity=1)
        with processor.request() as turn:
            yield turn
            start = self.env.now
            cold = 0.0
            if kind is EventKind.TRAIN and dev not in self._warm:
                self._warm.add(dev)
                cold = hw.cold_start_s
            steady = compute_seconds(cost, hw) + extra_s
            seconds = steady * jitter_factor(self.rng, hw.jitter) + cold
            yield self.env.timeout(seconds / device.speed)
        if not processor.count and not processor.queue:
            del self._processor[dev]
        self.events.record(Event(device=dev, kind=kind, start=start, end=self.env.now, task=task))
