"""Every 4xx/5xx answer as JSON: ``{"error": {"status", "message", "field"}}``.

Handlers raise :class:`ApiError`; the registry's and the repository's own errors are mapped
here to their status codes, so the handlers do not repeat that mapping, as are the protocol's
(a header that does not parse is ``400``, one out of bounds ``422``), and aiohttp's own HTTP
errors (404 for an unknown path, 405) are rewritten into the same shape.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web

from fedsim.core.registry import (
    DeviceRemoved,
    InvalidTransition,
    RegistrationConflict,
    StaleCalibration,
    UnknownDevice,
)
from fedsim.core.repository import (
    DuplicateModel,
    InvalidDeploymentTransition,
    InvalidModelFile,
    UnknownDeployment,
    UnknownModel,
    UnknownVersion,
)
from fedsim.real.protocol import ProtocolError
from fedsim.real.server.responses import json_response

log = logging.getLogger("fedsim.server")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(Exception):
    """A refusal with its HTTP status; ``field`` names the offending input, if one."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        field: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field
        self.headers = dict(headers or {})


# Order matters only where classes nest; these do not.
_DOMAIN_STATUS: tuple[tuple[type[Exception], int], ...] = (
    (UnknownDevice, 404),
    (UnknownModel, 404),
    (UnknownVersion, 404),
    (UnknownDeployment, 404),
    (DeviceRemoved, 410),
    (RegistrationConflict, 409),
    (InvalidTransition, 409),
    (StaleCalibration, 409),
    (DuplicateModel, 409),
    (InvalidDeploymentTransition, 409),
    (InvalidModelFile, 422),
)

_DOMAIN_ERRORS = tuple(cls for cls, _ in _DOMAIN_STATUS)

# aiohttp's HTTP errors carry these, and they must survive the rewrite into JSON.
_KEPT_HEADERS = ("Allow", "WWW-Authenticate", "Retry-After", "Content-Range")


def error_response(
    status: int,
    message: str,
    field: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    body = {"error": {"status": status, "message": message, "field": field}}
    return json_response(body, status=status, headers=headers)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn whatever a handler raised into a JSON error response."""
    try:
        return await handler(request)
    except ApiError as e:
        return error_response(e.status, e.message, e.field, e.headers)
    except ProtocolError as e:
        return error_response(400 if e.malformed else 422, e.message, e.field)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        headers = {k: e.headers[k] for k in _KEPT_HEADERS if k in e.headers}
        return error_response(e.status, e.reason, headers=headers)
    except _DOMAIN_ERRORS as e:
        status = next(code for cls, code in _DOMAIN_STATUS if isinstance(e, cls))
        return error_response(status, str(e))
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        return error_response(500, "internal server error")
