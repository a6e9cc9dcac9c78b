"""Prometheus HTTP service discovery: the metrics endpoints of the registered devices.

Each device declares at registration where it serves metrics (``endpoints``: role -> URL, e.g.
``agent`` and ``node_exporter``). ``GET /api/v1/sd/targets`` turns them into Prometheus's
``http_sd_configs`` format, one target group per device and role, so that Prometheus follows
registrations and removals without a restart. Offline devices stay listed, so an endpoint that
stopped answering shows as down (``up == 0``) instead of vanishing; removed devices are left
out.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from fedsim.core.registry import DeviceRegistry
from fedsim.real.server.agents import AgentBook
from fedsim.real.server.offload import Offload
from fedsim.real.server.responses import json_response

log = logging.getLogger(__name__)

_DEFAULT_PORTS = {"http": 80, "https": 443}


class DiscoveryHandlers:
    """``/sd/targets``."""

    def __init__(self, *, registry: DeviceRegistry, agents: AgentBook, offload: Offload) -> None:
        self._registry = registry
        self._agents = agents
        self._offload = offload

    async def targets(self, request: web.Request) -> web.Response:
        return json_response(await self._offload(self._target_groups))

    def _target_groups(self) -> list[dict[str, Any]]:
        groups = []
        for record in self._registry.list():  # removed devices are left out
            endpoints = self._agents.details(record.id).endpoints
            for role, url in sorted(endpoints.items()):
                labels = {"fedsim_device": str(record.id), "fedsim_group": str(record.group)}
                group = target_group(url, role=role, labels=labels)
                if group is None:
                    log.warning("device %d: cannot scrape its %s endpoint %r", record.id, role, url)
                else:
                    groups.append(group)
        return groups


def target_group(url: str, *, role: str, labels: dict[str, str]) -> dict[str, Any] | None:
    """The http_sd target group that scrapes ``url``, labelled with ``labels`` and ``role``.

    The URL's scheme and path become Prometheus's ``__scheme__`` and ``__metrics_path__``; a URL
    without a port gets its scheme's default one. A query string is not carried over (a scrape's
    parameters belong to the scrape config). None for a URL Prometheus could not scrape (no
    host, a port that is not a number): registration checks only the scheme, and one bad
    declaration must not hide every other target.
    """
    parts = urlsplit(url)
    try:
        port = parts.port if parts.port is not None else _DEFAULT_PORTS.get(parts.scheme)
    except ValueError:
        return None
    if not parts.hostname or port is None:
        return None
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return {
        "targets": [f"{host}:{port}"],
        "labels": {
            **labels,
            "fedsim_role": role,
            "__scheme__": parts.scheme,
            "__metrics_path__": parts.path or "/metrics",
        },
    }
