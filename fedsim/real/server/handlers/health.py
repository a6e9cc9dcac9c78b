"""Health, Prometheus metrics, and the OpenAPI document: the endpoints about the server."""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

import fedsim
from fedsim.core.registry import DeviceRegistry
from fedsim.real.server.metrics import CONTENT_TYPE, ServerMetrics
from fedsim.real.server.offload import Offload
from fedsim.real.server.responses import json_response


class ServerHandlers:
    """``/health``, ``/metrics``, ``/openapi.json``."""

    def __init__(
        self,
        *,
        registry: DeviceRegistry,
        metrics: ServerMetrics,
        offload: Offload,
        openapi: dict[str, Any],
    ) -> None:
        self._registry = registry
        self._metrics = metrics
        self._offload = offload
        self._openapi = openapi
        self._started = time.monotonic()

    async def health(self, request: web.Request) -> web.Response:
        devices = await self._offload(self._registry.list)
        return json_response(
            {
                "status": "ok",
                "version": fedsim.__version__,
                "devices": len(devices),
                "uptime_s": time.monotonic() - self._started,
            }
        )

    async def metrics(self, request: web.Request) -> web.Response:
        # Collectors read the registry (SQLite writes on a sweep): off the event loop.
        body = await self._offload(self._metrics.exposition)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    async def openapi(self, request: web.Request) -> web.Response:
        return json_response(self._openapi)
