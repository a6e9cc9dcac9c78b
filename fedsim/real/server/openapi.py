"""The OpenAPI 3.0 document of the REST API, served at ``/api/v1/openapi.json``.

Request bodies use the schemas the handlers validate with (``schemas.py``); a test walks the
app's router and checks that every route is documented here and nothing else is.
"""

from __future__ import annotations

from typing import Any

import fedsim
from fedsim.real.server import schemas as s

Obj = dict[str, Any]

_ERRORS = {
    400: "Malformed request: not JSON, or a header that does not parse",
    401: "No token, or a token nobody issued",
    403: "A valid token outside its scope",
    404: "No such resource",
    408: "The body stalled for longer than the server's read timeout",
    409: "Conflicts with the resource's state",
    410: "Gone: the device was removed, or the task cancelled",
    413: "Body over the server's limit",
    416: "Range not satisfiable",
    422: "Body or parameter does not fit the schema; `field` names it",
    501: "The server runs no job manager",
}


def _ref(name: str) -> Obj:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: Obj) -> Obj:
    return {"application/json": {"schema": schema}}


def _op(
    summary: str,
    *,
    ok: int = 200,
    returns: Obj | None = None,
    body: Obj | None = None,
    blob_body: bool = False,
    params: list[Obj] | None = None,
    errors: tuple[int, ...] = (),
    public: bool = False,
    description: str = "",
) -> Obj:
    responses: Obj = {str(ok): {"description": "OK" if ok < 300 else "Done"}}
    if returns is not None:
        responses[str(ok)]["content"] = _json(returns)
    codes = set(errors) | ({401, 403} if not public else set())
    if body is not None:
        codes |= {400, 413, 422}
    for code in sorted(codes):
        responses[str(code)] = {"$ref": f"#/components/responses/E{code}"}
    operation: Obj = {"summary": summary, "responses": responses}
    if description:
        operation["description"] = description
    if public:
        operation["security"] = []
    if params:
        operation["parameters"] = params
    if body is not None:
        operation["requestBody"] = {"required": True, "content": _json(body)}
    if blob_body:
        operation["requestBody"] = {
            "required": True,
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
            },
        }
    return operation


def _path(name: str, schema: Obj | None = None) -> Obj:
    return {"name": name, "in": "path", "required": True, "schema": schema or {"type": "string"}}


def _query(name: str, schema: Obj, description: str) -> Obj:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": schema,
        "description": description,
    }


def _header(name: str, schema: Obj, description: str, *, required: bool = False) -> Obj:
    return {
        "name": name,
        "in": "header",
        "required": required,
        "schema": schema,
        "description": description,
    }


ID = _path("id", {"type": "integer", "minimum": 0})
NAME = _path("name", s.MODEL_NAME)
VERSION = _path(
    "version",
    {"type": "string", "pattern": r"^(\d+|latest)$", "description": "a number, or latest"},
)
TASK = _path("task_id")
JOB = _path("job_id")
JSON_HEADER = {"type": "string", "description": "a JSON object of finite numbers"}
METRICS_HEADER = _header("X-Fedsim-Metrics", JSON_HEADER, 'e.g. {"loss": 0.2}')


def _components() -> Obj:
    number_map = {"type": "object", "additionalProperties": {"type": "number"}}
    device = {
        "type": "object",
        "properties": {
            "id": {"type": "integer"},
            "description": {"type": "string"},
            "group": {"type": "integer"},
            "group_description": {"type": "string"},
            "id_in_group": {"type": "integer", "nullable": True},
            "profile": {"type": "string"},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            "state": {
                "type": "string",
                "enum": ["registered", "online", "busy", "offline", "removed"],
            },
            "registered_at": {"type": "number"},
            "last_seen": {"type": "number", "nullable": True},
            "resources": number_map,
            "removed_at": {"type": "number", "nullable": True},
            "hardware": {"type": "object"},
            "endpoints": {"type": "object", "additionalProperties": {"type": "string"}},
        },
    }
    model = {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "architecture": {"type": "string"},
            "metadata": {"type": "object"},
            "created_at": {"type": "number"},
        },
    }
    version = {
        "type": "object",
        "properties": {
            "model": {"type": "string"},
            "version": {"type": "integer"},
            "sha256": {"type": "string"},
            "size": {"type": "integer"},
            "parent": {"type": "integer", "nullable": True},
            "round": {"type": "integer", "nullable": True},
            "metrics": number_map,
            "created_at": {"type": "number"},
            "url": {"type": "string", "description": "where to download the bytes"},
        },
    }
    stats = {
        "type": "object",
        "properties": {
            "model": {"type": "string"},
            "versions": {"type": "integer"},
            "deployments": {"type": "integer"},
            "total_size": {"type": "integer"},
            "latest_version": {"type": "integer", "nullable": True},
            "latest_size": {"type": "integer", "nullable": True},
            "rounds": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "round": {"type": "integer"},
                        "version": {"type": "integer"},
                        "metrics": number_map,
                    },
                },
            },
        },
    }
    deployment = {
        "type": "object",
        "properties": {
            "id": {"type": "integer"},
            "model": {"type": "string"},
            "version": {"type": "integer"},
            "devices": {
                "type": "object",
                "description": "device id -> pending | downloading | deployed | failed",
                "additionalProperties": {"type": "string"},
            },
            "created_at": {"type": "number"},
        },
    }
    task = {
        "type": "object",
        "description": "Work for one device; see docs/protocol.md",
        "properties": {
            "id": {"type": "string"},
            "kind": {"type": "string", "enum": ["fit", "upload_data", "relay", "forward"]},
            "model": {"type": "object", "nullable": True},
            "samples": {"type": "integer"},
            "epochs": {"type": "integer"},
            "batch_size": {"type": "integer"},
            "flops": {"type": "number"},
            "update_nbytes": {"type": "integer"},
            "nbytes": {"type": "integer"},
            "num_examples": {"type": "integer", "description": "forward: the group's examples"},
            "config": {"type": "object"},
            "drop": {
                "type": "boolean",
                "description": "fit: train, then send nothing (an injected dropout)",
            },
            "token": {
                "type": "string",
                "description": "relay: what the group's members present to fetch the model",
            },
        },
    }
    result = {
        "type": "object",
        "properties": {
            "task": {"type": "string"},
            "device": {"type": "integer"},
            "state": {"type": "string"},
            "received_at": {"type": "number"},
            "nbytes": {"type": "integer"},
            "sha256": {"type": "string", "nullable": True},
            "num_examples": {"type": "integer"},
            "error": {"type": "string", "nullable": True},
        },
    }
    error = {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["status", "message"],
                "properties": {
                    "status": {"type": "integer"},
                    "message": {"type": "string"},
                    "field": {"type": "string", "nullable": True},
                },
            }
        },
    }
    job = {"type": "object", "description": "As the job manager reports it: id, kind, state, ..."}
    nullable_numbers = {"type": "array", "items": {"type": "number", "nullable": True}}
    monitoring = {
        "type": "object",
        "properties": {
            "source": {"type": "string", "enum": ["prometheus", "heartbeats"]},
            "window_s": {"type": "integer"},
            "step_s": {"type": "number"},
            "warning": {"type": "string"},
            "devices": {
                "type": "object",
                "description": "device id -> series, every array aligned with t",
                "additionalProperties": {
                    "type": "object",
                    "properties": {
                        "t": {"type": "array", "items": {"type": "number"}},
                        "cpu_busy": nullable_numbers,
                        "memory_available": nullable_numbers,
                        "bandwidth": nullable_numbers,
                        "busy": nullable_numbers,
                    },
                },
            },
        },
    }
    target_groups = {
        "type": "array",
        "description": "Prometheus http_sd target groups: one per device and declared endpoint",
        "items": {
            "type": "object",
            "properties": {
                "targets": {
                    "type": "array",
                    "items": {"type": "string", "description": "host:port"},
                },
                "labels": {
                    "type": "object",
                    "description": "fedsim_device, fedsim_group, fedsim_role (the endpoint's "
                    "name: agent, node_exporter), __scheme__, __metrics_path__",
                    "additionalProperties": {"type": "string"},
                },
            },
        },
    }

    def listing(key: str, item: str) -> Obj:
        return {"type": "object", "properties": {key: {"type": "array", "items": _ref(item)}}}

    return {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "responses": {
            f"E{code}": {"description": text, "content": _json(_ref("Error"))}
            for code, text in _ERRORS.items()
        },
        "schemas": {
            "Error": error,
            "DeviceRecord": device,
            "Registration": {
                "type": "object",
                "properties": {"device": _ref("DeviceRecord"), "token": {"type": "string"}},
            },
            "DeviceList": listing("devices", "DeviceRecord"),
            "Groups": {
                "type": "object",
                "properties": {
                    "groups": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {
                                "id": {"type": "integer"},
                                "description": {"type": "string"},
                                "devices": {"type": "integer"},
                                "online": {"type": "integer"},
                            },
                        },
                    }
                },
            },
            "ModelInfo": model,
            "ModelDetail": {
                "allOf": [_ref("ModelInfo"), {"type": "object", "properties": {"stats": stats}}]
            },
            "ModelList": listing("models", "ModelInfo"),
            "VersionInfo": version,
            "VersionList": listing("versions", "VersionInfo"),
            "Deployment": deployment,
            "DeploymentList": listing("deployments", "Deployment"),
            "Task": task,
            "TaskResult": result,
            "Job": job,
            "Monitoring": monitoring,
            "JobList": listing("jobs", "Job"),
            "TargetGroups": target_groups,
            "Health": {
                "type": "object",
                "properties": {
                    "status": {"type": "string"},
                    "version": {"type": "string"},
                    "devices": {"type": "integer"},
                    "uptime_s": {"type": "number"},
                },
            },
            "RegisterDevice": s.REGISTER_DEVICE,
            "Heartbeat": s.HEARTBEAT,
            "CreateModel": s.CREATE_MODEL,
            "CreateDeployment": s.CREATE_DEPLOYMENT,
            "DeploymentState": s.DEPLOYMENT_STATE,
            "TaskError": s.TASK_ERROR,
            "RelayResult": s.RELAY_RESULT,
            "StartJob": s.START_JOB,
        },
    }


def _paths() -> Obj:
    api = "/api/v1"
    update_headers = [
        _header(
            "X-Fedsim-Num-Examples",
            {"type": "integer", "minimum": 0},
            "samples trained on",
            required=True,
        ),
        METRICS_HEADER,
        _header("X-Fedsim-Timings", JSON_HEADER, 'e.g. {"download_s": 0.1, "train_s": 2.0}'),
        _header(
            "X-Fedsim-Timing-Only",
            {"type": "string", "enum": ["0", "1"]},
            "1: the body is padding, not parameters",
        ),
    ]
    blob_headers = [
        _header("Range", {"type": "string"}, "bytes=a-b, bytes=a- or bytes=-n: one range"),
        _header("If-None-Match", {"type": "string"}, "the ETag held: 304 if unchanged"),
        _header("If-Range", {"type": "string"}, "serve the Range only if the ETag still matches"),
    ]
    blob_ok = {
        "description": "The bytes",
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    }
    blob = _op("Download a version's safetensors bytes (streamed)", returns=None, errors=(404, 416))
    blob["responses"]["200"] = {
        **blob_ok,
        "headers": {"ETag": {"schema": {"type": "string"}, "description": '"<sha256>"'}},
    }
    blob["responses"]["206"] = {**blob_ok, "description": "The requested range"}
    blob["responses"]["304"] = {"description": "Not modified"}
    metrics = _op("Prometheus metrics", public=True)
    metrics["responses"]["200"]["content"] = {"text/plain": {"schema": {"type": "string"}}}
    poll = _op(
        "Long-poll for the device's next task",
        returns=_ref("Task"),
        params=[
            ID,
            _query(
                "wait",
                {"type": "number", "minimum": 0},
                "seconds to wait (at most the server's maximum, 60 by default); 0 by default",
            ),
        ],
        errors=(404, 410, 422),
    )
    poll["responses"]["204"] = {"description": "No task within the wait"}
    return {
        f"{api}/health": {
            "get": _op("Liveness and a summary", returns=_ref("Health"), public=True)
        },
        f"{api}/openapi.json": {
            "get": _op("This document", returns={"type": "object"}, public=True)
        },
        "/metrics": {"get": metrics},
        "/health": {
            "get": _op(
                "Liveness and a summary, as /api/v1/health (for container health checks)",
                returns=_ref("Health"),
                public=True,
            )
        },
        "/dashboard": {"get": _op("The dashboard: redirects to /dashboard/", ok=308, public=True)},
        "/dashboard/": {
            "get": _op(
                "The dashboard's page (HTML); its data comes from this API with the admin token",
                public=True,
            )
        },
        "/dashboard/{path}": {
            "get": {
                **_op("A static file of the dashboard", public=True, errors=(404,)),
                "parameters": [
                    {"name": "path", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
            }
        },
        f"{api}/devices": {
            "post": _op(
                "Register a device (enrollment token), or re-register one (its token or admin)",
                ok=201,
                returns=_ref("Registration"),
                body=_ref("RegisterDevice"),
                errors=(409,),
            ),
            "get": _op(
                "List devices (admin)",
                returns=_ref("DeviceList"),
                errors=(422,),
                params=[
                    _query("group", {"type": "integer", "minimum": 0}, "only this group"),
                    _query(
                        "state",
                        {
                            "type": "string",
                            "enum": ["registered", "online", "busy", "offline", "removed"],
                        },
                        "only this state",
                    ),
                ],
            ),
        },
        f"{api}/devices/{{id}}": {
            "parameters": [ID],
            "get": _op(
                "A device (admin or the device)", returns=_ref("DeviceRecord"), errors=(404,)
            ),
            "delete": _op(
                "Remove a device for good (admin)", returns=_ref("DeviceRecord"), errors=(404, 410)
            ),
        },
        f"{api}/devices/{{id}}/heartbeat": {
            "put": _op(
                "Report liveness and resources (the device)",
                returns=_ref("DeviceRecord"),
                body=_ref("Heartbeat"),
                params=[ID],
                errors=(404, 410),
            )
        },
        f"{api}/devices/{{id}}/tasks": {"get": poll},
        f"{api}/groups": {"get": _op("Groups with device counts (admin)", returns=_ref("Groups"))},
        f"{api}/monitoring": {
            "get": _op(
                "Each device's CPU, memory, bandwidth and activity over a window (admin)",
                returns=_ref("Monitoring"),
                params=[
                    _query(
                        "window",
                        {"type": "integer", "minimum": 10, "maximum": 86400},
                        "seconds back from now (default 900)",
                    ),
                    _query("group", {"type": "integer", "minimum": 0}, "only this group"),
                    _query("device", {"type": "integer", "minimum": 0}, "only this device"),
                ],
                errors=(422,),
                description="From Prometheus when the server was started with "
                "--prometheus-url (range queries), else from the server's own heartbeat "
                "history; a Prometheus that fails is reported in `warning` and the heartbeats "
                "are served.",
            )
        },
        f"{api}/probe": {
            "get": {
                **_op(
                    "Bandwidth probe: download `bytes` zero bytes (any device)",
                    params=[
                        _query(
                            "bytes",
                            {"type": "integer", "minimum": 0},
                            "how many bytes to send (default 1 MiB)",
                        )
                    ],
                    errors=(400, 422),
                ),
            },
            "put": _op(
                "Bandwidth probe: upload bytes that are counted and discarded (any device)",
                blob_body=True,
                errors=(413,),
            ),
        },
        f"{api}/sd/targets": {
            "get": _op(
                "Prometheus HTTP service discovery of the devices' metrics endpoints (admin)",
                returns=_ref("TargetGroups"),
                description="For http_sd_configs with `authorization: {credentials_file: ...}` "
                "holding the admin token. Removed devices are left out; offline ones stay, so an "
                "endpoint that stopped answering shows as down.",
            )
        },
        f"{api}/models": {
            "post": _op(
                "Register a model (admin)",
                ok=201,
                returns=_ref("ModelInfo"),
                body=_ref("CreateModel"),
                errors=(409,),
            ),
            "get": _op("List models", returns=_ref("ModelList")),
        },
        f"{api}/models/{{name}}": {
            "get": _op(
                "A model with its statistics",
                returns=_ref("ModelDetail"),
                params=[NAME],
                errors=(404,),
            ),
        },
        f"{api}/models/{{name}}/versions": {
            "parameters": [NAME],
            "post": _op(
                "Upload a version (admin): safetensors bytes, streamed to disk",
                ok=201,
                returns=_ref("VersionInfo"),
                blob_body=True,
                errors=(400, 404, 408, 413, 422),
                params=[
                    _query(
                        "parent", {"type": "integer", "minimum": 1}, "the version it derives from"
                    ),
                    _query(
                        "round", {"type": "integer", "minimum": 0}, "the round that produced it"
                    ),
                    METRICS_HEADER,
                ],
            ),
            "get": _op("A model's versions", returns=_ref("VersionList"), errors=(404,)),
        },
        f"{api}/models/{{name}}/versions/{{version}}": {
            "get": _op(
                "A version", returns=_ref("VersionInfo"), params=[NAME, VERSION], errors=(404,)
            ),
        },
        f"{api}/models/{{name}}/versions/{{version}}/blob": {
            "parameters": [NAME, VERSION, *blob_headers],
            "get": blob,
        },
        f"{api}/deployments": {
            "post": _op(
                "Deploy a version to devices and groups (admin)",
                ok=201,
                returns=_ref("Deployment"),
                body=_ref("CreateDeployment"),
            ),
            "get": _op(
                "List deployments (admin)",
                returns=_ref("DeploymentList"),
                errors=(404, 422),
                params=[_query("model", s.MODEL_NAME, "only this model's")],
            ),
        },
        f"{api}/deployments/{{id}}": {
            "get": _op(
                "A deployment (admin or a device in it)",
                returns=_ref("Deployment"),
                params=[ID],
                errors=(404,),
            ),
        },
        f"{api}/deployments/{{id}}/devices/{{device}}": {
            "put": _op(
                "Report the device's progress (the device)",
                returns=_ref("Deployment"),
                body=_ref("DeploymentState"),
                errors=(404, 409),
                params=[ID, _path("device", {"type": "integer", "minimum": 0})],
            )
        },
        f"{api}/tasks/{{task_id}}/update": {
            "put": _op(
                "Send a task's trained parameters (the task's device)",
                ok=201,
                returns=_ref("TaskResult"),
                blob_body=True,
                params=[TASK, *update_headers],
                errors=(400, 404, 408, 409, 410, 413, 422),
                description="Idempotent: the same body again is answered 200 with the stored "
                "result.",
            )
        },
        f"{api}/tasks/{{task_id}}/data": {
            "put": _op(
                "Send an upload_data task's bytes: counted and discarded",
                ok=201,
                returns=_ref("TaskResult"),
                blob_body=True,
                params=[TASK],
                errors=(400, 404, 408, 409, 410, 413),
            )
        },
        f"{api}/tasks/{{task_id}}/relay": {
            "put": _op(
                "Say where a relay task's model is held for the group (the task's device)",
                ok=201,
                returns=_ref("TaskResult"),
                body=_ref("RelayResult"),
                params=[TASK],
                errors=(404, 409, 410),
                description="Idempotent: the same body again is answered 200 with the stored "
                "result.",
            )
        },
        f"{api}/tasks/{{task_id}}/error": {
            "post": _op(
                "Report that a task failed (the task's device)",
                returns=_ref("TaskResult"),
                body=_ref("TaskError"),
                params=[TASK],
                errors=(404, 409, 410),
            )
        },
        f"{api}/jobs": {
            "post": _op(
                "Start a job (admin)",
                ok=202,
                returns=_ref("Job"),
                body=_ref("StartJob"),
                errors=(409, 501),
            ),
            "get": _op("List jobs (admin)", returns=_ref("JobList"), errors=(501,)),
        },
        f"{api}/jobs/{{job_id}}": {
            "parameters": [JOB],
            "get": _op("A job (admin)", returns=_ref("Job"), errors=(404, 501)),
            "delete": _op("Cancel a job (admin)", returns=_ref("Job"), errors=(404, 409, 501)),
        },
    }


def build_openapi() -> dict[str, Any]:
    """The OpenAPI 3.0 document of this server's API."""
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "fedsim server",
            "version": fedsim.__version__,
            "description": "Device Manager and AI Model Repository of the fedsim testbed; "
            "see docs/protocol.md.",
        },
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "components": _components(),
        "paths": _paths(),
    }
