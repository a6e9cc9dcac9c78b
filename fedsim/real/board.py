"""The task board: tasks waiting for devices, and what devices send back.

The coordinator runs in its own thread and posts tasks; the aiohttp handlers, on the event
loop, hand them to long-polling agents and file their results. One lock guards the board's
state; agents waiting for work are woken through the event loop, the coordinator through a
thread-safe queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from fedsim.core.runtime import NDArrays
from fedsim.real.protocol import AgentCpu, TaskBase, Timings


class TaskState(str, enum.Enum):
    QUEUED = "queued"  # posted, no agent has taken it yet
    TAKEN = "taken"  # handed to the device's agent
    DONE = "done"  # a result or an error arrived
    CANCELLED = "cancelled"


@dataclass(frozen=True, kw_only=True)
class Outcome:
    """What a device sent back for a task, stamped with the server's clock (time.time())."""

    task_id: str
    device: int
    received_at: float
    error: str | None = None
    num_examples: int = 0
    nbytes: int = 0
    parameters: NDArrays | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    timings: Timings = field(default_factory=Timings)
    cpu: AgentCpu | None = None  # the agent's own processor seconds, when it counted them
    sha256: str | None = None
    url: str | None = None  # a relay's: where the device serves the version it holds
    # A secure aggregation stage's answer or a masked update: the bytes as they came.
    payload: bytes | None = None


@dataclass(kw_only=True)
class PostedTask:
    """A task on the board; ``message`` is what its agent receives, with the same id."""

    id: str
    device: int
    message: TaskBase
    posted_at: float
    reference: NDArrays | None = None  # the deployed parameters an update must match
    channel: str = ""  # whose coordinator waits for the outcome (one per job)
    # The device drops out of it (an injected fault): handed out once, then forgotten, since
    # no result will come; a device that restarts does not get it again.
    dropped: bool = False
    state: TaskState = TaskState.QUEUED
    taken_at: float | None = None
    outcome: Outcome | None = None


class TaskBoard:
    """Per-device queues of tasks and one queue of outcomes for the coordinator."""

    def __init__(self, *, clock=time.time) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._tasks: dict[str, PostedTask] = {}
        self._queues: dict[int, deque[str]] = {}
        self._wakers: dict[int, asyncio.Event] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._outcomes: dict[str, queue.Queue[Outcome]] = {"": queue.Queue()}

    @property
    def outcomes(self) -> queue.Queue[Outcome]:
        """Outcomes of tasks posted on the default channel."""
        return self._outcomes[""]

    def _channel(self, name: str) -> queue.Queue[Outcome]:
        with self._lock:
            return self._outcomes.setdefault(name, queue.Queue())

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Attach the board to the server's event loop (agents wait on it)."""
        self._loop = loop

    # -- the coordinator's side (any thread) ------------------------------------------------

    def post(self, task: PostedTask) -> None:
        if task.message.id != task.id:
            raise ValueError(f"task {task.id} carries a message for task {task.message.id}")
        with self._lock:
            if task.id in self._tasks:
                raise ValueError(f"task {task.id} was posted already")
            self._tasks[task.id] = task
            self._queues.setdefault(task.device, deque()).append(task.id)
        self._wake(task.device)

    def cancel(self, task_id: str, reason: str | None = None) -> None:
        """Cancel the task if it is unfinished: a result for it is refused from now on. With
        a ``reason``, the coordinator waiting on its channel is told so, as the task's error,
        rather than waiting for a result that will not come (its round's deadline, or for
        ever without one)."""
        with self._lock:
            task = self._tasks.get(task_id)
            if task is None or task.state not in (TaskState.QUEUED, TaskState.TAKEN):
                return
            task.state = TaskState.CANCELLED
            if reason is None:
                return
            channel = self._outcomes.setdefault(task.channel, queue.Queue())
            outcome = Outcome(
                task_id=task_id, device=task.device, received_at=self.clock(), error=reason
            )
        channel.put(outcome)

    def abandon(self, device: int) -> list[str]:
        """Forget every unfinished task of ``device``, which went away (an outage): the tasks
        are lost, as on a device that crashed, and no outcome is filed. Returns their ids."""
        with self._lock:
            lost = [
                t.id
                for t in self._tasks.values()
                if t.device == device and t.state in (TaskState.QUEUED, TaskState.TAKEN)
            ]
            for task_id in lost:
                del self._tasks[task_id]
            self._queues.pop(device, None)
        return lost

    def next_outcome(self, timeout: float | None, channel: str = "") -> Outcome | None:
        """The channel's next outcome, waiting at most ``timeout`` seconds (forever when None)."""
        try:
            return self._channel(channel).get(timeout=timeout)
        except queue.Empty:
            return None

    # -- the handlers' side (event loop) ----------------------------------------------------

    async def take(self, device: int, wait: float) -> PostedTask | None:
        """The device's next task: one it holds already, else the next queued; None on time-out."""
        deadline = time.monotonic() + wait
        while True:
            task = self._claim(device)
            if task is not None:
                return task
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            waker = self._wakers.setdefault(device, asyncio.Event())
            waker.clear()
            try:
                await asyncio.wait_for(waker.wait(), timeout=left)
            except asyncio.TimeoutError:
                return None

    def get(self, task_id: str) -> PostedTask | None:
        with self._lock:
            return self._tasks.get(task_id)

    def finish(self, outcome: Outcome) -> bool:
        """File ``outcome``; False when the task already had one (a repeated request)."""
        with self._lock:
            task = self._tasks.get(outcome.task_id)
            if task is None or task.state in (TaskState.DONE, TaskState.CANCELLED):
                return False
            task.state = TaskState.DONE
            task.outcome = outcome
            channel = self._outcomes.setdefault(task.channel, queue.Queue())
        channel.put(outcome)
        return True

    def forget(self, task_id: str) -> None:
        """Drop a finished task and what it holds (parameters): the coordinator has its result.

        A repeated upload for it is then answered as for an unknown task, which the agent
        takes as "nothing more to do".
        """
        with self._lock:
            task = self._tasks.get(task_id)
            if task is not None and task.state in (TaskState.DONE, TaskState.CANCELLED):
                del self._tasks[task_id]

    def pending(self, device: int | None = None) -> list[PostedTask]:
        with self._lock:
            return [
                t
                for t in self._tasks.values()
                if t.state in (TaskState.QUEUED, TaskState.TAKEN)
                and (device is None or t.device == device)
            ]

    def _claim(self, device: int) -> PostedTask | None:
        with self._lock:
            held = [
                t for t in self._tasks.values() if t.device == device and t.state is TaskState.TAKEN
            ]
            if held:
                return held[0]
            q = self._queues.get(device)
            while q:
                # A task cancelled and forgotten while queued has left only its id here.
                task = self._tasks.get(q.popleft())
                if task is not None and task.state is TaskState.QUEUED:
                    task.state = TaskState.TAKEN
                    task.taken_at = self.clock()
                    if task.dropped:
                        del self._tasks[task.id]
                    return task
            return None

    def _wake(self, device: int) -> None:
        loop = self._loop
        if loop is None:
            return

        def wake() -> None:
            self._wakers.setdefault(device, asyncio.Event()).set()

        # A closed loop (the server has stopped) has no agent waiting any more.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(wake)
