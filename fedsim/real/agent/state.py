"""What an agent keeps on disk between runs: its identity, the tasks it finished, the last result.

Layout of the state directory::

    device.json      {"device_id": 4, "token": "..."}; mode 0600, the token is a credential
    finished.jsonl   one {"task": ID, "digest": HEX} per trained task, appended and fsynced
    result/          the last trained result: DIGEST.bin (the upload body), DIGEST.json (headers)

A result is written before its task is recorded as finished and before it is uploaded, so an
agent that dies anywhere in between finds the task finished and its result ready to send
again, and never trains it twice. Only the last result is kept: the server hands a device the
task it holds before any other, so that is the only one a restart can be asked for again.

Keeping a result costs every trained update three fsyncs before its upload:
:func:`measure_persist` times it (the processor's share and the wait for the disk), for the
measured hardware profile's ``persist_cpu_s`` and ``persist_io_s``.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

IDENTITY_FILE = "device.json"
FINISHED_FILE = "finished.jsonl"
RESULT_DIR = "result"


@dataclass(frozen=True, kw_only=True)
class Identity:
    """The device id the server knows this agent by, and the token that proves it."""

    device_id: int
    token: str


@dataclass(frozen=True, kw_only=True)
class StoredResult:
    """An upload ready to be sent again: its headers and body."""

    headers: dict[str, str]
    body: bytes


class StateDir:
    """The agent's state directory (created, private to the user, on first use)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._finished: set[tuple[str, str]] | None = None

    def load_identity(self) -> Identity | None:
        """The saved identity, or None when there is none (or it cannot be read)."""
        try:
            saved = json.loads((self.path / IDENTITY_FILE).read_text())
            return Identity(device_id=int(saved["device_id"]), token=str(saved["token"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def save_identity(self, identity: Identity) -> None:
        text = json.dumps({"device_id": identity.device_id, "token": identity.token})
        self._write(self.path / IDENTITY_FILE, text.encode())

    def is_finished(self, task_id: str, digest: str) -> bool:
        return (task_id, digest) in self._finished_set()

    def store_result(
        self, task_id: str, digest: str, *, headers: dict[str, str], body: bytes
    ) -> None:
        """Keep ``task_id``'s upload, then record the task as finished; drop older results."""
        results = self.path / RESULT_DIR
        results.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._write(results / f"{digest}.bin", body)
        # The headers go last: their file's presence is what marks the body as complete.
        self._write(results / f"{digest}.json", json.dumps(headers).encode())
        with open(self.path / FINISHED_FILE, "a", encoding="utf-8") as f:
            f.write(json.dumps({"task": task_id, "digest": digest}) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self._finished_set().add((task_id, digest))
        for old in results.iterdir():
            if old.stem != digest:
                old.unlink(missing_ok=True)

    def stored_result(self, digest: str) -> StoredResult | None:
        """The kept upload of the task with ``digest``, or None when it is no longer kept."""
        results = self.path / RESULT_DIR
        try:
            headers = json.loads((results / f"{digest}.json").read_text())
            body = (results / f"{digest}.bin").read_bytes()
        except (OSError, ValueError):
            return None
        return StoredResult(headers=headers, body=body)

    def _finished_set(self) -> set[tuple[str, str]]:
        if self._finished is None:
            self._finished = set()
            try:
                lines = (self.path / FINISHED_FILE).read_text(encoding="utf-8").splitlines()
            except FileNotFoundError:
                lines = []
            for line in lines:
                try:
                    entry = json.loads(line)
                    self._finished.add((str(entry["task"]), str(entry["digest"])))
                except (ValueError, KeyError, TypeError):
                    continue  # a line torn by a crash mid-append: that task never finished
        return self._finished

    def _write(self, path: Path, data: bytes) -> None:
        """Replace ``path`` atomically with ``data``, readable by the owner only."""
        self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_name(path.name + ".tmp")
        # A leftover from a crash would keep its old mode through O_CREAT; start afresh.
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)


@dataclass(frozen=True, kw_only=True)
class PersistCost:
    """What keeping one result costs: ``cpu_s`` of the processor (the calling thread's) and
    ``io_s`` of waiting beyond it (for the disk, mostly the fsyncs), in seconds."""

    cpu_s: float
    io_s: float


def measure_persist(
    nbytes: int, *, repeats: int = 10, directory: str | os.PathLike | None = None
) -> PersistCost:
    """The median cost of :meth:`StateDir.store_result` for a body of ``nbytes``, as an agent
    pays it for every trained update, in a scratch state directory under ``directory`` (the
    system's temporary directory when None: pass the agent's state directory to time the disk
    it writes to). The processor part is ``time.thread_time``, the wait the rest of the wall
    time; each repeat keeps a new task's result, as rounds do, so every repeat writes and
    removes what a round does."""
    if nbytes < 0:
        raise ValueError(f"nbytes: must be >= 0, got {nbytes}")
    if repeats < 1:
        raise ValueError(f"repeats: must be >= 1, got {repeats}")
    body = bytes(nbytes)
    headers = {"X-Fedsim-Num-Examples": "1"}
    cpu, wall = [], []
    with tempfile.TemporaryDirectory(prefix="fedsim-persist-", dir=directory) as tmp:
        state = StateDir(Path(tmp) / "state")
        state.store_result("warm-up", "0" * 64, headers=headers, body=body)  # makes the dirs
        for i in range(repeats):
            digest = f"{i + 1:064x}"
            started, started_cpu = time.perf_counter(), time.thread_time()
            state.store_result(f"task-{i}", digest, headers=headers, body=body)
            cpu.append(time.thread_time() - started_cpu)
            wall.append(time.perf_counter() - started)
    cpu_s = statistics.median(cpu)
    return PersistCost(cpu_s=cpu_s, io_s=max(0.0, statistics.median(wall) - cpu_s))
