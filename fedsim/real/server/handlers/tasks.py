"""The agents' work queue and their results, over the coordinator's :class:`TaskBoard`.

An agent long-polls for its next task; what it sends back (trained parameters, the byte count
of its training data, where it serves a relayed model, or an error) becomes an
:class:`Outcome` on the board. Results are idempotent per task: the same result sent again
after a lost response is answered ``200`` with the stored result; a different one for a
finished task is ``409``.
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

from aiohttp import web

from fedsim.core.registry import DeviceRegistry, DeviceState
from fedsim.core.repository import InvalidModelFile
from fedsim.core.runtime import NDArrays
from fedsim.core.strategies.validation import validate_update
from fedsim.real.board import Outcome, PostedTask, TaskBoard, TaskState
from fedsim.real.protocol import (
    SECAGG_MESSAGE_MAX,
    FitTask,
    ForwardTask,
    Headers,
    RelayResult,
    RelayTask,
    SecAggTask,
    TaskFailure,
    TaskReceipt,
    UpdateMeta,
    UploadDataTask,
    task_json,
)
from fedsim.real.server.auth import PRINCIPAL
from fedsim.real.server.bodies import BodyReader, spool
from fedsim.real.server.config import ServerConfig
from fedsim.real.server.errors import ApiError
from fedsim.real.server.handlers.common import json_body, path_int, query
from fedsim.real.server.metrics import ServerMetrics
from fedsim.real.server.offload import Offload
from fedsim.real.server.responses import json_response
from fedsim.real.server.schemas import PollQuery
from fedsim.store.safetensors_io import compare_layouts, decode, read_layout


class TaskHandlers:
    """``/devices/{id}/tasks`` and ``/tasks/{task_id}/...``."""

    def __init__(
        self,
        *,
        board: TaskBoard,
        registry: DeviceRegistry,
        offload: Offload,
        metrics: ServerMetrics,
        config: ServerConfig,
        spool_dir: Path,
        stopping: asyncio.Event,
    ) -> None:
        self._board = board
        self._registry = registry
        self._offload = offload
        self._metrics = metrics
        self._config = config
        self._spool_dir = spool_dir
        self._stopping = stopping

    async def poll(self, request: web.Request) -> web.Response:
        device = path_int(request, "id")
        wait = query(request, PollQuery).wait
        if (await self._offload(self._registry.get, device)).state is DeviceState.REMOVED:
            raise ApiError(410, f"device {device} was removed")
        task = await self._take(device, min(wait, self._config.long_poll_max_s))
        if task is None:
            return web.Response(status=204)
        return json_response(task_json(task.message))

    async def update(self, request: web.Request) -> web.Response:
        task = self._task(request)
        if isinstance(task.message, UploadDataTask):
            raise ApiError(409, f"task {task.id} uploads data: send it to /tasks/{task.id}/data")
        if isinstance(task.message, RelayTask):
            raise ApiError(409, f"task {task.id} relays a model: send to /tasks/{task.id}/relay")
        meta = UpdateMeta.from_headers(request.headers)
        asked = _asked(task)
        if meta.num_examples > asked:
            # The count weighs the update in a mean: more than asked is a claim to outweigh
            # the others. Refused before a byte of the body is read.
            raise ApiError(
                422,
                f"{Headers.NUM_EXAMPLES}: {meta.num_examples} examples, but task {task.id} "
                f"asked for {asked}",
                field=Headers.NUM_EXAMPLES,
            )
        timing_only = meta.timing_only
        if timing_only and task.reference is not None:
            raise ApiError(
                422,
                f"task {task.id} needs trained parameters, not timings",
                field=Headers.TIMING_ONLY,
            )
        if isinstance(task.message, SecAggTask) or (
            isinstance(task.message, FitTask) and task.message.secagg is not None
        ):
            if timing_only:
                raise ApiError(
                    422,
                    f"task {task.id} needs its secure aggregation bytes",
                    field=Headers.TIMING_ONLY,
                )
            return await self._secagg(request, task, meta)
        reader = self._reader(request)
        parameters = None
        try:
            if timing_only:
                await reader.drain()  # padding that stands for the update: counted only
                received_at = self._board.clock()
            else:
                path = await spool(reader, self._spool_dir, self._offload)
                received_at = self._board.clock()  # before decoding: that is the server's time
                try:
                    if task.state is TaskState.DONE:  # a repeat: compare, do not decode again
                        return self._settled(task, reader.sha256, None)
                    parameters = await self._offload(_decode, path, task)
                finally:
                    path.unlink(missing_ok=True)
        finally:
            self._metrics.bytes_received.labels("update").inc(reader.nbytes)
        outcome = _outcome(task, meta, reader, received_at, parameters=parameters)
        return self._file(task, outcome, status=201)

    async def _secagg(
        self, request: web.Request, task: PostedTask, meta: UpdateMeta
    ) -> web.Response:
        """A secure aggregation stage's answer, or a masked update: kept as the bytes that
        came, for the coordinator's side of the protocol to read; never decoded here."""
        message = task.message
        size = message.secagg.nbytes if isinstance(message, FitTask) and message.secagg else None
        # A stage's answer is held in memory: no larger than the messages the server sends.
        limit = min(SECAGG_MESSAGE_MAX if size is None else size, self._config.max_blob_bytes)
        reader = BodyReader(request, limit=limit, timeout_s=self._config.body_read_timeout_s)
        chunks = []
        try:
            while chunk := await reader.read():
                chunks.append(chunk)
        finally:
            self._metrics.bytes_received.labels("update").inc(reader.nbytes)
        received_at = self._board.clock()
        if size is not None and reader.nbytes != size:
            raise ApiError(
                422,
                f"the masked update for task {task.id} has {reader.nbytes} bytes, expected {size}",
            )
        outcome = _outcome(task, meta, reader, received_at, payload=b"".join(chunks))
        return self._file(task, outcome, status=201)

    async def data(self, request: web.Request) -> web.Response:
        task = self._task(request)
        if not isinstance(task.message, UploadDataTask):
            raise ApiError(409, f"task {task.id} is not an upload_data task")
        reader = self._reader(request)
        try:
            await reader.drain()  # the bytes only stand for a transfer: counted, not kept
        finally:
            self._metrics.bytes_received.labels("data").inc(reader.nbytes)
        outcome = Outcome(
            task_id=task.id,
            device=task.device,
            received_at=self._board.clock(),
            nbytes=reader.nbytes,
            sha256=reader.sha256,
        )
        return self._file(task, outcome, status=201)

    async def relay(self, request: web.Request) -> web.Response:
        task = self._task(request)
        if not isinstance(task.message, RelayTask):
            raise ApiError(409, f"task {task.id} is not a relay task")
        result = await json_body(request, RelayResult, self._config)
        canonical = result.model_dump_json()
        outcome = Outcome(
            task_id=task.id,
            device=task.device,
            received_at=self._board.clock(),
            timings=result.timings,
            url=None if result.url is None else str(result.url),
            # What a repeat of this result is compared by.
            sha256=hashlib.sha256(canonical.encode()).hexdigest(),
        )
        return self._file(task, outcome, status=201)

    async def error(self, request: web.Request) -> web.Response:
        task = self._task(request)
        body = await json_body(request, TaskFailure, self._config)
        outcome = Outcome(
            task_id=task.id,
            device=task.device,
            received_at=self._board.clock(),
            error=body.reason,
        )
        return self._file(task, outcome, status=200)

    # -- internals --

    async def _take(self, device: int, wait: float) -> PostedTask | None:
        """The board's next task for ``device``, or None on time-out or when stopping."""
        take = asyncio.ensure_future(self._board.take(device, wait))
        stop = asyncio.ensure_future(self._stopping.wait())
        try:
            # A stopping server answers "nothing now" at once rather than holding shutdown
            # for a whole poll; a task taken meanwhile stays assigned and is handed out again.
            await asyncio.wait({take, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            take.cancel()
            stop.cancel()
        return take.result() if take.done() and not take.cancelled() else None

    def _task(self, request: web.Request) -> PostedTask:
        """The path's task, if the caller may report on it and it is still wanted."""
        task_id = request.match_info["task_id"]
        task = self._board.get(task_id)
        if task is None:
            raise ApiError(404, f"no task {task_id}")
        who = request[PRINCIPAL]
        if not who.may_act_as(task.device):
            raise ApiError(403, f"task {task_id} belongs to device {task.device}")
        if task.state is TaskState.CANCELLED:
            raise ApiError(410, f"task {task_id} was cancelled")
        return task

    def _reader(self, request: web.Request) -> BodyReader:
        return BodyReader(
            request,
            limit=self._config.max_blob_bytes,
            timeout_s=self._config.body_read_timeout_s,
        )

    def _file(self, task: PostedTask, outcome: Outcome, *, status: int) -> web.Response:
        if not self._board.finish(outcome):
            return self._settled(task, outcome.sha256, outcome.error)
        result = "failed" if outcome.error is not None else "succeeded"
        self._metrics.tasks.labels(task.message.kind, result).inc()
        return json_response(_result_json(task, outcome), status=status)

    @staticmethod
    def _settled(task: PostedTask, sha256: str | None, error: str | None) -> web.Response:
        """Answer a result for a task that has one already, or was cancelled meanwhile."""
        if task.state is TaskState.CANCELLED:
            raise ApiError(410, f"task {task.id} was cancelled")
        prior = task.outcome
        if prior is None or prior.sha256 != sha256 or prior.error != error:
            raise ApiError(409, f"task {task.id} has a different result already")
        return json_response(_result_json(task, prior), status=200)


def _asked(task: PostedTask) -> int:
    """The most examples an update for ``task`` may claim: what the task asked for."""
    message = task.message
    if isinstance(message, FitTask):
        return message.samples * message.epochs
    if isinstance(message, ForwardTask):
        return message.num_examples
    if isinstance(message, SecAggTask):
        return 0  # a protocol message trains nothing
    raise ApiError(409, f"task {task.id} ({message.kind}) takes no update")


def _decode(path: Path, task: PostedTask) -> NDArrays:
    """The update's arrays, refused unless its layout is that of the task's parameters and
    its values are finite and in range (the checks the coordinator makes before aggregating)."""
    data = path.read_bytes()
    try:
        if task.reference is None:
            return decode(data)
        reference = {k: (v.shape, v.dtype) for k, v in task.reference.items()}
        # Header only first: a wrong layout is refused before any tensor is loaded.
        compare_layouts(read_layout(data), reference)
        arrays = decode(data)
    except InvalidModelFile as e:
        raise ApiError(422, f"the update for task {task.id} is unusable: {e}") from None
    reason = validate_update(task.reference, arrays)
    if reason is not None:
        raise ApiError(422, f"the update for task {task.id} is unusable: {reason}")
    return arrays


def _result_json(task: PostedTask, outcome: Outcome) -> dict[str, Any]:
    receipt = TaskReceipt(
        task=task.id,
        device=task.device,
        received_at=outcome.received_at,
        nbytes=outcome.nbytes,
        sha256=outcome.sha256,
        num_examples=outcome.num_examples,
        error=outcome.error,
    )
    return receipt.model_dump(mode="json")


def _outcome(
    task: PostedTask, meta: UpdateMeta, reader: BodyReader, received_at: float, **body: Any
) -> Outcome:
    """The outcome a result's body makes: what its headers said, the bytes that came, and
    ``body`` (the decoded parameters, or a secure aggregation message kept as bytes)."""
    return Outcome(
        task_id=task.id,
        device=task.device,
        received_at=received_at,
        num_examples=meta.num_examples,
        nbytes=reader.nbytes,
        metrics=dict(meta.metrics),
        timings=meta.timings,
        cpu=meta.cpu,
        sha256=reader.sha256,
        **body,
    )
