"""The Device Manager's endpoints: registration, heartbeats, measured profiles and requests for
them, listing, removal, groups."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiohttp import web

from fedsim.core.registry import (
    DeviceRecord,
    DeviceRegistry,
    DeviceRemoved,
    DeviceState,
    UnknownDevice,
)
from fedsim.real.protocol import CalibrationFailure, MeasuredProfile
from fedsim.real.server.agents import AgentBook
from fedsim.real.server.auth import PRINCIPAL, Role
from fedsim.real.server.config import ServerConfig
from fedsim.real.server.errors import ApiError
from fedsim.real.server.handlers.common import json_body, path_int, query
from fedsim.real.server.history import HeartbeatHistory
from fedsim.real.server.offload import Offload
from fedsim.real.server.responses import json_response
from fedsim.real.server.schemas import (
    CalibrationOrder,
    DeviceFilter,
    DeviceRegistration,
    Heartbeat,
)
from fedsim.real.server.serialize import device_json


class DeviceHandlers:
    """``/devices`` and ``/groups``."""

    def __init__(
        self,
        *,
        registry: DeviceRegistry,
        agents: AgentBook,
        offload: Offload,
        config: ServerConfig,
        history: HeartbeatHistory | None = None,
    ) -> None:
        self._registry = registry
        self._history = history
        self._agents = agents
        self._offload = offload
        self._config = config
        # Deciding who may register an id and registering it must be one step, or two
        # enrollments of the same new id could both succeed.
        self._registering = asyncio.Lock()

    async def register(self, request: web.Request) -> web.Response:
        who = request[PRINCIPAL]
        body = await json_body(request, DeviceRegistration, self._config)
        id = body.id
        hardware = None if body.hardware is None else body.hardware.model_dump(exclude_unset=True)
        async with self._registering:
            existing = await self._offload(self._find, id)
            if existing is not None and existing.state is DeviceState.REMOVED:
                raise ApiError(409, f"device {id} was removed; ids are not reused", field="id")
            if who.role is Role.DEVICE and id != who.device:
                raise ApiError(403, f"device {who.device} may re-register only itself")
            if who.role is Role.ENROLLMENT and existing is not None:
                raise ApiError(
                    403,
                    f"device {id} is registered; registering it again takes its device token",
                )
            try:
                record = await self._offload(
                    self._registry.register,
                    id=id,
                    description=body.description,
                    group=body.group,
                    id_in_group=body.id_in_group,
                    profile=body.profile,
                    labels=dict(body.labels),
                )
            except DeviceRemoved as e:
                raise ApiError(409, str(e), field="id") from None
            except ValueError as e:
                raise ApiError(422, str(e)) from None
            token = await self._offload(
                self._agents.enroll,
                record.id,
                hardware=hardware,
                endpoints=dict(body.endpoints),
                group_description=body.group_description,
                address=request.remote or "",
            )
        return json_response({"device": self._json(record), "token": token}, status=201)

    async def list(self, request: web.Request) -> web.Response:
        wanted = query(request, DeviceFilter)
        records = await self._offload(self._registry.list, group=wanted.group, state=wanted.state)
        return json_response({"devices": [self._json(r) for r in records]})

    async def get(self, request: web.Request) -> web.Response:
        record = await self._offload(self._registry.get, path_int(request, "id"))
        return json_response(self._json(record))

    async def heartbeat(self, request: web.Request) -> web.Response:
        id = path_int(request, "id")
        body = await json_body(request, Heartbeat, self._config)
        record = await self._offload(self._registry.heartbeat, id, body.resources)
        if self._history is not None:
            self._history.record(id, time.time(), record.resources)
        return json_response(self._json(record))

    async def profile(self, request: web.Request) -> web.Response:
        id = path_int(request, "id")
        body = await json_body(request, MeasuredProfile, self._config)
        document = body.model_dump(mode="json", exclude_none=True)
        record = await self._offload(self._registry.report_profile, id, document)
        return json_response(self._json(record))

    async def calibrate(self, request: web.Request) -> web.Response:
        id = path_int(request, "id")
        body = await json_body(request, CalibrationOrder, self._config)
        record = await self._offload(self._registry.request_calibration, id, body.model)
        return json_response(self._json(record), status=202)

    async def calibration_failure(self, request: web.Request) -> web.Response:
        id = path_int(request, "id")
        body = await json_body(request, CalibrationFailure, self._config)
        record = await self._offload(
            self._registry.fail_calibration, id, body.requested_at, body.reason
        )
        return json_response(self._json(record))

    async def remove(self, request: web.Request) -> web.Response:
        record = await self._offload(self._registry.remove, path_int(request, "id"))
        if self._history is not None:
            self._history.forget(record.id)
        return json_response(self._json(record))

    async def groups(self, request: web.Request) -> web.Response:
        records = await self._offload(self._registry.list)
        groups: dict[int, dict[str, Any]] = {}
        # The latest registration that describes the group names it.
        for r in sorted(records, key=lambda r: r.registered_at):
            entry = groups.setdefault(
                r.group, {"id": r.group, "description": "", "devices": 0, "online": 0}
            )
            described = self._agents.details(r.id).group_description
            if described:
                entry["description"] = described
            entry["devices"] += 1
            # Busy devices are heartbeating too: "online" counts every live device.
            entry["online"] += r.state in (DeviceState.ONLINE, DeviceState.BUSY)
        return json_response({"groups": [groups[g] for g in sorted(groups)]})

    def _find(self, id: int | None) -> DeviceRecord | None:
        if id is None:
            return None
        try:
            return self._registry.get(id)
        except UnknownDevice:
            return None

    def _json(self, record: DeviceRecord) -> dict:
        return device_json(record, self._agents.details(record.id))
