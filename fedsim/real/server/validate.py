"""A small validator for request bodies against the JSON-Schema subset OpenAPI 3.0 uses.

The schemas in ``schemas.py`` are the single source: the OpenAPI document embeds them and the
handlers check bodies with them, so the two cannot drift. Supported keywords: ``type``
(object, array, string, integer, number, boolean), ``nullable``, ``properties``, ``required``,
``additionalProperties``, ``maxProperties``, ``items``, ``minItems``, ``maxItems``,
``uniqueItems``, ``minimum``, ``maximum``, ``minLength``, ``maxLength``, ``pattern``, ``enum``.
Anything else in a schema (``description``, ``format``) is documentation. A violation raises a 422
:class:`ApiError` whose ``field`` is the path to the value (``hardware.cpu_count``,
``devices[2]``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import cache
from typing import Any

from fedsim.real.server.errors import ApiError

_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
}


def validate(value: Any, schema: Mapping[str, Any], field: str = "") -> None:
    """Raise a 422 ``ApiError`` naming the first place where ``value`` breaks ``schema``."""
    where = field or "body"
    if value is None:
        if schema.get("nullable"):
            return
        raise _invalid(field, f"{where} must not be null")
    kind = schema.get("type")
    if kind is not None and not _is(value, kind):
        raise _invalid(field, f"{where} must be {_ARTICLE[kind]}, got {_json_type(value)}")
    if "enum" in schema and value not in schema["enum"]:
        options = ", ".join(map(repr, schema["enum"]))
        raise _invalid(field, f"{where} must be one of {options}, got {value!r}")
    if isinstance(value, dict):
        _object(value, schema, field)
    elif isinstance(value, list):
        _array(value, schema, field)
    elif isinstance(value, str):
        _string(value, schema, field)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        _number(value, schema, field)


_ARTICLE = {
    "object": "an object",
    "array": "an array",
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "true or false",
}


def _is(value: Any, kind: str) -> bool:
    # bool is an int in Python but not a number in JSON.
    if kind in ("integer", "number") and isinstance(value, bool):
        return False
    return isinstance(value, _TYPES[kind])


def _json_type(value: Any) -> str:
    for name in ("boolean", "integer", "number", "string", "array", "object"):
        if _is(value, name):
            return name
    return type(value).__name__


def _object(value: dict, schema: Mapping[str, Any], field: str) -> None:
    properties = schema.get("properties", {})
    for name in schema.get("required", ()):
        if name not in value:
            raise _invalid(_join(field, name), f"{_join(field, name)} is required")
    if "maxProperties" in schema and len(value) > schema["maxProperties"]:
        where = field or "body"
        raise _invalid(field, f"{where} takes at most {schema['maxProperties']} entries")
    extra = schema.get("additionalProperties", True)
    for name, item in value.items():
        path = _join(field, name)
        if name in properties:
            validate(item, properties[name], path)
        elif extra is False:
            raise _invalid(path, f"{path} is not a known field")
        elif isinstance(extra, Mapping):
            validate(item, extra, path)


def _array(value: list, schema: Mapping[str, Any], field: str) -> None:
    where = field or "body"
    if len(value) < schema.get("minItems", 0):
        raise _invalid(field, f"{where} needs at least {schema['minItems']} items")
    if "maxItems" in schema and len(value) > schema["maxItems"]:
        raise _invalid(field, f"{where} takes at most {schema['maxItems']} items")
    items = schema.get("items")
    for i, item in enumerate(value):
        if items is not None:
            validate(item, items, f"{field}[{i}]")
    if schema.get("uniqueItems"):
        seen: list[Any] = []
        for i, item in enumerate(value):
            if item in seen:
                raise _invalid(f"{field}[{i}]", f"{field}[{i}] repeats {item!r}")
            seen.append(item)


def _string(value: str, schema: Mapping[str, Any], field: str) -> None:
    where = field or "body"
    if len(value) < schema.get("minLength", 0):
        raise _invalid(field, f"{where} must have at least {schema['minLength']} characters")
    if "maxLength" in schema and len(value) > schema["maxLength"]:
        raise _invalid(field, f"{where} must have at most {schema['maxLength']} characters")
    if "pattern" in schema and not _pattern(schema["pattern"]).search(value):
        raise _invalid(field, f"{where} must match {schema['pattern']}, got {value!r}")


def _number(value: float, schema: Mapping[str, Any], field: str) -> None:
    where = field or "body"
    if "minimum" in schema and value < schema["minimum"]:
        raise _invalid(field, f"{where} must be >= {schema['minimum']}, got {value}")
    if "maximum" in schema and value > schema["maximum"]:
        raise _invalid(field, f"{where} must be <= {schema['maximum']}, got {value}")


@cache
def _pattern(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def _join(field: str, name: str) -> str:
    return f"{field}.{name}" if field else name


def _invalid(field: str, message: str) -> ApiError:
    return ApiError(422, message, field=field or None)
