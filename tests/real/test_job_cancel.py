"""Cancelling a server's job (``DELETE /api/v1/jobs/{id}``): the job ends without waiting for
results its cancelled tasks will never send (fedsim/real/jobs.py, fedsim/real/board.py).

The job here stands in for a round that waits for its devices with no deadline
(``fl.deadline_s=null``), over a real task board; tests/real/test_cluster.py runs whole jobs.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from fedsim.real.board import PostedTask
from fedsim.real.jobs import JobManager
from fedsim.real.protocol import UploadDataTask
from fedsim.real.stores import ServerStores

DEVICE = 3


class RoundWithoutDeadline:
    """One round: post a task to the device, wait for its outcome for as long as it takes."""

    model = "m"
    rounds = 1

    def __init__(self) -> None:
        self.posted = threading.Event()

    def run(
        self,
        run_dir: Path,
        stores: ServerStores,
        *,
        channel: str,
        on_round: Callable[[dict[str, Any]], None],
    ) -> None:
        task_id = f"{channel}r0-d{DEVICE}"
        message = UploadDataTask(id=task_id, samples=10, nbytes=100)
        stores.board.post(
            PostedTask(
                id=task_id, device=DEVICE, message=message, posted_at=time.time(), channel=channel
            )
        )
        self.posted.set()
        outcome = stores.board.next_outcome(None, channel)
        assert outcome is not None
        on_round({"round": 0, "failed": int(outcome.error is not None), "error": outcome.error})


class Runner:
    kinds = ("federated",)

    def __init__(self, job: RoundWithoutDeadline) -> None:
        self.job = job

    def prepare(self, kind: str, config: Mapping[str, Any]) -> RoundWithoutDeadline:
        return self.job


@pytest.fixture
def stores(tmp_path: Path) -> Iterator[ServerStores]:
    opened = ServerStores.open(tmp_path / "server", patience_s=10.0)
    yield opened
    opened.close()


def test_a_cancelled_job_waiting_for_its_devices_ends_cancelled(
    stores: ServerStores, tmp_path: Path
):
    # Prepare: a job whose round waits, without a deadline, for a task no agent has taken.
    round_ = RoundWithoutDeadline()
    jobs = JobManager(data_dir=tmp_path, stores=stores, runner=Runner(round_))
    job = jobs.start("federated", {})
    assert round_.posted.wait(5)

    # Execute
    jobs.cancel(job["id"])
    deadline = time.monotonic() + 5
    while jobs.get(job["id"])["state"] == "running" and time.monotonic() < deadline:
        time.sleep(0.05)

    # Assert: the round heard of the cancellation as its task's error, and the job ended.
    # Before, the round waited for ever and the job stayed "running" (issue found by
    # DELETE /api/v1/jobs/ID on a job with fl.deadline_s=null).
    done = jobs.get(job["id"])
    assert done["state"] == "cancelled" and done["finished_at"] is not None
    assert done["rounds"] == [{"round": 0, "failed": 1, "error": f"job {job['id']} was cancelled"}]
    assert stores.board.pending() == []
