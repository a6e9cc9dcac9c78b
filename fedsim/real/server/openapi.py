"""The OpenAPI 3.1 document of the REST API, served at ``/api/v1/openapi.json``.

Generated, never written by hand: the paths from the route table (``routes.ENDPOINTS``), the
bodies and parameters from the pydantic models the handlers validate with (``schemas.py`` and
:mod:`fedsim.real.protocol`), so what is documented is what is enforced. OpenAPI 3.1's schemas
are JSON Schema 2020-12, which is what pydantic writes.
"""

from __future__ import annotations

import re
from dataclasses import fields
from typing import Any

from pydantic import BaseModel, TypeAdapter

import fedsim
from fedsim.core.limits import INT64_MAX, MAX_ABS_VALUE, MAX_FIGURE, MAX_ID, MAX_JSON_DEPTH
from fedsim.real.protocol import (
    HEADER_FORMATS,
    PATH_PATTERNS,
    Headers,
    Numbers,
    Timings,
)
from fedsim.real.server import schemas
from fedsim.real.server.auth import Role
from fedsim.real.server.config import ServerConfig
from fedsim.real.server.routes import ENDPOINTS, OCTETS, Endpoint

Obj = dict[str, Any]
REF = "#/components/schemas/{model}"

_STATUS = {
    400: "Malformed request: not JSON, or a header or body that does not parse",
    401: "No token, or a token nobody issued",
    403: "A valid token outside its scope",
    404: "No such resource",
    408: "The body stalled for longer than the server's read timeout",
    409: "Conflicts with the resource's state",
    410: "Gone: the device was removed, or the task cancelled",
    413: "Body over the server's limit",
    416: "Range not satisfiable",
    422: "A body, parameter or header that does not fit the schema; `field` names it",
    501: "The server runs no job manager",
}
_INTEGER_ID = {"type": "integer", "minimum": 0, "maximum": INT64_MAX}


class _Components:
    """The document's ``components.schemas``, filled as operations refer to models."""

    def __init__(self) -> None:
        self.schemas: dict[str, Obj] = {}

    def schema(self, shape: Any) -> Obj:
        """A reference to ``shape`` (a model) or its schema inline (another type)."""
        schema = TypeAdapter(shape).json_schema(ref_template=REF)
        for name, definition in schema.pop("$defs", {}).items():
            self.add(name, definition)
        if isinstance(shape, type) and issubclass(shape, BaseModel):
            self.add(shape.__name__, schema)
            return {"$ref": REF.format(model=shape.__name__)}
        return schema

    def add(self, name: str, schema: Obj) -> None:
        if self.schemas.setdefault(name, schema) != schema:
            raise ValueError(f"two schemas are named {name}; rename one of the models")


def _path_parameter(name: str) -> Obj:
    pattern = PATH_PATTERNS.get(name)
    if pattern == r"\d+":
        schema: Obj = dict(_INTEGER_ID)
    elif pattern is not None:
        schema = {"type": "string", "pattern": f"^(?:{pattern})$"}
    else:  # one segment, as aiohttp matches it
        schema = {"type": "string", "pattern": r"^[^/{}]+$"}
    return {"name": name, "in": "path", "required": True, "schema": schema}


def _query_parameters(model: type[BaseModel], components: _Components) -> list[Obj]:
    """The fields of ``model`` (a query model, not a body) as query parameters."""
    schema = model.model_json_schema(ref_template=REF)
    for name, definition in schema.get("$defs", {}).items():
        components.add(name, definition)
    parameters = []
    for name, info in model.model_fields.items():
        field_schema = {k: v for k, v in schema["properties"][name].items() if k != "title"}
        description = field_schema.pop("description", "")
        parameters.append(
            {
                "name": name,
                "in": "query",
                "required": info.is_required(),
                "schema": field_schema,
                "description": description,
            }
        )
    return parameters


_HEADER_SCHEMAS: dict[str, Obj] = {
    Headers.NUM_EXAMPLES: {"type": "integer", "minimum": 0, "maximum": INT64_MAX},
    Headers.TIMING_ONLY: {"type": "string", "enum": ["0", "1", "false", "true"]},
}
_JSON_HEADERS: dict[str, Any] = {Headers.METRICS: Numbers, Headers.TIMINGS: Timings}


def _header_parameter(name: str, components: _Components) -> Obj:
    """One of the protocol's headers; a JSON-valued one is declared as JSON content."""
    parameter: Obj = {"name": name, "in": "header", "description": HEADER_FORMATS[name]}
    parameter["required"] = name == Headers.NUM_EXAMPLES
    if name in _JSON_HEADERS:
        json_schema = components.schema(_JSON_HEADERS[name])
        parameter["content"] = {"application/json": {"schema": json_schema}}
    else:
        parameter["schema"] = _HEADER_SCHEMAS[name]
    return parameter


def _operation(endpoint: Endpoint, components: _Components) -> Obj:
    doc = endpoint.doc
    codes: set[int] = set(doc.errors)
    if not endpoint.access.public:
        codes |= {401, 403}
    parameters = [_path_parameter(name) for name in re.findall(r"\{(\w+)\}", endpoint.path)]
    if parameters:
        codes.add(404)
    if doc.query is not None:
        parameters += _query_parameters(doc.query, components)
        codes.add(422)
    for name in doc.headers:
        parameters.append(_header_parameter(name, components))
        codes |= {400, 422}
    for name, description in doc.request_headers.items():
        parameters.append(
            {
                "name": name,
                "in": "header",
                "required": False,
                "schema": {"type": "string"},
                "description": description,
            }
        )
    operation: Obj = {"summary": doc.summary, "operationId": _operation_id(endpoint)}
    if doc.description:
        operation["description"] = doc.description
    if endpoint.access.public:
        operation["security"] = []
    else:
        # OpenAPI 3.1 lets a requirement of a non-OAuth scheme list role names.
        roles = [role.value for role in Role if role in endpoint.access.roles]
        operation["security"] = [{"bearer": roles}]
        operation["x-fedsim-roles"] = roles
    if parameters:
        operation["parameters"] = parameters
    if doc.body is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": components.schema(doc.body)}},
        }
        codes |= {400, 408, 413, 422}
    if doc.blob:
        operation["requestBody"] = {
            "required": not doc.blob_optional,
            "content": {OCTETS: {"schema": {"type": "string", "format": "binary"}}},
        }
        codes |= {400, 408, 413}
    responses: Obj = {}
    ok: Obj = {"description": "OK" if doc.ok == 200 else "Done"}
    if doc.returns is not None:
        ok["content"] = {"application/json": {"schema": components.schema(doc.returns)}}
    responses[str(doc.ok)] = ok
    for code in doc.also_ok:
        responses[str(code)] = {**ok, "description": "The same request again: the stored answer"}
    for code, answer in doc.responses.items():
        responses[str(code)] = dict(answer)
    for code in sorted(codes):
        responses[str(code)] = {"$ref": f"#/components/responses/E{code}"}
    operation["responses"] = dict(sorted(responses.items()))
    return operation


def _operation_id(endpoint: Endpoint) -> str:
    group, method = endpoint.handler.split(".")
    root = "" if endpoint.path.startswith("/api/") else "_root"
    return f"{group}_{method}{root}"


def limits(config: ServerConfig | None = None) -> Obj:
    """The limits on what a request may hold, as ``info["x-fedsim-limits"]`` states them.

    From :mod:`fedsim.core.limits` and ``config`` (the server's sizes and timeouts; without
    one, ``ServerConfig``'s defaults). The fields' own bounds are in the schemas besides.
    """
    values = {
        f.name: getattr(config, f.name) if config else f.default for f in fields(ServerConfig)
    }
    return {
        "json": {
            "max_bytes": values["max_json_bytes"],
            "max_depth": MAX_JSON_DEPTH,
            "integers": {"minimum": -INT64_MAX, "maximum": INT64_MAX},
            "numbers": "finite: NaN, Infinity and literals that overflow (1e999) are refused",
            "duplicate_keys": "refused",
            "text": "no control characters (U+0000-U+001F, U+007F) but tab, LF and CR, "
            "in values and keys",
            "refusal": "400 naming where, for a body; the same for a JSON-valued header",
        },
        "blob_max_bytes": values["max_blob_bytes"],
        "ids": {
            "minimum": 0,
            "maximum": MAX_ID,
            "description": "an id a body or query chooses or names (a device's, a group's): "
            "exact in a double; the server assigns device ids in the same range",
        },
        "path_ids": {
            "maximum": INT64_MAX,
            "description": "an integer in a path past the store's range: 404",
        },
        "figures": {
            "minimum": -MAX_FIGURE,
            "maximum": MAX_FIGURE,
            "description": "a heartbeat's resources; finite",
        },
        "updates": {
            "num_examples": "at most what the update's task asked for (samples x epochs of a "
            "fit task, num_examples of a forward task); 422 naming the header",
            "max_abs_value": MAX_ABS_VALUE,
            "values": "finite and within max_abs_value; 422 naming the array",
        },
        "served_numbers": "non-finite figures the server holds (a diverged loss) are "
        "served as null",
        "timeouts_s": {
            name: value for name, value in values.items() if name.endswith("_timeout_s")
        },
    }


def build_openapi(config: ServerConfig | None = None) -> dict[str, Any]:
    """The OpenAPI 3.1 document of this server's API, from :data:`routes.ENDPOINTS`, with the
    limits of ``config`` (see :func:`limits`)."""
    components = _Components()
    error = components.schema(schemas.Error)
    paths: dict[str, Obj] = {}
    for endpoint in ENDPOINTS:
        paths.setdefault(endpoint.path, {})[endpoint.method.lower()] = _operation(
            endpoint, components
        )
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "fedsim server",
            "version": fedsim.__version__,
            "description": "Device Manager and AI Model Repository of the fedsim testbed; "
            "see docs/protocol.md. Errors are JSON: "
            '{"error": {"status", "message", "field"}}.',
            "x-fedsim-limits": limits(config),
        },
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "One of the server's tokens. Each operation lists, in its "
                    "security requirement and in x-fedsim-roles, the roles whose token it "
                    "takes, any one of them: admin, viewer (reads, never writes), enrollment, "
                    "device (on a device's own paths only, where a path names one).",
                }
            },
            "responses": {
                f"E{code}": {
                    "description": text,
                    "content": {"application/json": {"schema": error}},
                }
                for code, text in _STATUS.items()
            },
            "schemas": dict(sorted(components.schemas.items())),
        },
    }
