"""Jobs the server runs for its users: federated training over the devices registered with it.

``POST /api/v1/jobs`` hands a job's experiment config (plain data) to :class:`JobManager`. The
manager does not know how to run an experiment: it is handed a :class:`JobRunner` (fedsim's
pipeline, given by the ``fedsim server`` command) that checks the config against the same
schema as ``python -m fedsim`` and runs it in a thread over the server's own stores. Results
land in ``<data_dir>/jobs/<id>/`` in the same layout as any run.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from fedsim.core.events import EVENTS_FILE
from fedsim.real.server.jobs_api import Jobs, RoundListener
from fedsim.real.stores import ServerStores

log = logging.getLogger(__name__)


class JobCancelled(Exception):
    """Raised inside a job's thread when the job has been cancelled."""


class PreparedJob(Protocol):
    """A checked job, ready to run: what it trains and for how many rounds."""

    model: str
    rounds: int

    def run(
        self,
        run_dir: Path,
        stores: ServerStores,
        *,
        channel: str,
        on_round: Callable[[dict[str, Any]], None],
    ) -> None:
        """Run over ``stores`` (task ids prefixed by ``channel``), writing results to
        ``run_dir``; ``on_round`` gets each round's row as it ends and may raise to stop."""


class JobRunner(Protocol):
    """Checks and prepares jobs of the kinds it knows."""

    kinds: tuple[str, ...]

    def prepare(self, kind: str, config: Mapping[str, Any]) -> PreparedJob:
        """The job ``config`` describes; raises ValueError naming what is wrong."""


@dataclass
class _Job:
    id: str
    kind: str
    directory: Path
    state: str = "running"
    error: str | None = None
    rounds: list[dict[str, Any]] = field(default_factory=list)
    model: str = ""  # the model's name in the repository
    rounds_planned: int = 0
    created_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def view(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "state": self.state,
            "model": self.model,
            "round": len(self.rounds),
            "rounds_planned": self.rounds_planned,
            "rounds": list(self.rounds),
            "error": self.error,
            "created_at": self.created_at,
            "finished_at": self.finished_at,
            "results": str(self.directory),
        }


class JobManager(Jobs):
    """Starts, tracks and cancels jobs; one thread per job."""

    def __init__(self, *, data_dir: Path, stores: ServerStores, runner: JobRunner) -> None:
        self.data_dir = Path(data_dir)
        self.stores = stores
        self.runner = runner
        self._jobs: dict[str, _Job] = {}
        self._lock = threading.Lock()
        self._listeners: list[RoundListener] = []

    def start(self, kind: str, config: dict[str, Any]) -> dict[str, Any]:
        """Validate ``config`` and start the job; raises ValueError naming what is wrong."""
        if kind not in self.runner.kinds:
            raise ValueError(f"kind: {kind!r} is not one of {', '.join(self.runner.kinds)}")
        prepared = self.runner.prepare(kind, config)
        job_id = secrets.token_hex(8)
        job = _Job(
            id=job_id,
            kind=kind,
            directory=self.data_dir / "jobs" / job_id,
            model=prepared.model,
            rounds_planned=prepared.rounds,
        )
        job.thread = threading.Thread(
            target=self._run, args=(job, prepared), name=f"job-{job.id}", daemon=True
        )
        with self._lock:
            self._jobs[job.id] = job
        job.thread.start()
        return job.view()

    def get(self, job_id: str) -> dict[str, Any] | None:
        job = self._jobs.get(job_id)
        return None if job is None else job.view()

    def list(self) -> list[dict[str, Any]]:
        return [j.view() for j in self._jobs.values()]

    def events_file(self, job_id: str) -> Path | None:
        job = self._jobs.get(job_id)
        events = None if job is None else job.directory / EVENTS_FILE
        return events if events is not None and events.is_file() else None

    def watch_rounds(self, listener: RoundListener) -> None:
        self._listeners.append(listener)

    def cancel(self, job_id: str) -> dict[str, Any] | None:
        job = self._jobs.get(job_id)
        if job is None:
            return None
        if job.state == "running":
            job.stop.set()
            for task in self.stores.board.pending():
                if task.id.startswith(f"{job.id}:"):
                    self.stores.board.cancel(task.id, reason=f"job {job.id} was cancelled")
        return job.view()

    def _run(self, job: _Job, prepared: PreparedJob) -> None:
        def on_round(row: dict[str, Any]) -> None:
            job.rounds.append(row)
            for listener in self._listeners:
                try:
                    listener(row)
                except Exception:  # a broken observer must not end the job
                    log.exception("round listener %r failed", listener)
            if job.stop.is_set():
                raise JobCancelled

        try:
            prepared.run(job.directory, self.stores, channel=f"{job.id}:", on_round=on_round)
            job.state = "succeeded"
        except JobCancelled:
            job.state = "cancelled"
        except Exception as e:  # a job's failure is its state, not the server's
            log.exception("job %s failed", job.id)
            job.state, job.error = "failed", f"{type(e).__name__}: {e}"
        finally:
            job.finished_at = time.time()
