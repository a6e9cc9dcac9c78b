"""Deployments: one version sent to devices, each reporting its own progress."""

from __future__ import annotations

from aiohttp import web

from fedsim.core.registry import DeviceRegistry, DeviceState, UnknownDevice
from fedsim.core.repository import ModelRepository, UnknownModel, UnknownVersion
from fedsim.real.server.auth import PRINCIPAL
from fedsim.real.server.config import ServerConfig
from fedsim.real.server.errors import ApiError
from fedsim.real.server.handlers.common import json_body, path_int, query
from fedsim.real.server.offload import Offload
from fedsim.real.server.responses import json_response
from fedsim.real.server.schemas import DeploymentCreation, DeploymentFilter, DeploymentProgress
from fedsim.real.server.serialize import deployment_json


class DeploymentHandlers:
    """``/deployments`` and the per-device state under it."""

    def __init__(
        self,
        *,
        repository: ModelRepository,
        registry: DeviceRegistry,
        offload: Offload,
        config: ServerConfig,
    ) -> None:
        self._repository = repository
        self._registry = registry
        self._offload = offload
        self._config = config

    async def create(self, request: web.Request) -> web.Response:
        body = await json_body(request, DeploymentCreation, self._config)
        try:
            await self._offload(self._repository.get_version, body.model, body.version)
        except UnknownModel as e:
            raise ApiError(422, str(e), field="model") from None
        except UnknownVersion as e:
            raise ApiError(422, str(e), field="version") from None
        devices = await self._offload(self._members, body.devices, body.groups)
        deployment = await self._offload(
            self._repository.create_deployment, body.model, body.version, devices
        )
        return json_response(deployment_json(deployment), status=201)

    def _members(self, devices: list[int], groups: list[int]) -> list[int]:
        """The listed devices and those of the listed groups; 422 for any not deployable."""
        members = list(devices)
        for i, id in enumerate(devices):
            try:
                record = self._registry.get(id)
            except UnknownDevice:
                raise ApiError(422, f"no device {id}", field=f"devices[{i}]") from None
            if record.state is DeviceState.REMOVED:
                raise ApiError(422, f"device {id} was removed", field=f"devices[{i}]")
        for i, group in enumerate(groups):
            in_group = [r.id for r in self._registry.list(group=group)]
            if not in_group:
                raise ApiError(422, f"group {group} has no devices", field=f"groups[{i}]")
            members += [d for d in in_group if d not in members]
        if not members:
            raise ApiError(422, "a deployment needs devices or groups", field="devices")
        return members

    async def list(self, request: web.Request) -> web.Response:
        model = query(request, DeploymentFilter).model
        deployments = await self._offload(self._repository.list_deployments, model)
        return json_response({"deployments": [deployment_json(d) for d in deployments]})

    async def get(self, request: web.Request) -> web.Response:
        who = request[PRINCIPAL]
        deployment = await self._offload(self._repository.get_deployment, path_int(request, "id"))
        if not who.reads_all and who.device not in deployment.devices:
            raise ApiError(403, f"device {who.device} is not part of deployment {deployment.id}")
        return json_response(deployment_json(deployment))

    async def set_device_state(self, request: web.Request) -> web.Response:
        body = await json_body(request, DeploymentProgress, self._config)
        deployment = await self._offload(
            self._repository.set_deployment_state,
            path_int(request, "id"),
            path_int(request, "device"),
            body.state,
        )
        return json_response(deployment_json(deployment))
