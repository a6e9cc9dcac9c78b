"""Crash consistency of ``fedsim server``: SIGKILL at seeded moments while clients upload.

The real server process is started on one data directory, model versions are uploaded from
several threads at once (new content and repeats, which take the repository's dedup path) while
devices register, and after a seeded delay the server is killed with SIGKILL; 32 times. After
each kill the test counts what the crash left (temp files of uploads in progress, blobs no
version names), and the next start must have collected all of it and said so. At the end every
upload that was answered 201 is present with the sha256 the client computed, every registered
device is known, and the repository's integrity check, hashes included, finds nothing.

Prints one line of counts (kills, uploads acknowledged, leftovers before and after start-up) for
the record. Each start takes about 0.6 s; the whole test about 40 s on an idle machine.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from ports import free_port

from fedsim.store.safetensors_io import encode
from fedsim.store.sqlite import SqliteRepository
from tests.real.conftest import ADMIN_TOKEN, ENROLLMENT_TOKEN

pytestmark = pytest.mark.slow

SEED = 13
KILLS = 32  # the issue asks for at least 30
UPLOADERS = 3
# About 200 kB a version: long enough that kills land inside transfers, fsyncs and commits.
PARAMETERS = 50_000
DELAY_S = (0.05, 0.5)  # how long the uploads run before the kill, drawn per kill
START_TIMEOUT_S = 30.0
REQUEST_TIMEOUT_S = 10.0


@dataclass
class Ledger:
    """What the clients were told, and what the kills left; appended to from threads."""

    versions: dict[int, str] = field(default_factory=dict)  # acknowledged: version -> sha256
    devices: list[int] = field(default_factory=list)  # acknowledged registrations
    sent: int = 0  # uploads attempted
    statuses: dict[int, int] = field(default_factory=dict)  # every answer, by status
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answered(self, status: int) -> None:
        with self.lock:
            self.statuses[status] = self.statuses.get(status, 0) + 1


class Server:
    """One ``python -m fedsim server`` process on ``data_dir``, its log in a file."""

    def __init__(self, data_dir: Path, log: Path) -> None:
        self.port = free_port()
        self.log = log
        env = {
            **os.environ,
            "FEDSIM_ADMIN_TOKEN": ADMIN_TOKEN,
            "FEDSIM_ENROLLMENT_TOKEN": ENROLLMENT_TOKEN,
        }
        cmd = [sys.executable, "-m", "fedsim", "server", "--port", str(self.port)]
        cmd += ["--data-dir", str(data_dir), "--log-level", "INFO"]
        with log.open("wb") as out:
            self.process = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
        began = time.monotonic()
        deadline = began + START_TIMEOUT_S
        while self.request("GET", "/api/v1/health")[0] != 200:
            assert self.process.poll() is None, f"the server exited: {log.read_text()}"
            assert time.monotonic() < deadline, f"the server did not start: {log.read_text()}"
            time.sleep(0.02)
        self.started_in = time.monotonic() - began

    def request(
        self, method: str, path: str, body: bytes | None = None, token: str = ADMIN_TOKEN
    ) -> tuple[int | None, bytes]:
        """The status and body of one request on a fresh connection; None if none came."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=REQUEST_TIMEOUT_S)
        try:
            connection.request(method, path, body=body, headers=_auth(token, body))
            response = connection.getresponse()
            return response.status, response.read()
        except (OSError, http.client.HTTPException):  # refused, reset, or cut off by the kill
            return None, b""
        finally:
            connection.close()

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        assert self.process.wait(timeout=10) == -signal.SIGKILL

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        assert self.process.wait(timeout=20) == 0


def _auth(token: str, body: bytes | None) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {token}"}
    if body is not None and not body.startswith(b"{"):
        headers["Content-Type"] = "application/octet-stream"
    elif body is not None:
        headers["Content-Type"] = "application/json"
    return headers


def upload(server: Server, ledger: Ledger, stop: threading.Event, seed: list[int]) -> None:
    """Upload versions until ``stop``: mostly new content, a quarter repeats of earlier ones."""
    rng = np.random.default_rng(seed)
    # Shared by every uploader of every run: a repeat may match a version of an earlier run.
    bases = [np.random.default_rng([SEED, k]).standard_normal(PARAMETERS) for k in range(2)]
    while not stop.is_set():
        k = int(rng.integers(len(bases)))
        tag = float(rng.integers(1 << 20)) if rng.random() < 0.75 else 0.0
        data = encode({"w": bases[k].astype(np.float32), "tag": np.array([tag], np.float32)})
        sha256 = hashlib.sha256(data).hexdigest()
        with ledger.lock:
            ledger.sent += 1
        status, body = server.request("POST", "/api/v1/models/m/versions", data)
        if status is None:
            continue
        ledger.answered(status)
        if status == 201:
            info = json.loads(body)
            assert info["sha256"] == sha256  # the server stored the bytes the client sent
            with ledger.lock:
                ledger.versions[info["version"]] = sha256


def register(server: Server, ledger: Ledger, stop: threading.Event) -> None:
    """Register devices until ``stop``: writes to the registry beside the repository's."""
    while not stop.is_set():
        status, body = server.request("POST", "/api/v1/devices", b"{}", token=ENROLLMENT_TOKEN)
        if status is None:
            continue
        ledger.answered(status)
        if status == 201:
            with ledger.lock:
                ledger.devices.append(json.loads(body)["device"]["id"])


def leftovers(data_dir: Path) -> tuple[int, int]:
    """Temp files and unrecorded blobs in the repository, read as a stopped server left them."""
    root = data_dir / "repository"
    temp_files = len(list((root / "blobs" / "tmp").iterdir()))
    # Read-only, so that counting does not recover the database before the server does.
    uri = f"file:{root / 'repository.db'}?mode=ro"
    with sqlite3.connect(uri, uri=True) as db:
        named = {row[0] for row in db.execute("SELECT sha256 FROM versions")}
    db.close()
    blobs = {path.stem for path in (root / "blobs").glob("??/*.safetensors")}
    return temp_files, len(blobs - named)


def removed_at_start(log: Path) -> tuple[int, int]:
    """The temp files and blobs a start-up says it removed (from its log)."""
    for line in log.read_text().splitlines():
        if "start-up: removed" in line:
            words = line.split("start-up: removed ")[1].split()
            return int(words[0]), int(words[4])
    return 0, 0


def test_sigkill_during_uploads_loses_no_acknowledged_write_and_leaves_nothing(tmp_path):
    # Prepare
    rng = np.random.default_rng(SEED)
    delays = rng.uniform(*DELAY_S, size=KILLS)
    data_dir = tmp_path / "data"
    ledger = Ledger()
    left: list[tuple[int, int]] = []  # after each kill: temp files, unrecorded blobs
    collected: list[tuple[int, int]] = []  # what the next start-up said it removed
    began = time.monotonic()
    starting = 0.0  # seconds spent waiting for servers to start
    try:
        # Execute: start, upload from several threads, SIGKILL after a seeded delay; repeat.
        for kill, delay in enumerate(delays):
            server = Server(data_dir, tmp_path / f"server-{kill}.log")
            starting += server.started_in
            stop = threading.Event()
            try:
                if kill == 0:
                    model = json.dumps({"name": "m", "architecture": "mlp"}).encode()
                    assert server.request("POST", "/api/v1/models", model)[0] == 201
                else:
                    collected.append(removed_at_start(server.log))
                    assert leftovers(data_dir) == (0, 0), f"start {kill} left leftovers"
                threads = [
                    threading.Thread(target=upload, args=(server, ledger, stop, [SEED, kill, i]))
                    for i in range(UPLOADERS)
                ]
                threads.append(threading.Thread(target=register, args=(server, ledger, stop)))
                for thread in threads:
                    thread.start()
                time.sleep(delay)
            finally:
                stop.set()  # no new uploads; those in flight are cut off by the kill
                server.kill()
            for thread in threads:
                thread.join(timeout=2 * REQUEST_TIMEOUT_S)
                assert not thread.is_alive()
            left.append(leftovers(data_dir))
        # The last start: collects what the last kill left, then serves what was acknowledged.
        server = Server(data_dir, tmp_path / "server-final.log")
        try:
            collected.append(removed_at_start(server.log))
            after = leftovers(data_dir)
            status, body = server.request("GET", "/api/v1/models/m/versions")
            served = {v["version"]: v["sha256"] for v in json.loads(body)["versions"]}
            known = [server.request("GET", f"/api/v1/devices/{d}")[0] for d in ledger.devices]
        finally:
            server.stop()
        elapsed = time.monotonic() - began
        with SqliteRepository(data_dir / "repository") as repo:
            problems = repo.check_integrity(hashes=True)
            stored = {v.version: v.sha256 for v in repo.list_versions("m")}
        print(
            f"\ncrash consistency: {KILLS} kills in {elapsed:.1f} s ({starting:.1f} s starting); "
            f"{ledger.sent} uploads sent, {len(ledger.versions)} acknowledged, "
            f"{len(stored)} stored; {len(ledger.devices)} registrations acknowledged; "
            f"left by the kills: {sum(t for t, _ in left)} temp files, "
            f"{sum(b for _, b in left)} unrecorded blobs; after each start-up: 0 and 0 "
            f"(final {after}); integrity problems: {len(problems)}"
        )
        # Assert: no request failed on the server's side, and uploads did land between kills.
        assert set(ledger.statuses) <= {201}, ledger.statuses
        assert len(ledger.versions) >= KILLS
        # Each start-up removed exactly what the kill before it left, and then nothing remained.
        assert collected == left
        assert after == (0, 0)
        # Every acknowledged write survived, with the client's bytes; the rest is whole too.
        assert problems == []
        assert status == 200 and served == stored
        assert sorted(stored) == list(range(1, len(stored) + 1))
        assert {v: stored.get(v) for v in ledger.versions} == ledger.versions
        assert known == [200] * len(ledger.devices)
    finally:
        shutil.rmtree(data_dir / "repository" / "blobs", ignore_errors=True)  # ~100 MB kept
