"""The real runtime's transport: tasks go to device agents over HTTP, through the task board.

The coordinator runs in its own thread and calls this transport exactly as it calls the
simulator's; the only differences are the clock (wall time since the transport started) and
that work is done for real: agents train, and the server's own work (aggregation, evaluation,
training in the cloud-based scenario) runs in the calling thread and is timed.

A version the coordinator deploys is stored in the model repository first, so that agents
download it like any other version; its repository URL travels in the task.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, TypeVar

from fedsim.core.events import Event, EventKind
from fedsim.core.repository import ModelRepository, UnknownModel
from fedsim.core.runtime import (
    Cost,
    FitIns,
    ModelRef,
    NDArrays,
    Task,
    TaskResult,
    Transport,
    Update,
    UploadDataIns,
)
from fedsim.real.board import Outcome, PostedTask, TaskBoard
from fedsim.real.protocol import (
    FitTask,
    Paths,
    TaskBase,
    TaskModel,
    UploadDataTask,
    path,
)
from fedsim.store.safetensors_io import encode

log = logging.getLogger(__name__)
T = TypeVar("T")


class HttpTransport(Transport):
    """Tasks through a :class:`TaskBoard` served to agents by the fedsim server."""

    def __init__(
        self,
        *,
        board: TaskBoard,
        repository: ModelRepository,
        server: int,
        clock: Callable[[], float] = time.time,
        channel: str = "",
    ) -> None:
        super().__init__()
        # Task ids on the board carry the channel, so that jobs sharing a server never collide.
        self.channel = channel
        self.board = board
        self.repository = repository
        self.server = server
        self.clock = clock
        self.t0 = clock()
        self._deployed: dict[tuple[str, int], TaskModel] = {}

    def now(self) -> float:
        return self.clock() - self.t0

    def submit(self, tasks: Sequence[Task]) -> None:
        for task in tasks:
            message, reference = self._message(task, self.channel + task.id)
            self.board.post(
                PostedTask(
                    id=message.id,
                    device=task.device,
                    message=message,
                    posted_at=self.clock(),
                    reference=reference,
                    channel=self.channel,
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
            if ins.source is not None or ins.sink is not None:
                raise NotImplementedError("hierarchical rounds run in the simulator only")
            message = FitTask(
                id=id,
                model=self._model(ins.model, ins.parameters),
                samples=int(ins.samples),
                epochs=int(ins.epochs),
                batch_size=int(ins.batch_size),
                flops=float(ins.flops),
                update_nbytes=int(ins.update_nbytes),
                config=_jsonable(ins.config),
            )
            return message, ins.parameters
        if isinstance(ins, UploadDataIns):
            return UploadDataTask(id=id, samples=int(ins.samples), nbytes=int(ins.nbytes)), None
        raise NotImplementedError(f"{type(ins).__name__} runs in the simulator only")

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
        if o.error is not None:
            return TaskResult(
                task_id=o.task_id, device=o.device, started=posted, finished=finished, error=o.error
            )
        self._record_timings(o, task, taken, finished)
        update = None
        if task is not None and isinstance(task.message, FitTask):
            update = Update(
                num_examples=o.num_examples,
                nbytes=o.nbytes,
                parameters=o.parameters,
                metrics=dict(o.metrics),
            )
        return TaskResult(
            task_id=o.task_id, device=o.device, started=posted, finished=finished, update=update
        )

    def _record_timings(
        self, o: Outcome, task: PostedTask | None, taken: float, finished: float
    ) -> None:
        """Place the agent's reported step durations on the server's clock.

        The agent measures its steps with its own clock; only durations travel. Steps are laid
        out from the moment it took the task, the upload ending when the result arrived.
        """
        t = o.timings
        message = task.message if task else None
        if isinstance(message, UploadDataTask):
            self.events.record(
                Event(
                    device=o.device,
                    kind=EventKind.DATA_UPLOAD,
                    start=taken,
                    end=finished,
                    nbytes=o.nbytes,
                    task=o.task_id,
                )
            )
            return
        download, train = t.download_s, t.train_s
        model_nbytes = message.model.nbytes if isinstance(message, FitTask) else 0
        steps = [
            (EventKind.MODEL_DOWNLOAD, taken, taken + download, model_nbytes),
            (EventKind.TRAIN, taken + download, taken + download + train, 0),
        ]
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
