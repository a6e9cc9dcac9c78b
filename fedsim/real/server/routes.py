"""The route table: every endpoint, its handler, and who may call it (see auth.py)."""

from __future__ import annotations

import re

from aiohttp import web

from fedsim.real.protocol import PATH_PATTERNS, Paths
from fedsim.real.server.auth import ADMIN, ANY_DEVICE, ENROLL, PUBLIC, Authenticator, own
from fedsim.real.server.handlers.dashboard import DashboardHandlers
from fedsim.real.server.handlers.deployments import DeploymentHandlers
from fedsim.real.server.handlers.devices import DeviceHandlers
from fedsim.real.server.handlers.discovery import DiscoveryHandlers
from fedsim.real.server.handlers.health import ServerHandlers
from fedsim.real.server.handlers.jobs import JobHandlers
from fedsim.real.server.handlers.models import ModelHandlers
from fedsim.real.server.handlers.monitoring import MonitoringHandlers
from fedsim.real.server.handlers.probe import ProbeHandlers
from fedsim.real.server.handlers.tasks import TaskHandlers


def route_path(template: str) -> str:
    """The protocol's path ``template`` as aiohttp routes it: each parameter with its pattern."""
    return re.sub(
        r"\{(\w+)\}",
        lambda m: f"{{{m[1]}:{PATH_PATTERNS[m[1]]}}}" if m[1] in PATH_PATTERNS else m[0],
        template,
    )


def setup_routes(
    app: web.Application,
    *,
    auth: Authenticator,
    server: ServerHandlers,
    devices: DeviceHandlers,
    models: ModelHandlers,
    deployments: DeploymentHandlers,
    tasks: TaskHandlers,
    jobs: JobHandlers,
    discovery: DiscoveryHandlers,
    probe: ProbeHandlers,
    monitoring: MonitoringHandlers,
    dashboard: DashboardHandlers,
) -> None:
    table = [
        ("GET", Paths.HEALTH, server.health, PUBLIC),
        ("GET", Paths.ROOT_HEALTH, server.health, PUBLIC),
        ("GET", Paths.OPENAPI, server.openapi, PUBLIC),
        # Unauthenticated like node_exporter's, so Prometheus needs no admin secret.
        ("GET", Paths.METRICS, server.metrics, PUBLIC),
        ("POST", Paths.DEVICES, devices.register, ENROLL),
        ("GET", Paths.DEVICES, devices.list, ADMIN),
        ("GET", Paths.DEVICE, devices.get, own("id")),
        ("DELETE", Paths.DEVICE, devices.remove, ADMIN),
        ("PUT", Paths.HEARTBEAT, devices.heartbeat, own("id")),
        ("GET", Paths.TASKS, tasks.poll, own("id")),
        ("GET", Paths.GROUPS, devices.groups, ADMIN),
        ("GET", Paths.MONITORING, monitoring.series, ADMIN),
        # The Data Visualizer's page and assets: public, they hold no data (see dashboard.py).
        ("GET", Paths.DASHBOARD, dashboard.redirect, PUBLIC),
        ("GET", Paths.DASHBOARD_INDEX, dashboard.index, PUBLIC),
        ("GET", Paths.DASHBOARD_FILE, dashboard.asset, PUBLIC),
        # Prometheus's http_sd_configs, with the admin token as authorization credentials.
        ("GET", Paths.SD_TARGETS, discovery.targets, ADMIN),
        ("GET", Paths.PROBE, probe.download, ANY_DEVICE),
        ("PUT", Paths.PROBE, probe.upload, ANY_DEVICE),
        ("POST", Paths.MODELS, models.create, ADMIN),
        ("GET", Paths.MODELS, models.list, ANY_DEVICE),
        ("GET", Paths.MODEL, models.get, ANY_DEVICE),
        ("POST", Paths.VERSIONS, models.add_version, ADMIN),
        ("GET", Paths.VERSIONS, models.list_versions, ANY_DEVICE),
        ("GET", Paths.VERSION, models.get_version, ANY_DEVICE),
        ("GET", Paths.BLOB, models.blob, ANY_DEVICE),
        ("POST", Paths.DEPLOYMENTS, deployments.create, ADMIN),
        ("GET", Paths.DEPLOYMENTS, deployments.list, ADMIN),
        ("GET", Paths.DEPLOYMENT, deployments.get, ANY_DEVICE),
        ("PUT", Paths.DEPLOYMENT_DEVICE, deployments.set_device_state, own("device")),
        ("PUT", Paths.TASK_UPDATE, tasks.update, ANY_DEVICE),
        ("PUT", Paths.TASK_DATA, tasks.data, ANY_DEVICE),
        ("PUT", Paths.TASK_RELAY, tasks.relay, ANY_DEVICE),
        ("POST", Paths.TASK_ERROR, tasks.error, ANY_DEVICE),
        ("POST", Paths.JOBS, jobs.start, ADMIN),
        ("GET", Paths.JOBS, jobs.list, ADMIN),
        ("GET", Paths.JOB, jobs.get, ADMIN),
        ("DELETE", Paths.JOB, jobs.cancel, ADMIN),
    ]
    for method, path, handler, access in table:
        app.router.add_route(method, route_path(path), auth.guarded(access, handler))
