"""Schemas of the JSON request bodies and of the JSON-valued headers.

Written in the JSON-Schema subset of OpenAPI 3.0: ``validate.validate`` checks bodies with them
and ``openapi.py`` publishes them, so what is documented is what is enforced. Top-level bodies
refuse unknown fields, so a misspelt field is an error rather than a silent default.
"""

from __future__ import annotations

from typing import Any

Schema = dict[str, Any]

INT64_MAX = 2**63 - 1  # SQLite's integer range: a larger id would fail in the store
DEVICE_ID: Schema = {"type": "integer", "minimum": 0, "maximum": INT64_MAX}
GROUP_ID: Schema = {"type": "integer", "minimum": 0, "maximum": INT64_MAX}
SHORT_TEXT: Schema = {"type": "string", "maxLength": 256}
NUMBERS: Schema = {"type": "object", "additionalProperties": {"type": "number"}}
"""Names to finite numbers: resources, metrics, timings (JSON has no NaN or Infinity)."""

MODEL_NAME: Schema = {
    "type": "string",
    "pattern": r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$",
    "description": "1-128 letters, digits, '.', '_', '-'; it appears in URLs",
}

REGISTER_DEVICE: Schema = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "id": {**DEVICE_ID, "description": "omit to have the server assign one"},
        "description": {"type": "string", "maxLength": 1024},
        "group": GROUP_ID,
        "group_description": {
            "type": "string",
            "maxLength": 1024,
            "description": "what the device's group is, e.g. its site; shown by GET /groups",
        },
        "id_in_group": {"type": "integer", "minimum": 0, "maximum": INT64_MAX, "nullable": True},
        "profile": SHORT_TEXT,
        "labels": {
            "type": "object",
            "maxProperties": 64,
            "additionalProperties": SHORT_TEXT,
        },
        "hardware": {
            "type": "object",
            "properties": {
                "cpu_count": {"type": "integer", "minimum": 1, "maximum": 1_000_000},
                "memory_bytes": {"type": "number", "minimum": 0},
                "gpu": {**SHORT_TEXT, "nullable": True},
            },
        },
        "endpoints": {
            "type": "object",
            "description": "URLs where the device serves metrics (agent, node_exporter)",
            "additionalProperties": {"type": "string", "maxLength": 2048, "pattern": "^https?://"},
        },
    },
}

HEARTBEAT: Schema = {
    "type": "object",
    "additionalProperties": False,
    "properties": {"resources": NUMBERS},
}

CREATE_MODEL: Schema = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name", "architecture"],
    "properties": {
        "name": MODEL_NAME,
        "architecture": {"type": "string", "minLength": 1, "maxLength": 256},
        "metadata": {"type": "object"},
    },
}

CREATE_DEPLOYMENT: Schema = {
    "type": "object",
    "additionalProperties": False,
    "required": ["model", "version"],
    "properties": {
        "model": MODEL_NAME,
        "version": {"type": "integer", "minimum": 1, "maximum": INT64_MAX},
        "devices": {"type": "array", "items": DEVICE_ID, "uniqueItems": True},
        "groups": {"type": "array", "items": GROUP_ID, "uniqueItems": True},
    },
}

DEPLOYMENT_STATE: Schema = {
    "type": "object",
    "additionalProperties": False,
    "required": ["state"],
    "properties": {"state": {"type": "string", "enum": ["downloading", "deployed", "failed"]}},
}

TASK_ERROR: Schema = {
    "type": "object",
    "additionalProperties": False,
    "required": ["reason"],
    "properties": {"reason": {"type": "string", "minLength": 1, "maxLength": 10_000}},
}

RELAY_RESULT: Schema = {
    "type": "object",
    "additionalProperties": False,
    "required": ["url"],
    "properties": {
        "url": {
            "type": "string",
            "maxLength": 2048,
            "pattern": "^https?://",
            "nullable": True,
            "description": "where the device serves the model it holds (null: a timing-only "
            "model, nothing to hold)",
        },
        "timings": {
            "type": "object",
            "additionalProperties": False,
            "description": "seconds the agent's steps took by its clock",
            "properties": {
                k: {"type": "number", "minimum": 0} for k in ("download_s", "train_s", "upload_s")
            },
        },
    },
}

START_JOB: Schema = {
    "type": "object",
    "additionalProperties": False,
    "required": ["kind", "config"],
    "properties": {
        "kind": {"type": "string", "enum": ["federated", "comparison"]},
        "config": {"type": "object"},
    },
}
