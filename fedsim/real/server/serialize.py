"""The JSON forms of the registry's and the repository's records, built through the response
models of ``schemas.py``, so a record served is a record as the OpenAPI document shows it."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from pydantic import BaseModel

from fedsim.core.registry import DeviceRecord
from fedsim.core.repository import Deployment, ModelInfo, ModelStats, VersionInfo
from fedsim.real.protocol import Paths, path
from fedsim.real.server import schemas
from fedsim.real.server.agents import AgentDetails


def as_json(model: BaseModel) -> dict[str, Any]:
    """A response model as the JSON object it is served as."""
    return model.model_dump(mode="json")


def device_json(record: DeviceRecord, details: AgentDetails) -> dict[str, Any]:
    record_ = schemas.DeviceRecord(
        id=record.id,
        description=record.description,
        group=record.group,
        group_description=details.group_description,
        id_in_group=record.id_in_group,
        profile=record.profile,
        labels=dict(record.labels),
        state=record.state.value,
        registered_at=record.registered_at,
        last_seen=record.last_seen,
        resources=dict(record.resources),
        removed_at=record.removed_at,
        hardware=dict(details.hardware),
        endpoints=dict(details.endpoints),
        measured=record.measured,
        measured_at=record.measured_at,
        calibration_request=(
            None if record.calibration_request is None else asdict(record.calibration_request)
        ),
    )
    return as_json(record_)


def model_json(info: ModelInfo) -> dict[str, Any]:
    return as_json(schemas.ModelInfo(**asdict(info)))


def model_detail_json(info: ModelInfo, stats: ModelStats) -> dict[str, Any]:
    return as_json(schemas.ModelDetail(**asdict(info), stats=schemas.ModelStats(**asdict(stats))))


def version_json(info: VersionInfo) -> dict[str, Any]:
    url = path(Paths.BLOB, name=info.model, version=info.version)
    return as_json(schemas.VersionInfo(**asdict(info), url=url))


def deployment_json(deployment: Deployment) -> dict[str, Any]:
    return as_json(
        schemas.Deployment(
            id=deployment.id,
            model=deployment.model,
            version=deployment.version,
            # JSON object keys are strings; the protocol shows {"3": "pending"}.
            devices={str(d): s.value for d, s in deployment.devices.items()},
            created_at=deployment.created_at,
        )
    )
