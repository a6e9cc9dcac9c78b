"""One hostile device cannot fail a job in real mode: rounds over HTTP where a raw HTTP client
sends issue 13's update (finite 3e38 weights, an inflated example count) and the others train.

The server and the coordinator run in this process (the server on its own thread, as
``LocalCluster`` runs it); the devices are plain HTTP clients on threads, so the test needs no
agent processes.
"""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pytest

from fedsim.core.coordinator import ClientWork, Coordinator, FederatedConfig
from fedsim.core.runtime import ModelRef
from fedsim.core.strategies.fedavg import FedAvg
from fedsim.real.launch import ServerThread
from fedsim.real.server.app import init_app
from fedsim.real.server.config import ServerConfig
from fedsim.real.stores import ServerStores
from fedsim.real.transport import HttpTransport
from fedsim.store.safetensors_io import encode
from tests.real.conftest import API, ENROLLMENT_TOKEN, bearer

HONEST, ATTACKER = (1, 2), 3


@dataclass
class Device:
    """A device speaking the protocol by hand: it sends ``weights(task)`` with ``count``."""

    id: int
    base: str
    token: dict[str, str] = field(default_factory=dict)
    answers: list[tuple[int, str]] = field(default_factory=list)  # (status, error field)

    def request(self, method: str, path: str, data: bytes | None = None, headers=None):
        req = urllib.request.Request(
            self.base + path, data=data, method=method, headers={**self.token, **(headers or {})}
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def register(self) -> None:
        body = json.dumps({"id": self.id, "group": 1}).encode()
        status, raw = self.request(
            "POST",
            f"{API}/devices",
            body,
            {**bearer(ENROLLMENT_TOKEN), "Content-Type": "application/json"},
        )
        assert status == 201, raw
        self.token = bearer(json.loads(raw)["token"])

    def send(self, task: dict, weights: dict[str, np.ndarray], count: int) -> None:
        headers = {"X-Fedsim-Num-Examples": str(count), "X-Fedsim-Metrics": '{"loss": 0.5}'}
        status, raw = self.request(
            "PUT", f"{API}/tasks/{task['id']}/update", encode(weights), headers
        )
        error = json.loads(raw).get("error", {}) if status >= 400 else {}
        self.answers.append((status, error.get("field") or error.get("message", "")))

    def serve(self, stop: threading.Event) -> None:
        """Poll for tasks and answer each: honestly, or as issue 13's attacker, which reports
        its refusal as the task's failure, as an agent does."""
        while not stop.is_set():
            status, raw = self.request("GET", f"{API}/devices/{self.id}/tasks?wait=0.5")
            if status != 200:
                continue
            task = json.loads(raw)
            asked = task["samples"] * task["epochs"]
            if self.id == ATTACKER:
                huge = {"w": np.full(4, 3e38, np.float32)}
                self.send(task, huge, 10**18)  # the reproduction
                self.send(task, huge, asked)  # an honest count does not make it acceptable
                body = json.dumps({"reason": "the server refused the update"}).encode()
                headers = {"Content-Type": "application/json"}
                self.request("POST", f"{API}/tasks/{task['id']}/error", body, headers)
            else:
                self.send(task, {"w": np.full(4, float(self.id), np.float32)}, asked)


@pytest.fixture
def devices(tmp_path) -> Iterator[tuple[ServerStores, dict[int, Device]]]:
    stores = ServerStores.open(tmp_path / "data", patience_s=10)
    config = ServerConfig(
        data_dir=tmp_path / "data",
        admin_token="admin-secret-for-tests",
        enrollment_token=ENROLLMENT_TOKEN,
    )
    app = init_app(
        config, board=stores.board, registry=stores.registry, repository=stores.repository
    )
    server = ServerThread(app)
    server.start()
    stop = threading.Event()
    devices = {d: Device(id=d, base=server.url) for d in (*HONEST, ATTACKER)}
    threads = []
    try:
        for dev in devices.values():
            dev.register()
            threads.append(threading.Thread(target=dev.serve, args=(stop,), daemon=True))
            threads[-1].start()
        yield stores, devices
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=10)
        server.stop()
        stores.close()


def test_issue_13s_update_is_refused_and_the_job_goes_on(devices):
    # Prepare: FedAvg over three devices; each task asks for 100 samples x 1 epoch.
    stores, by_id = devices
    transport = HttpTransport(board=stores.board, repository=stores.repository, server=0)
    coord = Coordinator(
        transport=transport,
        strategy=FedAvg(),
        work=ClientWork(
            samples=dict.fromkeys(by_id, 100),
            train_flops_per_sample=1.0,
            update_nbytes=16,
            state_values=4,
        ),
        model=ModelRef(name="m", version=0, nbytes=16),
        parameters={"w": np.zeros(4, np.float32)},
        config=FederatedConfig(rounds=2, deadline_s=30.0),
    )
    # Execute
    history = coord.run(sorted(by_id))
    # Assert: the attacker was refused on its count header, then on its values; every round
    # aggregated the honest devices (mean 1.5) and counted the attacker's failure.
    answers = by_id[ATTACKER].answers
    assert len(answers) == 4 and all(status == 422 for status, _ in answers)
    assert [what for _, what in answers[::2]] == ["X-Fedsim-Num-Examples"] * 2
    assert all("magnitude 3e+38" in what for _, what in answers[1::2])
    for r in history:
        assert r.aggregated and sorted(r.completed) == list(HONEST)
        assert r.rejected == {ATTACKER: "the server refused the update"}
    np.testing.assert_allclose(coord.parameters["w"], 1.5)
    assert all(status == 201 for d in HONEST for status, _ in by_id[d].answers)
