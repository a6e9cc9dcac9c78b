"""``/jobs``: experiments the operator starts on the server, run by a :class:`Jobs` manager."""

from __future__ import annotations

from aiohttp import web

from fedsim.real.server.config import ServerConfig
from fedsim.real.server.errors import ApiError
from fedsim.real.server.handlers.common import json_body
from fedsim.real.server.jobs_api import JobConflict, Jobs
from fedsim.real.server.offload import Offload
from fedsim.real.server.responses import json_response
from fedsim.real.server.schemas import JobStart


class JobHandlers:
    """Routes ``/jobs`` to ``jobs``; without one every job endpoint answers ``501``."""

    def __init__(self, *, jobs: Jobs | None, offload: Offload, config: ServerConfig) -> None:
        self._jobs = jobs
        self._offload = offload
        self._config = config

    async def start(self, request: web.Request) -> web.Response:
        jobs = self._manager()
        body = await json_body(request, JobStart, self._config)
        try:
            job = await self._offload(jobs.start, body.kind, body.config)
        except ValueError as e:
            raise ApiError(422, str(e), field="config") from None
        except JobConflict as e:
            raise ApiError(409, str(e)) from None
        return json_response(job, status=202)

    async def list(self, request: web.Request) -> web.Response:
        return json_response({"jobs": await self._offload(self._manager().list)})

    async def get(self, request: web.Request) -> web.Response:
        job_id = request.match_info["job_id"]
        job = await self._offload(self._manager().get, job_id)
        if job is None:
            raise ApiError(404, f"no job {job_id}")
        return json_response(job)

    async def cancel(self, request: web.Request) -> web.Response:
        job_id = request.match_info["job_id"]
        try:
            job = await self._offload(self._manager().cancel, job_id)
        except JobConflict as e:
            raise ApiError(409, str(e)) from None
        if job is None:
            raise ApiError(404, f"no job {job_id}")
        return json_response(job)

    async def events(self, request: web.Request) -> web.StreamResponse:
        job_id = request.match_info["job_id"]
        manager = self._manager()
        if await self._offload(manager.get, job_id) is None:
            raise ApiError(404, f"no job {job_id}")
        events = await self._offload(manager.events_file, job_id)
        if events is None:
            raise ApiError(404, f"job {job_id} has written no events")
        return web.FileResponse(events, headers={"Content-Type": "text/csv"})

    def _manager(self) -> Jobs:
        if self._jobs is None:
            raise ApiError(501, "this server runs no jobs (it was started without a job manager)")
        return self._jobs
