"""The application factory ``init_app`` and ``run_server``, which serves it.

``init_app`` builds the whole server from a :class:`ServerConfig`: the stores under
``data_dir``, the handlers (each given its dependencies), the route table, the middlewares
(request metrics outermost, then JSON errors). Stores are opened here rather than at startup so
that a bad ``data_dir`` fails when the app is built, before a port is bound, and so that the
handlers can receive them in their constructors; they are closed in ``cleanup_ctx``, after the
requests in flight have finished or been cancelled. Stores passed in belong to the caller and
are left open.

Stopping (SIGINT/SIGTERM under ``run_server``): long polls are answered at once, uploads get
``shutdown_timeout_s`` to finish, then are cancelled, which removes their temp files; the
worker pool is drained before the stores close. A version is stored atomically by the
repository, so a stop never leaves one half-written.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from fedsim.core.registry import DeviceRegistry
from fedsim.core.repository import ModelRepository
from fedsim.real.board import TaskBoard
from fedsim.real.server.access import AccessLogger, server_log
from fedsim.real.server.agents import AgentBook
from fedsim.real.server.auth import Authenticator
from fedsim.real.server.client_certs import log_client_certificates
from fedsim.real.server.config import ServerConfig
from fedsim.real.server.errors import error_middleware
from fedsim.real.server.handlers.dashboard import DashboardHandlers
from fedsim.real.server.handlers.deployments import DeploymentHandlers
from fedsim.real.server.handlers.devices import DeviceHandlers
from fedsim.real.server.handlers.discovery import DiscoveryHandlers
from fedsim.real.server.handlers.health import ServerHandlers
from fedsim.real.server.handlers.jobs import JobHandlers
from fedsim.real.server.handlers.models import ModelHandlers
from fedsim.real.server.handlers.monitoring import MonitoringHandlers
from fedsim.real.server.handlers.probe import ProbeHandlers
from fedsim.real.server.handlers.tasks import TaskHandlers
from fedsim.real.server.history import HeartbeatHistory
from fedsim.real.server.jobs_api import Jobs
from fedsim.real.server.metrics import ServerMetrics
from fedsim.real.server.offload import Offload
from fedsim.real.server.openapi import build_openapi
from fedsim.real.server.routes import setup_routes
from fedsim.store.sqlite import SqliteRegistryStore, SqliteRepository

log = logging.getLogger("fedsim.server")

CONFIG = web.AppKey("config", ServerConfig)
REGISTRY = web.AppKey("registry", DeviceRegistry)
REPOSITORY = web.AppKey("repository", ModelRepository)
BOARD = web.AppKey("board", TaskBoard)
AGENTS = web.AppKey("agents", AgentBook)
METRICS = web.AppKey("metrics", ServerMetrics)


def init_app(
    config: ServerConfig,
    *,
    board: TaskBoard | None = None,
    jobs: Jobs | None = None,
    registry: DeviceRegistry | None = None,
    repository: ModelRepository | None = None,
) -> web.Application:
    """The server as an aiohttp application; pass ``board``, ``jobs``, ``registry`` or
    ``repository`` to share them with the caller (the coordinator, a test)."""
    data = config.data_dir
    owned: list[Callable[[], None]] = []  # closers of what this app opened, in opening order
    try:
        if registry is None:
            store = SqliteRegistryStore(data / "registry")
            owned.append(store.close)
            registry = DeviceRegistry(store, patience=config.patience_s)
        if repository is None:
            repository = SqliteRepository(data / "repository")
            owned.append(repository.close)
        agents = AgentBook(root=data / "registry")
        owned.append(agents.close)
        spool_dir = data / "uploads"
        _remove_partial_uploads(spool_dir)
    except BaseException:
        for close in reversed(owned):
            close()
        raise
    board = TaskBoard() if board is None else board

    offload = Offload()
    metrics = ServerMetrics(devices=registry, repository=repository, jobs=jobs)
    if jobs is not None:
        jobs.watch_rounds(metrics.on_round)
    stopping = asyncio.Event()
    app = web.Application(
        # Only JSON bodies are read whole; blobs are streamed under their own limit.
        client_max_size=config.max_json_bytes,
        middlewares=[
            metrics.middleware,
            error_middleware,
            # Innermost: it reads the answer a handler gave, before errors become JSON.
            *([log_client_certificates] if config.mutual_tls else []),
        ],
        # Handler arguments hold wherever the app is served (run_app, an AppRunner, a test).
        handler_args={
            # aiohttp arms its keep-alive timer when a connection opens and after each
            # response, and closes the connection if no whole request head has arrived when it
            # fires: a client sending its headers a byte at a time is cut off after this long.
            "keepalive_timeout": config.header_read_timeout_s,
            "access_log_class": AccessLogger,
            "logger": server_log,
        },
    )
    app[CONFIG] = config
    app[REGISTRY] = registry
    app[REPOSITORY] = repository
    app[BOARD] = board
    app[AGENTS] = agents
    app[METRICS] = metrics
    history = HeartbeatHistory(samples=config.history_samples, interval_s=config.history_interval_s)
    monitoring = MonitoringHandlers(
        registry=registry,
        history=history,
        offload=offload,
        prometheus_url=config.prometheus_url,
    )

    setup_routes(
        app,
        auth=Authenticator(
            admin_token=config.admin_token,
            enrollment_token=config.enrollment_token,
            viewer_token=config.viewer_token,
            agents=agents,
        ),
        server=ServerHandlers(
            registry=registry, metrics=metrics, offload=offload, openapi=build_openapi(config)
        ),
        devices=DeviceHandlers(
            registry=registry, agents=agents, offload=offload, config=config, history=history
        ),
        models=ModelHandlers(
            repository=repository, offload=offload, metrics=metrics, config=config
        ),
        deployments=DeploymentHandlers(
            repository=repository, registry=registry, offload=offload, config=config
        ),
        tasks=TaskHandlers(
            board=board,
            registry=registry,
            offload=offload,
            metrics=metrics,
            config=config,
            spool_dir=spool_dir,
            stopping=stopping,
        ),
        jobs=JobHandlers(jobs=jobs, offload=offload, config=config),
        discovery=DiscoveryHandlers(
            registry=registry,
            agents=agents,
            offload=offload,
            allowed_networks=config.sd_networks,
        ),
        probe=ProbeHandlers(
            max_bytes=min(config.max_blob_bytes, 256 * 1024 * 1024),
            timeout_s=config.body_read_timeout_s,
        ),
        monitoring=monitoring,
        dashboard=DashboardHandlers(),
    )

    async def stores(app: web.Application) -> AsyncIterator[None]:
        yield
        for close in reversed(owned):
            close()

    async def workers(app: web.Application) -> AsyncIterator[None]:
        offload.start()
        board.bind(asyncio.get_running_loop())  # agents' long polls wait on this loop
        yield
        await monitoring.close()
        await offload.stop()  # before the stores close: calls in flight still use them

    async def wake_pollers(app: web.Application) -> None:
        stopping.set()

    # cleanup_ctx unwinds in reverse: the workers stop before the stores close.
    app.cleanup_ctx.append(stores)
    app.cleanup_ctx.append(workers)
    # on_shutdown runs before aiohttp waits for the requests in flight.
    app.on_shutdown.append(wake_pollers)
    return app


def run_server(
    config: ServerConfig,
    *,
    jobs: Jobs | None = None,
    ssl_context: ssl.SSLContext | None = None,
    **stores: Any,
) -> None:
    """Serve until SIGINT or SIGTERM, then stop gracefully (see the module docstring).

    ``stores`` (board, registry, repository) are passed to :func:`init_app`, for a caller that
    shares them, as the job manager does. ``ssl_context`` is ``config.ssl_context()`` made
    already (the CLI makes it first, to report a bad certificate before serving).
    """
    if ssl_context is None:
        ssl_context = config.ssl_context()
    app = init_app(config, jobs=jobs, **stores)
    scheme = "https" if config.tls else "http"
    web.run_app(
        app,
        host=config.host,
        port=config.port,
        ssl_context=ssl_context,
        shutdown_timeout=config.shutdown_timeout_s,
        handle_signals=True,  # SIGINT and SIGTERM stop the server through its cleanup
        print=lambda _: log.info("serving on %s://%s:%d", scheme, config.host, config.port),
    )


def _remove_partial_uploads(directory: Path) -> None:
    """Create ``directory``, or remove the partial uploads a killed server left in it."""
    directory.mkdir(parents=True, exist_ok=True)
    removed = 0
    for path in directory.glob("*.part"):  # only what bodies.spool names; data_dir is shared
        path.unlink(missing_ok=True)
        removed += 1
    if removed:
        log.warning("start-up: removed %d partial task results left in %s", removed, directory)
