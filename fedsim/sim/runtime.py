"""The SimPy runtime: the transport interface over modelled links and devices.

Each task runs on the device it targets, as a SimPy process or, a plain training task, as
callbacks (``_FitRun``) that its transfers and SimPy timers call: transfers go through the
flow-level network, compute steps queue for the device's processor and last as long as the
compute model says. ``wait`` advances the virtual clock until enough results arrived or the
deadline passed.

A measured profile also charges what the device's CPU spends around a transfer: each TCP
segment of its body (``segment_cpu_s``), as processor work done from the moment the bytes
start to arrive (the transfer ends when both the bytes and that work are done); loading the
model version it downloaded (``nbytes / load_bytes_per_s``) and serializing the update it
uploads (``nbytes / serialize_bytes_per_s``), as part of its compute step between the two
transfers (the training step; a forwarder's aggregation step before its upload), and, once per
device and run, its cold start (``cold_start_s``) on its first training step, and in every
training task what the trainer does beyond the steps (``task_overhead_s``). Every transfer
a device makes (its downloads and uploads: the agent makes each request) costs it
``request_cpu_s`` of its processor before the bytes move; before uploading a trained update
(one that carries parameters, which the agent keeps on disk before sending it) it also pays
``persist_cpu_s`` of its processor and ``persist_io_s`` waiting for its disk, both part of
the upload as the measured run times it; and a server whose profile has a
``round_overhead_s`` spends it deploying each new model version before the tasks that carry it
start (once a round in synchronous rounds). All of these but the disk's wait run at the
device's speed. Spec-sheet profiles have none of these figures and pay nothing for them.

A transfer costs its path's latency once. With ``polling`` (the prediction of a measured run),
latency follows the protocol fedsim's agents speak instead, in which every exchange is a
request and its response, each one way over the links: a device takes a task by polling for
it, so the task reaches it the server-to-device latency after the device's poll has reached
the server (a poll is sent again when the previous task's result has been answered: the round
trip after that result arrived); a download is its request's one-way latency before the bytes,
which flow after their own path's latency, as an upload's bytes do. With no latency on the
links, none of this costs anything.

A device with a ``cpu_quota`` runs every piece of its processor's work through its
:class:`~fedsim.sim.compute.QuotaClock`: at a whole core's speed while the CFS period has
quota left, waiting for the next period when it has not; where the quota names its host's
cores, each step of that work also waits for one of them (first come, first served), as the
agents of an emulation share its host.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator, Mapping, Sequence
from types import MappingProxyType
from typing import Any, TypeVar

import numpy as np
import simpy
from simpy.events import NORMAL, URGENT

from fedsim.core import collector
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
from fedsim.core.topology import SEGMENT_BYTES, Topology
from fedsim.sim.compute import (
    QuotaClock,
    compute_seconds,
    jitter_factor,
    load_seconds,
    serialize_seconds,
)
from fedsim.sim.network import FlowNetwork, FlowNetworkBase

T = TypeVar("T")
_EPS = 1e-12  # seconds of work too few to run (a rounding error)
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
        polling: bool = False,
    ) -> None:
        super().__init__()
        self.polling = polling  # latency as fedsim's agents pay it: see the module's docstring
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
        for change in self.faults.link_changes:
            self.env.process(self._link_change(change))
        # One compute job at a time per device: a second one queues (and that shows as waiting).
        # A device is in here while it computes, with the turns of the jobs queued behind it
        # (first come, first served), so that a fleet holds an entry only for the devices
        # computing at the moment. Not a simpy.Resource each: a resource refers to itself, so
        # every one left the cyclic garbage collector a cycle to find. None while nothing
        # waits: most devices compute alone, and an empty queue costs more than a device's
        # share of the round's memory.
        self._processor: dict[int, list[simpy.Event] | None] = {}
        # The CFS state of each device with a cpu_quota, made when it first works, and the
        # cores of the host such devices share (by their count), when their quota says.
        self._quota: dict[int, QuotaClock] = {}
        self._host_cores: dict[int, simpy.Resource] = {}
        # Whether any link jitters its latency: if none does, a transfer draws nothing for it.
        self._jitter = any(p.latency_jitter > 0 for p in links.values())
        # Whether any link loses packets: if none does, no flow has a loss-bound cap to work out.
        self._lossy = any(p.loss > 0 for p in links.values())
        # The processor seconds charged to each task under way (all, training), from its
        # arrival to its result's sending, as an agent counts them (TaskResult.cpu_s).
        self._cpu: dict[str, list[float]] = {}
        # Devices that have started training in this run: their cold start is paid. Only
        # devices whose profile has a cold start are kept (a spec-sheet fleet keeps none).
        self._warm: set[int] = set()
        # When each device's poll for its next task reaches the server (absent: waiting
        # there already), and each device's latency to the server and back (made when needed).
        self._polling: dict[int, float] = {}
        self._to_server: dict[int, tuple[float, float]] = {}
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
        with collector.paused():
            # Consecutive tasks that run as a _FitRun start together from one event, where a
            # SimPy process each would start from an event of its own; the others stay
            # processes, so every task still starts in the order submitted.
            batch: list[Task] = []
            for task in tasks:
                if self._plain_fit(task):
                    batch.append(task)
                    continue
                if batch:
                    self._start_fits(batch, after)
                    batch = []
                self.env.process(self._task(task, after=after))
            if batch:
                self._start_fits(batch, after)

    def _plain_fit(self, task: Task) -> bool:
        """Whether ``task`` is a training task that a :class:`_FitRun` runs: its device pays
        nothing per request, per segment or for keeping its update (a spec-sheet profile),
        works under no CPU quota, no link jitters its latency, and latency is not paid per
        poll (``polling``, the prediction of a measured run)."""
        if type(task.ins) is not FitIns or self._jitter or self.polling:
            return False
        device = self.topology.devices[task.device]
        hw = device.hardware
        return (
            device.cpu_quota is None
            and not hw.request_cpu_s
            and not hw.segment_cpu_s
            and not hw.persist_cpu_s
            and not hw.persist_io_s
        )

    def _start_fits(self, tasks: list[Task], after: float) -> None:
        """Start ``tasks`` as :class:`_FitRun` s from one event of SimPy's process-start
        priority, after ``after`` seconds of deployment, in order: as a process each would
        have started from an event of its own, one after the other."""
        start = simpy.Event(self.env)
        # Triggered as SimPy triggers a process's start (simpy.events.Initialize).
        start._ok = True
        start._value = None
        self.env.schedule(start, URGENT)

        def begin(_: simpy.Event) -> None:
            for task in tasks:
                _FitRun(self, task).download()

        if after:
            # One timeout for all, as their own timeouts would fire one after the other.
            start.callbacks.append(lambda _: self.env.timeout(after).callbacks.append(begin))
        else:
            start.callbacks.append(begin)

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
                self._run(stop)
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
        self._run(done)
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
        self._run(self.env.timeout(stop - now))
        return back <= stop

    def _run(self, until: simpy.Event) -> None:
        with collector.paused():
            self.env.run(until=until)

    # -- processes -------------------------------------------------------------------------

    def offline(self, device: int) -> bool:
        """Whether ``device`` is unreachable now (an outage of the fault plan)."""
        return self.faults.offline(device, self.env.now)

    def busy(self, device: int) -> bool:
        return device in self._processor

    def _step(
        self, task: Task, i: int, answer: bytes = b"", since: float | None = None
    ) -> Generator[simpy.Event, Any, None] | None:
        """The task's step ``i`` (0, 1, ...), None past its last. Each is made when the one
        before it is done, so a round holds one step per device, not all of them.
        ``answer``: a secure aggregation stage's answer, whose size its upload takes;
        ``since``: when a transfer step's event starts, if before the step does."""
        ins, dev, tid = task.ins, task.device, task.id
        if isinstance(ins, UploadDataIns):
            if i == 0:
                return self._send(
                    dev, self.server, ins.nbytes, EventKind.DATA_UPLOAD, tid, by=dev, since=since
                )
        elif isinstance(ins, FitIns):
            if i == 0:
                src = self.server if ins.source is None else ins.source
                return self._send(
                    src, dev, ins.model.nbytes, EventKind.MODEL_DOWNLOAD, tid, by=dev, since=since
                )
            if i == 1:
                hw = self.topology.devices[dev].hardware
                io = load_seconds(ins.model.nbytes, hw) + serialize_seconds(ins.update_nbytes, hw)
                return self._compute(dev, ins.cost(), EventKind.TRAIN, tid, extra_s=io)
            if i == 2:
                sink = self.server if ins.sink is None else ins.sink
                return self._send(
                    dev,
                    sink,
                    ins.update_nbytes,
                    EventKind.UPDATE_UPLOAD,
                    tid,
                    by=dev,
                    keep=ins.parameters is not None,
                    since=since,
                )
        elif isinstance(ins, RelayIns):
            if i == 0:
                model = ins.model.nbytes
                return self._send(
                    self.server, dev, model, EventKind.MODEL_DOWNLOAD, tid, by=dev, since=since
                )
        elif isinstance(ins, ForwardIns):
            if i == 0:
                io = serialize_seconds(ins.nbytes, self.topology.devices[dev].hardware)
                return self._compute(dev, ins.cost, EventKind.AGGREGATE, tid, extra_s=io)
            if i == 1:
                return self._send(
                    dev, self.server, ins.nbytes, EventKind.UPDATE_UPLOAD, tid, by=dev, since=since
                )
        elif isinstance(ins, SecAggIns):
            # Steps: the download (when the server sent something), the compute, the upload
            # (when the device answers).
            steps = ["down"] if ins.message else []
            steps += ["compute", "up"] if answer else ["compute"]
            if i < len(steps):
                if steps[i] == "down":
                    kind = EventKind.SECAGG_DOWNLOAD
                    return self._send(
                        self.server, dev, len(ins.message), kind, tid, by=dev, since=since
                    )
                if steps[i] == "compute":
                    return self._compute(dev, ins.cost, EventKind.SECAGG, tid)
                kind = EventKind.SECAGG_UPLOAD
                return self._send(dev, self.server, len(answer), kind, tid, by=dev, since=since)
        else:
            raise TypeError(f"task {tid}: unknown instruction {type(ins).__name__}")
        return None

    def _task(self, task: Task, *, after: float = 0.0) -> Generator[simpy.Event, Any, None]:
        if after:
            yield self.env.timeout(after)  # the server deploying the task's model version
        started = self.env.now
        ins, dev = task.ins, task.device
        self._cpu[task.id] = [0.0, 0.0]
        handed: float | None = None
        up, down = self._latency_to_server(dev) if self.polling else (0.0, 0.0)
        if up or down:
            # The task waits for the device's poll, then goes back to it as the poll's answer.
            polled = self._polling.get(dev, 0.0)
            if polled > self.env.now:
                yield self.env.timeout(polled - self.env.now)
            if down:
                # The answer's trip is the first step's (a download's, an upload's): its event
                # starts when the server handed the task out, as a measured run lays out the
                # agent's steps from then.
                handed = self.env.now
                yield self.env.timeout(down)
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
                self._cpu.pop(task.id, None)
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
        i = 0
        while (step := self._step(task, i, answer or b"", handed if i == 0 else None)) is not None:
            begin = self.env.now
            yield from step
            # An unreachable or dropped device goes silent: no result ever arrives.
            if self.faults.offline(dev, begin, self.env.now):
                self._cpu.pop(task.id, None)
                return
            if isinstance(ins, FitIns) and i == 1:
                if drops:
                    self._cpu.pop(task.id, None)
                    if up:  # the agent sends nothing and polls again at once
                        self._polling[dev] = self.env.now + up
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
            i += 1
        if isinstance(ins, ForwardIns):
            update = Update(num_examples=ins.num_examples, nbytes=ins.nbytes)
        cpu_s, train_cpu_s = self._cpu.pop(task.id)
        result = TaskResult(
            task_id=task.id,
            device=dev,
            started=started,
            finished=self.env.now,
            update=update,
            payload=answer,
            cpu_s=cpu_s,
            train_cpu_s=train_cpu_s,
        )
        if up or down:
            # The result's answer goes back to the device, whose next poll then comes here.
            self._polling[dev] = self.env.now + down + up
        self._deliver(result)

    def _latency_to_server(self, dev: int) -> tuple[float, float]:
        """Device ``dev``'s one-way latency to the server and back (0, 0 for the server)."""
        known = self._to_server.get(dev)
        if known is None:
            if dev == self.server:
                known = (0.0, 0.0)
            else:
                topo = self.topology
                known = (
                    topo.latency(topo.path(dev, self.server)),
                    topo.latency(topo.path(self.server, dev)),
                )
            self._to_server[dev] = known
        return known

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
        # The links' profiles are looked up again here rather than kept from the start: a
        # fleet has two directed links a device, and changes are rare.
        owners = {k: p for k, p in self.topology.links().items() if p.name == change.network}
        yield self.env.timeout(change.start)
        for k, profile in owners.items():
            self.network.set_capacity(k, profile.bandwidth * change.factor)
        if change.end != float("inf"):
            yield self.env.timeout(change.end - change.start)
            for k, profile in owners.items():
                self.network.set_capacity(k, profile.bandwidth)

    def _send(
        self,
        src: int,
        dst: int,
        nbytes: int,
        kind: EventKind,
        task: str,
        *,
        by: int,
        keep: bool = False,
        since: float | None = None,
    ) -> Generator[simpy.Event, Any, None]:
        """``nbytes`` from ``src`` to ``dst``, a request device ``by`` makes: keeping the body
        on its disk first when ``keep`` (a trained update), its processor's per-request cost,
        then the bytes over the path. Its event starts at ``since`` if given (earlier)."""
        start = self.env.now if since is None else since
        requester = self.topology.devices[by]
        hw = requester.hardware
        # Guarded: a fleet of spec-sheet devices pays nothing here, not even a generator.
        if keep and hw.persist_cpu_s:
            yield from self._busy(by, hw.persist_cpu_s / requester.speed)
            self._charge(task, by, hw.persist_cpu_s / requester.speed)
        if keep and hw.persist_io_s:
            yield self.env.timeout(hw.persist_io_s)
        if hw.request_cpu_s:
            yield from self._busy(by, hw.request_cpu_s / requester.speed)
            self._charge(task, by, hw.request_cpu_s / requester.speed)
        if self.polling and by == dst and by != src:
            # A download: the request goes to the source first.
            asked = self.topology.latency(self.topology.path(by, src))
            if asked:
                yield self.env.timeout(asked)
        path = self.topology.path(src, dst)
        segments = 0.0
        if hw.segment_cpu_s and nbytes:
            segments = hw.segment_cpu_s * math.ceil(nbytes / SEGMENT_BYTES) / requester.speed
            self._charge(task, by, segments)
        if self._jitter:
            jitters = [self.topology.link_profile(n).latency_jitter for n, _ in path]
            extra = sum(abs(self.rng.normal(0.0, j)) for j in jitters if j > 0)
            if extra:
                yield self.env.timeout(extra)
        cap = self.topology.flow_cap(path) if self._lossy else math.inf
        flow = self.network.transfer(path, nbytes, cap=cap)
        if segments:
            # The device's processor takes each segment as it comes: both end the transfer.
            work = self._busy(by, segments)
            latency = self.topology.latency(path)
            yield self.env.all_of([flow, self.env.process(self._after(latency, work))])
        else:
            yield flow
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
        turn = self._claim(dev)
        if turn is not None:
            yield turn
        try:
            start = self.env.now
            seconds, steps = self._work_seconds(dev, cost, kind, extra_s)
            self._charge(task, dev, seconds / device.speed)
            if kind is EventKind.TRAIN:
                self._charge(task, dev, steps / device.speed, train=True)
            if device.cpu_quota is None:
                yield self.env.timeout(seconds / device.speed)
            else:
                yield from self._busy(dev, seconds / device.speed)
        finally:  # the next job's turn, also when this process is stopped midway
            self._release(dev)
        self.events.record(Event(device=dev, kind=kind, start=start, end=self.env.now, task=task))

    def _work_seconds(
        self, dev: int, cost: Cost, kind: EventKind, extra_s: float
    ) -> tuple[float, float]:
        """Seconds at ``dev``'s profile speed of a compute step (``cost``, ``extra_s`` of its
        own work, a training task's overhead, jittered together, and the device's cold start
        on its first training step), and of its training steps alone (jittered alike). Draws
        the step's jitter; marks the device warm."""
        hw = self.topology.devices[dev].hardware
        cold = 0.0
        if kind is EventKind.TRAIN and hw.cold_start_s and dev not in self._warm:
            self._warm.add(dev)
            cold = hw.cold_start_s
        steps = compute_seconds(cost, hw)
        steady = steps + extra_s
        if kind is EventKind.TRAIN:
            steady += hw.task_overhead_s
        jitter = jitter_factor(self.rng, hw.jitter)
        return steady * jitter + cold, steps * jitter

    def _claim(self, dev: int) -> simpy.Event | None:
        """Device ``dev``'s processor for the caller: None when it was free (it is the caller's
        now), else the event of the caller's turn, after the jobs queued before it."""
        if dev not in self._processor:
            self._processor[dev] = None
            return None
        turn = self.env.event()
        waiting = self._processor[dev]
        if waiting is None:
            self._processor[dev] = [turn]
        else:
            waiting.append(turn)
        return turn

    def _release(self, dev: int) -> None:
        """The end of a job on ``dev``'s processor: the next queued job's turn, or the
        processor free (no entry: an idle device holds nothing)."""
        waiting = self._processor[dev]
        if waiting:
            waiting.pop(0).succeed()
        else:
            del self._processor[dev]

    def _charge(self, task: str, dev: int, seconds: float, *, train: bool = False) -> None:
        """Count ``seconds`` of device ``dev``'s work (at its average speed) as the processor
        seconds of ``task`` (of its training, with ``train``): under a quota, the work at a
        whole core's speed that takes that long."""
        spent = self._cpu.get(task)
        if spent is None:  # the server's own work, or a task no longer under way
            return
        quota = self.topology.devices[dev].cpu_quota
        spent[1 if train else 0] += seconds * (1.0 if quota is None else quota.cores)

    def _after(
        self, delay: float, work: Generator[simpy.Event, Any, None]
    ) -> Generator[simpy.Event, Any, None]:
        """``work``, ``delay`` seconds from now."""
        if delay:
            yield self.env.timeout(delay)
        yield from work

    def _busy(self, dev: int, seconds: float) -> Generator[simpy.Event, Any, None]:
        """``seconds`` of device ``dev``'s processor at its average speed: as long as that,
        or, under a CFS quota, as long as its :class:`QuotaClock` says (the same work, at a
        whole core's speed, in the quota's periods)."""
        quota = self.topology.devices[dev].cpu_quota
        if quota is None:
            if seconds:
                yield self.env.timeout(seconds)
            return
        clock = self._quota.get(dev)
        if clock is None:
            clock = self._quota[dev] = QuotaClock(quota)
        work = seconds * quota.cores
        if quota.host_cores is None:
            end = clock.run(self.env.now, work)
            if end > self.env.now:
                yield self.env.timeout(end - self.env.now)
            return
        host = self._host_cores.get(quota.host_cores)
        if host is None:
            host = self._host_cores[quota.host_cores] = simpy.Resource(
                self.env, capacity=quota.host_cores
            )
        # Step by step: a core of the host while the period has quota, none while throttled.
        while work > _EPS:
            with host.request() as core:
                yield core
                room = clock.room(self.env.now)
                if room > _EPS:
                    ran = min(room, work)
                    clock.spend(self.env.now, ran)
                    yield self.env.timeout(ran)
                    work -= ran
                    continue
            yield self.env.timeout(clock.next_period(self.env.now) - self.env.now)


# What a _FitRun does next: one of its methods, called with the event that ended the wait
# (None when its transfer called it back).
_Step = Callable[["_FitRun", simpy.Event | None], None]


def _end(run: _FitRun) -> None:
    """What SimPy calls when a run's own wait (its training) ends: its next step."""
    run.step(run, None)


# The callbacks of every run's own wait: one list, which SimPy reads and never changes.
_ENDS: list[Callable[[_FitRun], None]] = [_end]


class _FitRun:
    """A training task (download, training, upload) driven by callbacks rather than as a
    SimPy process: the same events, at the same times, as :meth:`SimTransport._task` makes
    them for a :class:`FitIns`, without a process, its start and end events and the generators
    of its steps (about 0.9 KB a device during a round at scale, and a fifth of the round's
    SimPy events). Its transfers call it back from the network's wake-up
    (:meth:`FlowNetworkBase.send`) rather than through an event each (two SimPy events a
    device fewer, and about 0.2 KB a device in flight); so where another event falls on the
    very instant a transfer ends, the run goes first, where a process would go after the
    events queued before its transfer's. ``tests/sim/test_runtime.py`` holds the two to the
    same results and events in the same order. Only for the tasks
    :meth:`SimTransport._plain_fit` passes: no request or persistence cost, no CPU quota, no
    latency jitter."""

    __slots__ = (
        "_ok",
        "begin",
        "callbacks",
        "cpu",
        "drops",
        "ins",
        "start",
        "started",
        "step",
        "task",
        "train_cpu",
        "transport",
        "update",
    )

    def __init__(self, transport: SimTransport, task: Task) -> None:
        assert isinstance(task.ins, FitIns)
        self.transport = transport
        self.task = task
        self.ins: FitIns = task.ins
        # begin: when the current step began (its offline check's start); start: when the
        # training began, once the processor was free.
        self.start = 0.0
        self.started = self.begin = transport.env.now
        faults = transport.faults
        self.drops = faults.dropout > 0 and transport._drops.random() < faults.dropout
        self.update: Update | None = None
        # The processor seconds of the task and of its training steps (TaskResult.cpu_s).
        self.cpu = self.train_cpu = 0.0
        # What to do when the event it waits for is processed: a function of the class, which
        # __call__ applies. The run itself is the event's callback, not a bound method made
        # per wait (64 bytes each, a device's while it waits).
        self.step: _Step = _FitRun._downloaded
        # While it trains the run is itself the event in SimPy's queue, as a Timeout would be
        # (what Environment.step reads of an event: callbacks, then _ok): no Timeout, its
        # attributes and its list of callbacks a device.
        self.callbacks: list[Callable[[_FitRun], None]] | None = None
        self._ok = True

    def __call__(self, event: simpy.Event | None) -> None:
        self.step(self, event)

    def _wait(self, event: simpy.Event, step: _Step) -> None:
        self.step = step
        event.callbacks.append(self)

    def _send(self, src: int, dst: int, nbytes: int, then: _Step) -> None:
        t = self.transport
        self.begin = t.env.now
        path = t.topology.path(src, dst)
        cap = t.topology.flow_cap(path) if t._lossy else math.inf
        # The network calls the run back itself when the transfer ends (no event of its own).
        self.step = then
        t.network.send(path, nbytes, self, cap=cap)

    def _record(self, kind: EventKind, src: int, dst: int, nbytes: int) -> None:
        t = self.transport
        device = src if dst == t.server else dst
        t.events.add(device, kind, self.begin, t.env.now, nbytes, self.task.id)

    def _gone(self) -> bool:
        # An unreachable device goes silent: no result ever arrives.
        t = self.transport
        return t.faults.offline(self.task.device, self.begin, t.env.now)

    def download(self) -> None:
        ins = self.ins
        src = self.transport.server if ins.source is None else ins.source
        self._send(src, self.task.device, ins.model.nbytes, _FitRun._downloaded)

    def _downloaded(self, _: simpy.Event | None) -> None:
        ins, dev = self.ins, self.task.device
        src = self.transport.server if ins.source is None else ins.source
        self._record(EventKind.MODEL_DOWNLOAD, src, dev, ins.model.nbytes)
        if self._gone():
            return
        t = self.transport
        self.begin = t.env.now
        turn = t._claim(dev)
        if turn is None:
            self._train()
        else:
            self._wait(turn, _FitRun._turn)

    def _turn(self, _: simpy.Event | None) -> None:
        self._train()

    def _train(self) -> None:
        """The training step, once the device's processor is this task's (as ``_compute``)."""
        t = self.transport
        ins, dev = self.ins, self.task.device
        device = t.topology.devices[dev]
        hw = device.hardware
        self.start = t.env.now
        io = load_seconds(ins.model.nbytes, hw) + serialize_seconds(ins.update_nbytes, hw)
        seconds, steps = t._work_seconds(dev, ins.cost(), EventKind.TRAIN, io)
        # The processor seconds charged, as _compute charges them (no quota here).
        self.cpu = seconds / device.speed
        self.train_cpu = steps / device.speed
        self.step = _FitRun._trained
        self.callbacks = _ENDS
        t.env.schedule(self, NORMAL, self.cpu)  # type: ignore[arg-type]  # the run is the event

    def _trained(self, _: simpy.Event | None) -> None:
        t = self.transport
        ins, dev = self.ins, self.task.device
        t._release(dev)
        t.events.add(dev, EventKind.TRAIN, self.start, t.env.now, 0, self.task.id)
        if self._gone() or self.drops:
            return
        params, metrics = t.trainer(dev, ins) if t.trainer else (None, _NONE)
        masked = None
        if ins.secagg is not None:
            masked, params = t._mask(dev, ins, params), None
        self.update = Update(
            num_examples=ins.samples * ins.epochs,
            nbytes=ins.update_nbytes,
            parameters=params,
            metrics=metrics,
            masked=masked,
        )
        sink = t.server if ins.sink is None else ins.sink
        self._send(dev, sink, ins.update_nbytes, _FitRun._uploaded)

    def _uploaded(self, _: simpy.Event | None) -> None:
        t = self.transport
        ins, dev = self.ins, self.task.device
        sink = t.server if ins.sink is None else ins.sink
        self._record(EventKind.UPDATE_UPLOAD, dev, sink, ins.update_nbytes)
        if self._gone():
            return
        t._deliver(
            TaskResult(
                task_id=self.task.id,
                device=dev,
                started=self.started,
                finished=t.env.now,
                update=self.update,
                cpu_s=self.cpu,
                train_cpu_s=self.train_cpu,
            )
        )
