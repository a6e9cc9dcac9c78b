"""The REST API's JSON bodies and query strings, declared once as pydantic models.

The same declarations check what arrives (:func:`parse_body`, :func:`parse_query`: ``422``
naming the field) and make the OpenAPI document (``openapi.py``), so the document and the checks
cannot drift apart. Request bodies refuse unknown fields and coerce nothing, so a misspelt field
or a number sent as a string is an error rather than a silent default. Responses are built
through their models too (``serialize.py``), so what is served is what is documented. The
messages of a task (the task, an update's headers, a failure, the receipt) belong to the wire
protocol and live in :mod:`fedsim.real.protocol`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import PydanticCustomError

from fedsim.core.limits import MAX_FIGURE, MAX_ID
from fedsim.real.protocol import (
    INT64_MAX,
    Count,
    MeasuredProfile,
    ModelName,
    WireModel,
    invalid,
)

M = TypeVar("M", bound=BaseModel)

# An id a request names or chooses: within the JSON-safe range (fedsim.core.limits.MAX_ID).
Id = Annotated[int, Field(ge=0, le=MAX_ID)]
# An id a response shows: a store written before ids were bounded may hold larger ones.
StoredId = Annotated[int, Field(ge=0, le=INT64_MAX)]
# A reported figure (a heartbeat's resources); a client's figure past the bound is refused.
Figure = Annotated[float, Field(ge=-MAX_FIGURE, le=MAX_FIGURE, allow_inf_nan=False)]
ShortText = Annotated[str, Field(max_length=256)]
Text = Annotated[str, Field(max_length=1024)]
HttpUrl = Annotated[str, Field(max_length=2048, pattern=r"^https?://")]
DeviceStateName = Literal["registered", "online", "busy", "offline", "removed"]
JobKind = Literal["federated"]  # what fedsim.real.jobs.JobManager runs (its KINDS)


def _unique(items: list[int]) -> list[int]:
    seen: set[int] = set()
    for i, item in enumerate(items):
        if item in seen:
            # "index" in the context makes the error name the item (see protocol.invalid).
            raise PydanticCustomError("unique", "repeats {value}", {"index": i, "value": item})
        seen.add(item)
    return items


UniqueIds = Annotated[
    list[Id],
    AfterValidator(_unique),
    Field(max_length=100_000, json_schema_extra={"uniqueItems": True}),
]


class Response(BaseModel):
    """A response body: every field declared, none left out by accident."""

    model_config = ConfigDict(extra="forbid")


# -- requests --------------------------------------------------------------------------------


class Hardware(WireModel):
    """What the device runs on, as its agent describes it; other keys are kept as given."""

    model_config = ConfigDict(extra="allow")

    cpu_count: Annotated[int, Field(ge=1, le=1_000_000)] | None = None
    memory_bytes: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = None
    gpu: ShortText | None = None


class DeviceRegistration(WireModel):
    """``POST /devices``: register a device, or register a live one again."""

    id: Id | None = Field(default=None, description="omit to have the server assign one")
    description: Text = ""
    group: Id = 0
    group_description: Text = Field(
        default="", description="what the device's group is, e.g. its site; shown by GET /groups"
    )
    id_in_group: Id | None = None
    profile: ShortText = ""
    labels: Annotated[dict[ShortText, ShortText], Field(max_length=64)] = Field(
        default_factory=dict
    )
    hardware: Hardware | None = None
    endpoints: Annotated[dict[ShortText, HttpUrl], Field(max_length=16)] = Field(
        default_factory=dict,
        description="URLs where the device serves metrics (agent, node_exporter)",
    )


class Heartbeat(WireModel):
    """``PUT /devices/{id}/heartbeat``: the device is alive, and its load now."""

    resources: Annotated[dict[ShortText, Figure], Field(max_length=64)] | None = Field(
        default=None,
        description="figures by name (cpu_busy, memory_available, bandwidth_up, ...), merged "
        "into the device's: each the last value reported for it",
    )


class CalibrationOrder(WireModel):
    """``POST /devices/{id}/calibrate``: ask the device to measure itself again."""

    model: ModelName | None = Field(
        default=None,
        description="the model of the zoo to time (default: the agent's --calibrate-model)",
    )


class ModelCreation(WireModel):
    """``POST /models``."""

    name: ModelName
    architecture: Annotated[str, Field(min_length=1, max_length=256)]
    metadata: dict[str, Any] | None = None


class DeploymentCreation(WireModel):
    """``POST /deployments``: a version, to the listed devices and those of the listed groups."""

    model: ModelName
    version: Annotated[int, Field(ge=1, le=INT64_MAX)]
    devices: UniqueIds = Field(default_factory=list)
    groups: UniqueIds = Field(default_factory=list)


class DeploymentProgress(WireModel):
    """``PUT /deployments/{id}/devices/{device}``: how far the device got."""

    state: Literal["downloading", "deployed", "failed"]


class JobStart(WireModel):
    """``POST /jobs``: an experiment's config, as ``python -m fedsim`` takes it."""

    kind: JobKind
    config: dict[str, Any]


# -- query strings ---------------------------------------------------------------------------


class Query(BaseModel):
    """Query parameters: text on the wire, so numbers are parsed from it; unknown ones refused
    (a misspelt filter must not silently widen a listing)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class DeviceFilter(Query):
    group: Id | None = Field(default=None, description="only this group")
    state: DeviceStateName | None = Field(default=None, description="only this state")


class PollQuery(Query):
    wait: Annotated[float, Field(ge=0, allow_inf_nan=False)] = Field(
        default=0.0,
        description="seconds to wait for a task (cut to the server's long_poll_max_s)",
    )


class MonitoringQuery(Query):
    window: Annotated[int, Field(ge=10, le=86_400)] = Field(
        default=900, description="seconds back from now"
    )
    group: Id | None = Field(default=None, description="only this group")
    device: Id | None = Field(default=None, description="only this device")


class ProbeQuery(Query):
    bytes: Count = Field(
        default=1 << 20, description="how many bytes to send (at most the server's probe limit)"
    )


class VersionQuery(Query):
    parent: Annotated[int, Field(ge=1, le=INT64_MAX)] | None = Field(
        default=None, description="the version it derives from"
    )
    round: Id | None = Field(default=None, description="the round that produced it")


class DeploymentFilter(Query):
    model: ModelName | None = Field(default=None, description="only this model's")


# -- responses -------------------------------------------------------------------------------


class ErrorDetail(Response):
    status: int
    message: str
    field: str | None = None


class Error(Response):
    """Every 4xx and 5xx answer."""

    error: ErrorDetail


class CalibrationRequest(Response):
    model: str | None = Field(description="the model asked for; null: the agent's choice")
    requested_at: float
    failed_at: float | None = Field(
        default=None,
        description="when the agent reported it could not measure (PUT "
        ".../calibration-failure); null while the request is pending",
    )
    reason: str | None = Field(default=None, description="why the agent could not measure")


class DeviceRecord(Response):
    id: StoredId
    description: str
    group: StoredId
    group_description: str
    id_in_group: StoredId | None
    profile: str
    labels: dict[str, str]
    state: DeviceStateName
    registered_at: float
    last_seen: float | None
    resources: dict[str, float]
    removed_at: float | None
    hardware: dict[str, Any]
    endpoints: dict[str, str]
    measured: MeasuredProfile | None = Field(
        description="the hardware profile the device measured and reported (PUT .../profile)"
    )
    measured_at: float | None
    calibration_request: CalibrationRequest | None = Field(
        description="a new measurement asked for (POST .../calibrate) and not reported yet, "
        "or one the agent could not make (failed_at and reason set)"
    )


class Registered(Response):
    device: DeviceRecord
    token: str = Field(description="the device token: this device's bearer token from now on")


class DeviceList(Response):
    devices: list[DeviceRecord]


class Group(Response):
    id: StoredId
    description: str
    devices: Count
    online: Count = Field(description="devices online or busy")


class GroupList(Response):
    groups: list[Group]


class ModelInfo(Response):
    name: str
    architecture: str
    metadata: dict[str, Any]
    created_at: float


class RoundMetrics(Response):
    round: Count
    version: Count
    metrics: dict[str, float]


class ModelStats(Response):
    model: str
    versions: Count
    deployments: Count
    total_size: Count
    latest_version: Count | None
    latest_size: Count | None
    rounds: list[RoundMetrics]


class ModelDetail(ModelInfo):
    stats: ModelStats


class ModelList(Response):
    models: list[ModelInfo]


class VersionInfo(Response):
    model: str
    version: Count
    sha256: str
    size: Count
    parent: Count | None
    round: Count | None
    metrics: dict[str, float]
    created_at: float
    url: str = Field(description="where to download the bytes")


class VersionList(Response):
    versions: list[VersionInfo]


class Deployment(Response):
    id: StoredId
    model: str
    version: Count
    devices: dict[str, Literal["pending", "downloading", "deployed", "failed"]] = Field(
        description="device id -> its progress"
    )
    created_at: float


class DeploymentList(Response):
    deployments: list[Deployment]


class Job(BaseModel):
    """A job as the job manager reports it (docs/protocol.md); a manager may add fields."""

    model_config = ConfigDict(extra="allow")

    id: str
    kind: str | None = None
    state: Literal["running", "succeeded", "failed", "cancelled"]
    model: str | None = None
    round: Count | None = None
    rounds_planned: Count | None = None
    rounds: list[dict[str, Any]] | None = None
    error: str | None = None
    created_at: float | None = None
    finished_at: float | None = None
    results: str | None = None


class JobList(Response):
    jobs: list[Job]


class Series(Response):
    t: list[float]
    cpu_busy: list[float | None] = Field(description="busy share of CPU time, 0..1")
    memory_available: list[float | None] = Field(description="bytes")
    bandwidth: list[float | None] = Field(description="bytes/s, the probe's slower direction")
    busy: list[float | None] = Field(description="1 while the device runs a task")
    gpu_util: list[float | None] = Field(
        description="busy share of the GPU the agent trains on, 0..1; null without a GPU"
    )
    disk_read: list[float | None] = Field(description="bytes/s read from the disks")
    disk_write: list[float | None] = Field(description="bytes/s written to the disks")
    net_receive: list[float | None] = Field(
        description="bytes/s received on every interface but loopback"
    )
    net_transmit: list[float | None] = Field(
        description="bytes/s sent on every interface but loopback"
    )


class Monitoring(Response):
    source: Literal["prometheus", "heartbeats"]
    window_s: int
    step_s: float
    warning: str | None = None
    devices: dict[str, Series] = Field(description="device id -> series, aligned with t")


class TargetGroup(Response):
    """A Prometheus http_sd target group: one per device and declared endpoint."""

    targets: list[str] = Field(description="host:port")
    labels: dict[str, str] = Field(
        description="fedsim_device, fedsim_group, fedsim_role (agent, node_exporter), "
        "__scheme__, __metrics_path__"
    )


class Health(Response):
    status: Literal["ok"]
    version: str
    devices: Count
    uptime_s: float


class ProbeUpload(Response):
    bytes: Count
    seconds: float


# -- parsing ---------------------------------------------------------------------------------


def parse_body(model: type[M], data: Any) -> M:
    """``data`` (parsed JSON) as ``model``; :class:`ProtocolError` (422) naming the field."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise invalid(e) from None


def parse_query(model: type[M], query: Mapping[str, str]) -> M:
    """A query string as ``model``; :class:`ProtocolError` (422) naming the parameter."""
    try:
        return model.model_validate(dict(query))
    except ValidationError as e:
        raise invalid(e) from None
