"""The JSON forms of the registry's and the repository's records, built through the response
models of ``schemas.py``, so a record served is a record as the OpenAPI document shows it."""

from __future__ import annotations

from dataclasses import asdict, fields
from typing import Any

from pydantic import BaseModel

from fedsim.core.limits import JsonLimitError, check_json_limits
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
        hardware=within_limits(dict(details.hardware)),
        endpoints=dict(details.endpoints),
        measured=record.measured,
        measured_at=record.measured_at,
        calibration_request=(
            None if record.calibration_request is None else asdict(record.calibration_request)
        ),
    )
    return as_json(record_)


WITHHELD = "fedsim:withheld"
"""The key of the object served in place of stored free-form JSON that breaks the limits."""


def model_json(info: ModelInfo) -> dict[str, Any]:
    return as_json(schemas.ModelInfo(**_model_fields(info)))


def model_detail_json(info: ModelInfo, stats: ModelStats) -> dict[str, Any]:
    return as_json(
        schemas.ModelDetail(**_model_fields(info), stats=schemas.ModelStats(**asdict(stats)))
    )


def _model_fields(info: ModelInfo) -> dict[str, Any]:
    # Shallow: asdict would copy the metadata by recursing into it, as deep as it nests.
    values = {f.name: getattr(info, f.name) for f in fields(info)}
    values["metadata"] = within_limits(values["metadata"])
    return values


def within_limits(free: dict[str, Any]) -> dict[str, Any]:
    """Stored free-form JSON (model metadata, a device's hardware) as it may be served.

    Such JSON is held to the limits on the way in (``json_loads``), but a store written before
    may hold some that breaks them: served, it would fail the listing it is in (nesting past
    what the serializer recurses into) or reach a client that cannot parse it. It is replaced
    by ``{"fedsim:withheld": reason}``, so the record stays listed and says why.
    """
    try:
        check_json_limits(free)
    except JsonLimitError as e:
        return {WITHHELD: f"the stored value breaks a limit: {e}"}
    return free


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
