"""The real runtime's transport: tasks go to device agents over HTTP, through the task board.

The coordinator runs in its own thread and calls this transport exactly as it calls the
simulator's; the only differences are the clock (wall time since the transport started) and
that work is done for real: agents train, and the server's own work (aggregation, evaluation,
training in the cloud-based scenario) runs in the calling thread and is timed.

A version the coordinator deploys is stored in the model repository first, so that agents
download it like any other version; its repository URL travels in the task.

Hierarchical rounds run as in the simulator: a relay task has the group's aggregator fetch the
version and serve it from its agent; the members' fit tasks point at that agent (with the relay's
token) instead of the repository. Their updates still come to the server, where the coordinator
combines each group; a forward task then has the aggregator send an update of the group's size,
which times the group's upload to the cloud.

Dropouts are drawn as the simulator draws them (one draw per fit task, in submit order, from
the transport's seeded generator): a dropped task is marked ``drop``, and its agent trains and
then stays silent. Outages stop agent processes: see :mod:`fedsim.real.faults`.
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, TypeVar

import numpy as np

from fedsim.core.events import Event, EventKind
from fedsim.core.faults import FaultPlan
from fedsim.core.repository import ModelRepository, UnknownModel
from fedsim.core.runtime import (
    Cost,
    FitIns,
    ForwardIns,
    ModelRef,
    NDArrays,
    RelayIns,
    SecAggIns,
    Task,
    TaskResult,
    Transport,
    Update,
    UploadDataIns,
)
from fedsim.real.board import Outcome, PostedTask, TaskBoard
from fedsim.real.protocol import (
    TASK_ID_PREFIX_PATTERN,
    FitTask,
    ForwardTask,
    Paths,
    RelayTask,
    SecAggMasking,
    SecAggSettings,
    SecAggTask,
    TaskBase,
    TaskModel,
    UploadDataTask,
    path,
)
from fedsim.store.safetensors_io import encode

log = logging.getLogger(__name__)
T = TypeVar("T")


class HttpTransport(Transport):
    """Tasks through a :class:`TaskBoard` served to agents by the fedsim server.

    ``faults``: its ``dropout`` is applied here, drawn from ``seed`` as ``SimTransport`` draws;
    its outages are an :class:`~fedsim.real.faults.OutageDriver`'s to carry out; link changes
    need a shaped network, which this runtime does not have, and are refused.
    """

    def __init__(
        self,
        *,
        board: TaskBoard,
        repository: ModelRepository,
        server: int,
        clock: Callable[[], float] = time.time,
        channel: str = "",
        faults: FaultPlan | None = None,
        seed: np.random.SeedSequence | int = 0,
    ) -> None:
        super().__init__()
        self.faults = faults or FaultPlan()
        if self.faults.link_changes:
            raise ValueError(
                "faults.link_changes: the real runtime does not shape its links; "
                "link changes run in the simulator"
            )
        self.rng = FaultPlan.dropout_draws(seed)
        # Task ids on the board carry the channel, so that jobs sharing a server never collide;
        # the id must still fit the protocol's task-id pattern (one path segment, no "..").
        if channel and not re.fullmatch(TASK_ID_PREFIX_PATTERN, channel):
            raise ValueError(
                f"channel: {channel!r} must be letters, digits and . _ : - (a task id's "
                "characters), starting with a letter or digit"
            )
        self.channel = channel
        self.board = board
        self.repository = repository
        self.server = server
        self.clock = clock
        self.t0 = clock()
        self._deployed: dict[tuple[str, int], TaskModel] = {}
        # Relays posted (board id -> aggregator, model, token), and the last one each aggregator
        # did ((aggregator, name) -> version, where it serves it, the token it asks for).
        self._relays: dict[str, tuple[int, ModelRef, str]] = {}
        self._relayed: dict[tuple[int, str], tuple[int, str, str]] = {}

    def now(self) -> float:
        return self.clock() - self.t0

    def submit(self, tasks: Sequence[Task]) -> None:
        for task in tasks:
            message, reference = self._message(task, self.channel + task.id)
            # As SimTransport draws: one draw per fit task, in the order they are submitted.
            drop = isinstance(message, FitTask) and self.faults.dropout > 0
            drop = drop and bool(self.rng.random() < self.faults.dropout)
            if drop:
                message = message.model_copy(update={"drop": True})
            if isinstance(message, RelayTask) and isinstance(task.ins, RelayIns):
                self._relays[message.id] = (task.device, task.ins.model, message.token)
            self.board.post(
                PostedTask(
                    id=message.id,
                    device=task.device,
                    message=message,
                    posted_at=self.clock(),
                    reference=reference,
                    channel=self.channel,
                    dropped=drop,
                )
            )

    def wait(self, *, count: int, deadline: float | None = None) -> list[TaskResult]:
        results: list[TaskResult] = []
        while len(results) < count:
            timeout = None if deadline is None else max(0.0, deadline - self.now())
            outcome = self.board.next_outcome(timeout, self.channel)
            if outcome is None:
                break
            results.append(self._result(outcome))
        return results

    def server_work(
        self, kind: EventKind, cost: Cost, fn: Callable[[], T] | None = None
    ) -> T | None:
        start = self.now()
        value = fn() if fn is not None else None
        self.events.record(
            Event(device=self.server, kind=kind, start=start, end=self.now(), task=kind.value)
        )
        return value

    # -- tasks out ---------------------------------------------------------------------------

    def _message(self, task: Task, id: str) -> tuple[TaskBase, NDArrays | None]:
        """The task's message, and the parameters an update must match (if any)."""
        ins = task.ins
        if isinstance(ins, FitIns):
            # The update goes to the server whatever ``sink`` says: the coordinator combines
            # each group's updates itself. The model comes from ``source`` when it relays it.
            model = self._model(ins.model, ins.parameters)
            if ins.source is not None:
                model = self._from_peer(ins.source, model)
            fit = FitTask(
                id=id,
                model=model,
                samples=int(ins.samples),
                epochs=int(ins.epochs),
                batch_size=int(ins.batch_size),
                flops=float(ins.flops),
                update_nbytes=int(ins.update_nbytes),
                config=_jsonable(ins.config),
                secagg=None
                if ins.secagg is None
                else SecAggMasking(
                    session=self.channel + ins.secagg.session,
                    scale=float(ins.secagg.scale),
                    nbytes=int(ins.secagg.nbytes),
                ),
            )
            # A masked update is never compared with the model: the server cannot read it.
            return fit, None if ins.secagg is not None else ins.parameters
        if isinstance(ins, UploadDataIns):
            return UploadDataTask(id=id, samples=int(ins.samples), nbytes=int(ins.nbytes)), None
        if isinstance(ins, RelayIns):
            # The members present this token to the aggregator's agent to fetch the model.
            model = self._model(ins.model, ins.parameters)
            return RelayTask(id=id, model=model, token=secrets.token_urlsafe(24)), None
        if isinstance(ins, ForwardIns):
            forward = ForwardTask(id=id, nbytes=int(ins.nbytes), num_examples=int(ins.num_examples))
            return forward, None
        if isinstance(ins, SecAggIns):
            p = ins.params
            settings = SecAggSettings(
                bits=p.bits,
                clip=float(p.clip),
                threshold=float(p.threshold),
                neighbours=p.neighbours,
                stage_timeout_s=p.stage_timeout_s,
            )
            message = SecAggTask(
                id=id,
                # A job's channel keeps two jobs' sessions on one device apart.
                session=self.channel + ins.session,
                stage=ins.stage,  # type: ignore[arg-type]  # pydantic checks the stage's name
                settings=settings,
                message=ins.message.decode(),
            )
            return message, None
        raise TypeError(f"task {task.id}: unknown instruction {type(ins).__name__}")

    def _from_peer(self, source: int, model: TaskModel) -> TaskModel:
        """``model`` as fetched from device ``source``, which relays it; from the server when
        ``source`` holds no copy (its relay failed, or the model is timing-only)."""
        version, url, token = self._relayed.get((source, model.name), (None, None, None))
        if model.url is None:
            return model
        if version != model.version:
            log.warning(
                "device %d relays no copy of %s v%d; its group downloads it from the server",
                source,
                model.name,
                model.version,
            )
            return model
        return model.model_copy(update={"url": url, "token": token})

    def _model(self, ref: ModelRef, parameters: NDArrays | None) -> TaskModel:
        """The task's model: where the agent downloads the version the coordinator deploys."""
        if parameters is None:
            # A timing-only workload: nothing to download.
            return TaskModel(name=ref.name, version=int(ref.version), nbytes=int(ref.nbytes))
        key = (ref.name, ref.version)
        if key not in self._deployed:
            blob = encode(parameters)
            sha = hashlib.sha256(blob).hexdigest()
            try:
                self.repository.get_model(ref.name)
            except UnknownModel:
                self.repository.register_model(ref.name, ref.name, {"source": "coordinator"})
            versions = self.repository.list_versions(ref.name)
            same = [v for v in versions if v.sha256 == sha]
            info = same[-1] if same else self.repository.add_version(ref.name, blob)
            self._deployed[key] = TaskModel(
                name=ref.name,
                version=int(ref.version),
                nbytes=info.size,
                sha256=info.sha256,
                url=path(Paths.BLOB, name=ref.name, version=info.version),
            )
        return self._deployed[key]

    # -- results in --------------------------------------------------------------------------

    def _result(self, o: Outcome) -> TaskResult:
        task = self.board.get(o.task_id)
        # The board need not keep the task (and the parameters it references) any longer.
        self.board.forget(o.task_id)
        o = replace(o, task_id=o.task_id.removeprefix(self.channel))
        posted = (task.posted_at if task else o.received_at) - self.t0
        taken = (task.taken_at if task and task.taken_at else o.received_at) - self.t0
        finished = o.received_at - self.t0
        relay = self._relays.pop(self.channel + o.task_id, None)
        if o.error is not None:
            return TaskResult(
                task_id=o.task_id, device=o.device, started=posted, finished=finished, error=o.error
            )
        if relay is not None and o.url is not None:
            device, model, token = relay
            self._relayed[(device, model.name)] = (model.version, o.url, token)
        self._record_timings(o, task, taken, finished)
        update = None
        if task is not None and isinstance(task.message, ForwardTask):
            update = Update(num_examples=o.num_examples, nbytes=o.nbytes)
        payload = None
        if task is not None and isinstance(task.message, FitTask):
            masked = task.message.secagg is not None
            update = Update(
                num_examples=o.num_examples,
                nbytes=o.nbytes,
                parameters=None if masked else o.parameters,
                metrics=dict(o.metrics),
                masked=o.payload if masked else None,
            )
        if task is not None and isinstance(task.message, SecAggTask):
            payload = o.payload if o.payload is not None else b""
        return TaskResult(
            task_id=o.task_id,
            device=o.device,
            started=posted,
            finished=finished,
            update=update,
            payload=payload,
            # One whole cycle: this task's handling and the previous result's sending.
            cpu_s=None if o.cpu is None else o.cpu.task_s + (o.cpu.between_s or 0.0),
            train_cpu_s=None if o.cpu is None else o.cpu.train_s,
        )

    def _record_timings(
        self, o: Outcome, task: PostedTask | None, taken: float, finished: float
    ) -> None:
        """Place the agent's reported step durations on the server's clock.

        The agent measures its steps with its own clock; only durations travel. Steps are laid
        out from the moment it took the task, the upload ending when the result arrived.
        """
        download, train = o.timings.download_s, o.timings.train_s
        message = task.message if task else None
        model_nbytes = message.model.nbytes if isinstance(message, (FitTask, RelayTask)) else 0
        fetched = (EventKind.MODEL_DOWNLOAD, taken, taken + download, model_nbytes)
        if isinstance(message, UploadDataTask):
            steps = [(EventKind.DATA_UPLOAD, taken, finished, o.nbytes)]
        elif isinstance(message, ForwardTask):
            steps = [(EventKind.UPDATE_UPLOAD, taken, finished, o.nbytes)]
        elif isinstance(message, RelayTask):
            steps = [fetched]
        elif isinstance(message, SecAggTask):
            # The server's message came with the task (the poll's answer); the agent times its
            # own side of the protocol (``train_s``), the upload ends when the answer arrived.
            computed = taken + train
            steps = [
                (EventKind.SECAGG, taken, computed, 0),
                (EventKind.SECAGG_UPLOAD, min(computed, finished), finished, o.nbytes),
            ]
            if message.message:
                steps.insert(0, (EventKind.SECAGG_DOWNLOAD, taken, taken, len(message.message)))
        else:
            steps = [fetched, (EventKind.TRAIN, taken + download, taken + download + train, 0)]
            upload_start = min(max(taken + download + train, taken), finished)
            steps.append((EventKind.UPDATE_UPLOAD, upload_start, finished, o.nbytes))
        for kind_, start, end, nbytes in steps:
            self.events.record(
                Event(
                    device=o.device,
                    kind=kind_,
                    start=start,
                    end=max(start, min(end, finished)),
                    nbytes=nbytes,
                    task=o.task_id,
                )
            )


def _jsonable(config: Any) -> dict[str, Any]:
    out = {}
    for k, v in dict(config).items():
        if hasattr(v, "item"):
            v = v.item()
        out[str(k)] = v
    return out
