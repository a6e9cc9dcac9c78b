"""Who is calling, and whether they may: bearer tokens and each route's access rule.

Four kinds of token (docs/protocol.md): the operator's admin token, an optional viewer token
that reads what the operator reads and changes nothing, the enrollment token every device holds
to register, and the device token each device gets when it registers. A request with no token
or a token nobody issued is ``401`` with ``WWW-Authenticate: Bearer``; a valid token outside its
scope is ``403``. Each route names its rule in ``routes.py``, where the roles it lists go into
the OpenAPI document; rules that need data (a task's owner, a deployment's devices) are checked
by the handler after this one.
"""

from __future__ import annotations

import enum
import hmac
from dataclasses import dataclass

from aiohttp import web

from fedsim.real.server.agents import AgentBook
from fedsim.real.server.errors import ApiError, Handler


class Role(str, enum.Enum):
    ADMIN = "admin"
    VIEWER = "viewer"
    ENROLLMENT = "enrollment"
    DEVICE = "device"


@dataclass(frozen=True, kw_only=True)
class Principal:
    """The caller; ``device`` is set for a device token only."""

    role: Role
    device: int | None = None

    @property
    def is_admin(self) -> bool:
        return self.role is Role.ADMIN

    @property
    def reads_all(self) -> bool:
        """Admin or viewer: may read every device's and deployment's records."""
        return self.role in (Role.ADMIN, Role.VIEWER)

    def may_act_as(self, device: int) -> bool:
        """Admin, or the device itself."""
        return self.is_admin or (self.role is Role.DEVICE and self.device == device)


PRINCIPAL = web.RequestKey("principal", Principal)


@dataclass(frozen=True, kw_only=True)
class Access:
    """Which roles may call a route; ``own`` names a path parameter that a device token's
    device must equal (admin passes regardless)."""

    roles: frozenset[Role] = frozenset()
    own: str | None = None

    @property
    def public(self) -> bool:
        return not self.roles


PUBLIC = Access()
ADMIN = Access(roles=frozenset({Role.ADMIN}))
# Registration: the handler decides which ids each role may register.
ENROLL = Access(roles=frozenset({Role.ADMIN, Role.ENROLLMENT, Role.DEVICE}))
ANY_DEVICE = Access(roles=frozenset({Role.ADMIN, Role.DEVICE}))


def own(param: str) -> Access:
    """Admin, or the device named by the path parameter ``param``."""
    return Access(roles=frozenset({Role.ADMIN, Role.DEVICE}), own=param)


def viewable(access: Access) -> Access:
    """``access`` and the viewer too: for routes that only read (``routes.py`` refuses it on
    any other method) and hold no secret."""
    return Access(roles=access.roles | {Role.VIEWER}, own=access.own)


READ = viewable(ADMIN)


class Authenticator:
    """Maps a bearer token to a :class:`Principal`."""

    def __init__(
        self,
        *,
        admin_token: str,
        enrollment_token: str,
        agents: AgentBook,
        viewer_token: str | None = None,
    ) -> None:
        self._admin = admin_token.encode()
        self._enrollment = enrollment_token.encode()
        # Without a viewer token nothing matches: a bearer token is never empty.
        self._viewer = viewer_token.encode() if viewer_token else b""
        self._agents = agents

    def identify(self, request: web.Request) -> Principal:
        token = _bearer(request)
        given = token.encode("utf-8", "surrogatepass")
        # Every comparison always runs, so timing does not tell which token came close.
        is_admin = hmac.compare_digest(given, self._admin)
        is_viewer = hmac.compare_digest(given, self._viewer)
        is_enrollment = hmac.compare_digest(given, self._enrollment)
        if is_admin:
            return Principal(role=Role.ADMIN)
        if is_viewer and self._viewer:
            return Principal(role=Role.VIEWER)
        if is_enrollment:
            return Principal(role=Role.ENROLLMENT)
        device = self._agents.device_for(token)
        if device is None:
            raise _unauthorized("unknown token", error="invalid_token")
        return Principal(role=Role.DEVICE, device=device)

    def guarded(self, access: Access, handler: Handler) -> Handler:
        """``handler`` behind ``access``: the caller is identified and stored as ``PRINCIPAL``."""
        if access.public:
            return handler

        async def guarded_handler(request: web.Request) -> web.StreamResponse:
            who = self.identify(request)
            if who.role not in access.roles:
                raise ApiError(403, f"a {who.role.value} token may not call this endpoint")
            if (
                access.own is not None
                and who.role is Role.DEVICE
                and int(request.match_info[access.own]) != who.device
            ):
                raise ApiError(403, f"device {who.device} may act only for itself")
            request[PRINCIPAL] = who
            return await handler(request)

        return guarded_handler


def _bearer(request: web.Request) -> str:
    header = request.headers.get("Authorization")
    if header is None:
        raise _unauthorized("this endpoint needs Authorization: Bearer <token>")
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise _unauthorized("Authorization must be 'Bearer <token>'", error="invalid_request")
    return token.strip()


def _unauthorized(message: str, *, error: str | None = None) -> ApiError:
    # RFC 6750: no credentials gets a bare challenge, bad ones name the error.
    challenge = 'Bearer realm="fedsim"' + (f', error="{error}"' if error else "")
    return ApiError(401, message, headers={"WWW-Authenticate": challenge})
