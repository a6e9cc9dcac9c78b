"""Jobs the server runs for its users: federated training over the devices registered with it.

``POST /api/v1/jobs`` hands a job's experiment config to :class:`JobManager`, which validates
it against the same schema as ``python -m fedsim`` and runs it in a thread with the same
coordinator, over the server's own task board, repository and registry. Results land in
``<data_dir>/jobs/<id>/`` in the same layout as any run.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from fedsim.core.registry import DeviceRegistry
from fedsim.core.repository import ModelRepository
from fedsim.real.board import TaskBoard
from fedsim.real.server.jobs_api import Jobs, RoundListener

log = logging.getLogger(__name__)

KINDS = ("federated",)


class JobCancelled(Exception):
    """Raised inside a job's thread when the job has been cancelled."""


@dataclass(frozen=True)
class Attached:
    """A running server's board, repository and registry, for a job to run over."""

    board: TaskBoard
    repository: ModelRepository
    registry: DeviceRegistry


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

    def __init__(self, *, data_dir: Path, attached: Attached) -> None:
        self.data_dir = Path(data_dir)
        self.attached = attached
        self._jobs: dict[str, _Job] = {}
        self._lock = threading.Lock()
        self._listeners: list[RoundListener] = []

    def start(self, kind: str, config: dict[str, Any]) -> dict[str, Any]:
        """Validate ``config`` and start the job; raises ValueError naming what is wrong."""
        if kind not in KINDS:
            raise ValueError(f"kind: {kind!r} is not one of {', '.join(KINDS)}")
        cfg = _compose(config)
        job = _Job(
            id=secrets.token_hex(8),
            kind=kind,
            directory=self.data_dir / "jobs",
            model=str(cfg.workload.model),
            rounds_planned=int(cfg.fl.rounds),
        )
        job.directory = self.data_dir / "jobs" / job.id
        job.thread = threading.Thread(
            target=self._run, args=(job, cfg), name=f"job-{job.id}", daemon=True
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

    def watch_rounds(self, listener: RoundListener) -> None:
        self._listeners.append(listener)

    def cancel(self, job_id: str) -> dict[str, Any] | None:
        job = self._jobs.get(job_id)
        if job is None:
            return None
        if job.state == "running":
            job.stop.set()
            for task in self.attached.board.pending():
                if task.id.startswith(f"{job.id}:"):
                    self.attached.board.cancel(task.id)
        return job.view()

    def _run(self, job: _Job, cfg: Any) -> None:
        from fedsim.fl_app import run_federated

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
            run_federated(
                cfg,
                job.directory,
                attached=self.attached,
                on_round=on_round,
                task_prefix=f"{job.id}:",
            )
            job.state = "succeeded"
        except JobCancelled:
            job.state = "cancelled"
        except Exception as e:  # a job's failure is its state, not the server's
            log.exception("job %s failed", job.id)
            job.state, job.error = "failed", f"{type(e).__name__}: {e}"
        finally:
            job.finished_at = time.time()


def _compose(config: dict[str, Any]) -> Any:
    """``config`` over the experiment schema and defaults, as ``python -m fedsim`` composes it."""
    from hydra import compose, initialize_config_dir

    from fedsim.__main__ import conf_dir
    from fedsim.config import register_configs

    register_configs()
    experiment = config.get("experiment", {}).get("name") if isinstance(config, dict) else None
    overrides = (
        [f"+experiment={experiment}"]
        if experiment and (conf_dir() / "experiment" / f"{experiment}.yaml").exists()
        else []
    )
    try:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base=None):
            base = compose(config_name="config", overrides=overrides)
        return OmegaConf.merge(base, OmegaConf.create(config))
    except OmegaConfBaseException as e:
        raise ValueError(f"config: {e.msg if hasattr(e, 'msg') else e}") from None
