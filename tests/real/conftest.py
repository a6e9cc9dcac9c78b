"""Fixtures for the server tests: an app built by ``init_app`` on a temp data_dir, driven
through pytest-aiohttp's ``aiohttp_client``, and helpers that speak the protocol."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from fedsim.real.board import TaskBoard
from fedsim.real.server.app import BOARD, init_app
from fedsim.real.server.config import ServerConfig
from fedsim.store.safetensors_io import encode

API = "/api/v1"
ADMIN_TOKEN = "admin-secret-for-tests"
ENROLLMENT_TOKEN = "enrollment-secret-for-tests"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


ADMIN = bearer(ADMIN_TOKEN)
ENROLL = bearer(ENROLLMENT_TOKEN)


def weights(k: float = 0.0, n: int = 4) -> dict[str, np.ndarray]:
    return {"w": np.full((n, 3), k, np.float32), "b": np.full(3, k, np.float32)}


def blob(k: float = 0.0, n: int = 4) -> bytes:
    return encode(weights(k, n))


@dataclass
class Server:
    """A running test server and what the tests need of it."""

    client: TestClient
    app: web.Application
    config: ServerConfig

    @property
    def board(self) -> TaskBoard:
        return self.app[BOARD]

    async def register(self, **body: Any) -> tuple[int, dict[str, str]]:
        """Register a device with the enrollment token; its id and auth headers."""
        r = await self.client.post(f"{API}/devices", json=body, headers=ENROLL)
        assert r.status == 201, await r.text()
        data = await r.json()
        return data["device"]["id"], bearer(data["token"])

    async def model(self, name: str = "m", *versions: bytes) -> None:
        """Register a model and upload ``versions`` as admin."""
        r = await self.client.post(
            f"{API}/models", json={"name": name, "architecture": "mlp"}, headers=ADMIN
        )
        assert r.status == 201, await r.text()
        for data in versions:
            r = await self.client.post(f"{API}/models/{name}/versions", data=data, headers=ADMIN)
            assert r.status == 201, await r.text()


def leftovers(server: Server) -> list:
    """Temp files of uploads in progress: the repository's and the server's own."""
    data = server.config.data_dir
    spools = (data / "repository" / "blobs" / "tmp", data / "uploads")
    return [path for spool in spools for path in sorted(spool.iterdir())]


MakeServer = Callable[..., Awaitable[Server]]


@pytest.fixture
def config(tmp_path) -> ServerConfig:
    return ServerConfig(
        data_dir=tmp_path / "data",
        admin_token=ADMIN_TOKEN,
        enrollment_token=ENROLLMENT_TOKEN,
    )


@pytest_asyncio.fixture
async def make_server(aiohttp_client, config) -> MakeServer:
    """Build a server; keyword arguments override config fields, or pass board/jobs."""

    async def make(*, board=None, jobs=None, **overrides: Any) -> Server:
        cfg = replace(config, **overrides)
        app = init_app(cfg, board=board, jobs=jobs)
        test_server = TestServer(app)
        # As run_server does: requests in flight get shutdown_timeout_s, then are cancelled.
        await test_server.start_server(shutdown_timeout=cfg.shutdown_timeout_s)
        return Server(client=await aiohttp_client(test_server), app=app, config=cfg)

    return make


@pytest_asyncio.fixture
async def server(make_server) -> Server:
    return await make_server()


# -- the device agent's tests (test_agent.py, test_agent_relay.py) ----------------------------


@pytest_asyncio.fixture
async def fake(aiohttp_server) -> AsyncIterator[tuple[Any, str]]:
    """test_agent's fake fedsim server, served on loopback, and its URL."""
    from tests.real.test_agent import FakeServer

    server = FakeServer()
    test_server = await aiohttp_server(server.app())
    yield server, f"http://{test_server.host}:{test_server.port}"


@pytest.fixture(scope="module")
def shard_file(tmp_path_factory) -> Path:
    """120 digits as the device's --data file."""
    from fedsim.ml.data import load_digits_split

    X, y, _, _ = load_digits_split(test_fraction=0.2, seed=0)
    path = tmp_path_factory.mktemp("data") / "shard.npz"
    np.savez(path, X=X[:120], y=y[:120])
    return path


@pytest.fixture(scope="module")
def global_model() -> bytes:
    """The model the server deploys: digits_cnn as initialised under another seed than 0."""
    from fedsim.ml.train import TorchTrainer

    return encode(
        TorchTrainer(model_name="digits_cnn", num_classes=10, data={}, seed=1).initial_parameters()
    )
