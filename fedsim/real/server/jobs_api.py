"""What the server needs of a job manager: start, inspect, cancel and list jobs.

The server routes ``/jobs`` to an object with this interface and knows nothing of how jobs
run. Methods are called from a worker thread, never on the event loop, so they may block.
Jobs are plain JSON-compatible dicts as docs/protocol.md shows them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

RoundListener = Callable[[Mapping[str, Any]], None]


class JobConflict(Exception):
    """The request contradicts the job's state (one is already running, it has finished)."""


class Jobs(ABC):
    """A job manager as the REST layer sees it."""

    @abstractmethod
    def start(self, kind: str, config: dict[str, Any]) -> dict[str, Any]:
        """Start a job; returns at least ``{"id", "state"}``.

        Raises ``ValueError`` for a config it refuses (answered 422) and ``JobConflict`` when
        it cannot start one now (409).
        """

    @abstractmethod
    def get(self, job_id: str) -> dict[str, Any] | None:
        """The job, or None if there is no such job."""

    @abstractmethod
    def cancel(self, job_id: str) -> dict[str, Any] | None:
        """Cancel the job and return it, or None if there is no such job; ``JobConflict``
        when it cannot be cancelled."""

    @abstractmethod
    def list(self) -> list[dict[str, Any]]:
        """Every job, oldest first."""

    def events_file(self, job_id: str) -> Path | None:
        """The job's event log (``events.csv``), or None: no such job, none written yet, or a
        manager that keeps no files (this default)."""
        return None

    @abstractmethod
    def watch_rounds(self, listener: RoundListener) -> None:
        """Call ``listener(row)`` with every round any job finishes from now on (the round's
        ``RoundRow`` as a dict), from the job's thread; the server's metrics listen here."""
