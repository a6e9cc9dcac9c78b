"""The route table: every endpoint, its handler, who may call it (see auth.py), and what it
takes and answers. ``setup_routes`` registers the table with aiohttp and ``openapi.py`` writes
the document from the same table, so no route exists undocumented."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from pydantic import BaseModel

from fedsim.real.protocol import (
    PATH_PATTERNS,
    CalibrationFailure,
    Headers,
    MeasuredProfile,
    Paths,
    RelayResult,
    Task,
    TaskFailure,
    TaskReceipt,
)
from fedsim.real.server import schemas as s
from fedsim.real.server.auth import (
    ADMIN,
    ANY_DEVICE,
    ENROLL,
    PUBLIC,
    READ,
    Access,
    Authenticator,
    Role,
    own,
    viewable,
)
from fedsim.store.safetensors_io import MAX_HEADER_BYTES

OCTETS = "application/octet-stream"


@dataclass(frozen=True, kw_only=True)
class Doc:
    """What an endpoint takes and answers, for the OpenAPI document.

    Statuses that follow from the rest are implied: 401 and 403 behind a token, 404 where the
    path has parameters, 400/408/413 (and 422 for JSON) with a request body, 422 with query
    parameters, 400/422 with the protocol's headers. ``errors`` adds the handler's own.
    """

    summary: str
    ok: int = 200
    also_ok: tuple[int, ...] = ()  # other successes that answer the same body
    returns: Any = None  # the JSON body of the ``ok`` answer: a model or a type
    body: type[BaseModel] | None = None  # a JSON request body
    blob: bool = False  # an application/octet-stream request body, streamed
    blob_optional: bool = False  # an empty one is fine (a probe of zero bytes)
    query: type[s.Query] | None = None
    headers: tuple[str, ...] = ()  # the protocol's headers it reads
    request_headers: Mapping[str, str] = field(default_factory=dict)  # standard ones: name -> what
    errors: tuple[int, ...] = ()
    responses: Mapping[int, Mapping[str, Any]] = field(default_factory=dict)  # written out
    description: str = ""


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str  # a template of :class:`~fedsim.real.protocol.Paths`
    handler: str  # "group.method": the method of the handler object passed as ``group``
    access: Access
    doc: Doc

    def __post_init__(self) -> None:
        # The viewer token changes nothing: a route that may write cannot list it.
        if Role.VIEWER in self.access.roles and self.method != "GET":
            raise ValueError(f"{self.method} {self.path}: the viewer role is for GET routes only")


def _binary(description: str, **headers: str) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "description": description,
        "content": {OCTETS: {"schema": {"type": "string", "format": "binary"}}},
    }
    if headers:
        answer["headers"] = {
            name: {"schema": {"type": "string"}, "description": what}
            for name, what in headers.items()
        }
    return answer


_DASHBOARD_FILE = {
    "description": "The file, typed by its extension",
    "content": {
        kind: {"schema": {"type": "string"}}
        for kind in ("text/html", "text/css", "text/javascript", "text/plain", "text/markdown")
    }
    | {"*/*": {"schema": {"type": "string", "format": "binary"}}},
}
_PAGE = {"description": "The page", "content": {"text/html": {"schema": {"type": "string"}}}}
_HEALTH = Doc(summary="Liveness and a summary", returns=s.Health)
_BLOB_OK = {
    200: _binary("The bytes", ETag='"<sha256>"', **{"Accept-Ranges": "bytes"}),
    206: _binary("The requested range", ETag='"<sha256>"', **{"Content-Range": "bytes a-b/size"}),
    304: {"description": "Not modified: the ETag in If-None-Match is current"},
}
_UPDATE_HEADERS = (Headers.NUM_EXAMPLES, Headers.METRICS, Headers.TIMINGS, Headers.TIMING_ONLY)

# fmt: off
ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint("GET", Paths.HEALTH, "server.health", PUBLIC, _HEALTH),
    Endpoint("GET", Paths.ROOT_HEALTH, "server.health", PUBLIC, Doc(
        summary="Liveness and a summary, as /api/v1/health (for container health checks)",
        returns=s.Health)),
    Endpoint("GET", Paths.OPENAPI, "server.openapi", PUBLIC, Doc(
        summary="This document", returns=dict[str, Any])),
    # Unauthenticated like node_exporter's, so Prometheus needs no admin secret.
    Endpoint("GET", Paths.METRICS, "server.metrics", PUBLIC, Doc(
        summary="Prometheus metrics in the text exposition format",
        responses={200: {"description": "The metrics",
                         "content": {"text/plain": {"schema": {"type": "string"}}}}})),
    Endpoint("POST", Paths.DEVICES, "devices.register", ENROLL, Doc(
        summary="Register a device (enrollment token), or register it again (its token, admin)",
        ok=201, returns=s.Registered, body=s.DeviceRegistration, errors=(409,),
        description="409: the id was removed (ids are not reused), or the device would move "
        "to another group.")),
    Endpoint("GET", Paths.DEVICES, "devices.list", READ, Doc(
        summary="List devices (removed ones only with state=removed)", returns=s.DeviceList,
        query=s.DeviceFilter)),
    Endpoint("GET", Paths.DEVICE, "devices.get", viewable(own("id")), Doc(
        summary="A device (admin, viewer or the device)", returns=s.DeviceRecord)),
    Endpoint("DELETE", Paths.DEVICE, "devices.remove", ADMIN, Doc(
        summary="Remove a device for good", returns=s.DeviceRecord, errors=(410,))),
    Endpoint("PUT", Paths.HEARTBEAT, "devices.heartbeat", own("id"), Doc(
        summary="Report liveness and resources (the device)", returns=s.DeviceRecord,
        body=s.Heartbeat, errors=(410,))),
    Endpoint("PUT", Paths.DEVICE_PROFILE, "devices.profile", own("id"), Doc(
        summary="Report the device's measured hardware profile (the device)",
        returns=s.DeviceRecord, body=MeasuredProfile, errors=(410,),
        description="Replaces the measured figures; step models of other models reported "
        "earlier are kept. Clears a calibration request for a model the report times.")),
    Endpoint("POST", Paths.DEVICE_CALIBRATE, "devices.calibrate", ADMIN, Doc(
        summary="Ask the device to measure itself again", ok=202, returns=s.DeviceRecord,
        body=s.CalibrationOrder, errors=(410,),
        description="The request shows in the device's record (calibration_request); its "
        "agent sees it in the answer to its next heartbeat and reports a new profile, or the "
        "reason it could not (PUT .../calibration-failure). A new request replaces the last.")),
    Endpoint("PUT", Paths.DEVICE_CALIBRATION_FAILURE, "devices.calibration_failure", own("id"),
        Doc(summary="Report that the device could not answer its calibration request (the "
            "device)", returns=s.DeviceRecord, body=CalibrationFailure, errors=(409, 410),
            description="Marks the request failed (calibration_request.failed_at and reason) "
            "until a new request or a profile of the model asked for. 409: requested_at is "
            "not the device's current request.")),
    # Not for the viewer: a poll hands the task out.
    Endpoint("GET", Paths.TASKS, "tasks.poll", own("id"), Doc(
        summary="Long-poll for the device's next task", returns=Task, query=s.PollQuery,
        errors=(410,), responses={204: {"description": "No task within the wait"}},
        description="A task handed out and not finished is handed out again to the next poll.")),
    Endpoint("GET", Paths.GROUPS, "devices.groups", READ, Doc(
        summary="Groups with device counts", returns=s.GroupList)),
    Endpoint("GET", Paths.MONITORING, "monitoring.series", READ, Doc(
        summary="Each device's CPU, memory, bandwidth, activity, GPU, disk and network traffic "
        "over a window",
        returns=s.Monitoring, query=s.MonitoringQuery,
        description="From Prometheus when the server was started with --prometheus-url "
        "(range queries), else from the server's own heartbeat history; a Prometheus that "
        "fails is reported in `warning` and the heartbeats are served.")),
    # The Data Visualizer's page and assets: public, they hold no data (see dashboard.py).
    Endpoint("GET", Paths.DASHBOARD, "dashboard.redirect", PUBLIC, Doc(
        summary="The dashboard: redirects to /dashboard/",
        responses={308: {"description": "To /dashboard/",
                         "headers": {"Location": {"schema": {"type": "string"}}}}})),
    Endpoint("GET", Paths.DASHBOARD_INDEX, "dashboard.index", PUBLIC, Doc(
        summary="The dashboard's page; its data comes from this API with the admin or viewer "
        "token",
        errors=(404,), responses={200: _PAGE})),
    Endpoint("GET", Paths.DASHBOARD_FILE, "dashboard.asset", PUBLIC, Doc(
        summary="A static file of the dashboard", responses={200: _DASHBOARD_FILE})),
    # Prometheus's http_sd_configs, with the viewer (or admin) token as its credentials.
    Endpoint("GET", Paths.SD_TARGETS, "discovery.targets", READ, Doc(
        summary="Prometheus HTTP service discovery of the devices' metrics endpoints",
        returns=list[s.TargetGroup],
        description="For http_sd_configs with `authorization: {credentials_file: ...}` "
        "holding the viewer token (or the admin token). Removed devices are left out; "
        "offline ones stay, so an endpoint that stopped answering shows as down.")),
    # The probe is the devices' (a viewer has no link to measure, and it costs the server).
    Endpoint("GET", Paths.PROBE, "probe.download", ANY_DEVICE, Doc(
        summary="Bandwidth probe: download `bytes` zero bytes", query=s.ProbeQuery,
        responses={200: _binary("Zeros")})),
    Endpoint("PUT", Paths.PROBE, "probe.upload", ANY_DEVICE, Doc(
        summary="Bandwidth probe: upload bytes that are counted and discarded",
        returns=s.ProbeUpload, blob=True, blob_optional=True)),
    Endpoint("POST", Paths.MODELS, "models.create", ADMIN, Doc(
        summary="Register a model", ok=201, returns=s.ModelInfo, body=s.ModelCreation,
        errors=(409,))),
    Endpoint("GET", Paths.MODELS, "models.list", viewable(ANY_DEVICE), Doc(
        summary="List models", returns=s.ModelList)),
    Endpoint("GET", Paths.MODEL, "models.get", viewable(ANY_DEVICE), Doc(
        summary="A model with its statistics", returns=s.ModelDetail)),
    Endpoint("POST", Paths.VERSIONS, "models.add_version", ADMIN, Doc(
        summary="Upload a version: safetensors bytes, streamed to disk", ok=201,
        returns=s.VersionInfo, blob=True, query=s.VersionQuery, headers=(Headers.METRICS,),
        description="422: not safetensors (its header: JSON within the protocol's limits, "
        f"at most {MAX_HEADER_BYTES // 2**20} MiB), a NaN or infinite weight, a layout that "
        "differs from the model's, or a parent that is not a version of the model; nothing "
        "is stored.")),
    Endpoint("GET", Paths.VERSIONS, "models.list_versions", viewable(ANY_DEVICE), Doc(
        summary="A model's versions", returns=s.VersionList)),
    Endpoint("GET", Paths.VERSION, "models.get_version", viewable(ANY_DEVICE), Doc(
        summary="A version (a number, or latest)", returns=s.VersionInfo)),
    # Not for the viewer: the weights are what training made of the devices' data; the
    # dashboard shows a model's statistics, never its bytes.
    Endpoint("GET", Paths.BLOB, "models.blob", ANY_DEVICE, Doc(
        summary="Download a version's safetensors bytes (streamed, resumable)",
        request_headers={
            "Range": "bytes=a-b, bytes=a- or bytes=-n: one range",
            "If-None-Match": "the ETag held: 304 if unchanged",
            "If-Range": "serve the Range only if the ETag still matches",
        },
        errors=(416,), responses=_BLOB_OK)),
    Endpoint("POST", Paths.DEPLOYMENTS, "deployments.create", ADMIN, Doc(
        summary="Deploy a version to devices and groups", ok=201, returns=s.Deployment,
        body=s.DeploymentCreation,
        description="422: an unknown model, version or device, a removed device, an empty "
        "group, or no device at all.")),
    Endpoint("GET", Paths.DEPLOYMENTS, "deployments.list", READ, Doc(
        summary="List deployments", returns=s.DeploymentList, query=s.DeploymentFilter,
        errors=(404,))),
    Endpoint("GET", Paths.DEPLOYMENT, "deployments.get", viewable(ANY_DEVICE), Doc(
        summary="A deployment (admin, viewer, or a device in it)", returns=s.Deployment)),
    Endpoint("PUT", Paths.DEPLOYMENT_DEVICE, "deployments.set_device_state", own("device"), Doc(
        summary="Report the device's progress (the device)", returns=s.Deployment,
        body=s.DeploymentProgress, errors=(409,),
        description="404: the device is not in the deployment; 409: a step its state does not "
        "allow (deployed and failed are final).")),
    Endpoint("PUT", Paths.TASK_UPDATE, "tasks.update", ANY_DEVICE, Doc(
        summary="Send a fit task's trained parameters (the task's device)", ok=201,
        returns=TaskReceipt, blob=True, headers=_UPDATE_HEADERS, errors=(409, 410), also_ok=(200,),
        description="Idempotent: the same body again is answered 200 with the stored "
        "receipt; another result for a task that has one is 409, as is an upload_data task.")),
    Endpoint("PUT", Paths.TASK_DATA, "tasks.data", ANY_DEVICE, Doc(
        summary="Send an upload_data task's bytes: counted and discarded", ok=201,
        returns=TaskReceipt, blob=True, errors=(409, 410), also_ok=(200,),
        description="Idempotent, as an update is.")),
    Endpoint("PUT", Paths.TASK_RELAY, "tasks.relay", ANY_DEVICE, Doc(
        summary="Report a relay task done: where the group's aggregator serves the version",
        ok=201, returns=TaskReceipt, body=RelayResult, errors=(409, 410), also_ok=(200,),
        description="Idempotent, as an update is; 409 for a task that is not a relay task "
        "or that has another result already.")),
    Endpoint("POST", Paths.TASK_ERROR, "tasks.error", ANY_DEVICE, Doc(
        summary="Report that a task failed (the task's device)", returns=TaskReceipt,
        body=TaskFailure, errors=(409, 410))),
    Endpoint("POST", Paths.JOBS, "jobs.start", ADMIN, Doc(
        summary="Start a job", ok=202, returns=s.Job, body=s.JobStart, errors=(409, 501),
        description="422 naming `config`: a config the job manager refuses; 409: it cannot "
        "start one now; 501: the server runs no job manager.")),
    Endpoint("GET", Paths.JOBS, "jobs.list", READ, Doc(
        summary="List jobs", returns=s.JobList, errors=(501,))),
    Endpoint("GET", Paths.JOB, "jobs.get", READ, Doc(
        summary="A job", returns=s.Job, errors=(501,))),
    Endpoint("GET", Paths.JOB_EVENTS, "jobs.events", ADMIN, Doc(
        summary="A job's event log (events.csv: a row per transfer and compute step)",
        errors=(501,), responses={200: {"description": "The events, as the job wrote them",
                                        "content": {"text/csv": {"schema": {"type": "string"}}}}},
        description="404: no such job, or it has written no events yet.")),
    Endpoint("DELETE", Paths.JOB, "jobs.cancel", ADMIN, Doc(
        summary="Cancel a job", returns=s.Job, errors=(409, 501))),
)
# fmt: on


def route_path(template: str) -> str:
    """The protocol's path ``template`` as aiohttp routes it: each parameter with its pattern."""
    return re.sub(
        r"\{(\w+)\}",
        lambda m: f"{{{m[1]}:{PATH_PATTERNS[m[1]]}}}" if m[1] in PATH_PATTERNS else m[0],
        template,
    )


def setup_routes(app: web.Application, *, auth: Authenticator, **handlers: object) -> None:
    """Register :data:`ENDPOINTS` with ``app``; ``handlers`` are the handler objects by group."""
    for endpoint in ENDPOINTS:
        group, method = endpoint.handler.split(".")
        handler = getattr(handlers[group], method)
        app.router.add_route(
            endpoint.method, route_path(endpoint.path), auth.guarded(endpoint.access, handler)
        )
