"""The JSON forms of the registry's and the repository's records, as docs/protocol.md shows."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from fedsim.core.registry import DeviceRecord
from fedsim.core.repository import Deployment, ModelInfo, ModelStats, VersionInfo
from fedsim.real.protocol import Paths, path
from fedsim.real.server.agents import AgentDetails


def device_json(record: DeviceRecord, details: AgentDetails) -> dict[str, Any]:
    return {
        "id": record.id,
        "description": record.description,
        "group": record.group,
        "group_description": details.group_description,
        "id_in_group": record.id_in_group,
        "profile": record.profile,
        "labels": dict(record.labels),
        "state": record.state.value,
        "registered_at": record.registered_at,
        "last_seen": record.last_seen,
        "resources": dict(record.resources),
        "removed_at": record.removed_at,
        "hardware": dict(details.hardware),
        "endpoints": dict(details.endpoints),
    }


def model_json(info: ModelInfo) -> dict[str, Any]:
    return asdict(info)


def stats_json(stats: ModelStats) -> dict[str, Any]:
    return asdict(stats)


def version_json(info: VersionInfo) -> dict[str, Any]:
    return {
        **asdict(info),
        "url": path(Paths.BLOB, name=info.model, version=info.version),
    }


def deployment_json(deployment: Deployment) -> dict[str, Any]:
    return {
        "id": deployment.id,
        "model": deployment.model,
        "version": deployment.version,
        # JSON object keys are strings; the protocol shows {"3": "pending"}.
        "devices": {str(d): s.value for d, s in deployment.devices.items()},
        "created_at": deployment.created_at,
    }
