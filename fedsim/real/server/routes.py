"""The route table: every endpoint, its handler, and who may call it (see auth.py)."""

from __future__ import annotations

from aiohttp import web

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

API = "/api/v1"
ID = r"{id:\d+}"
MODEL = r"{name:[A-Za-z0-9][A-Za-z0-9._-]{0,127}}"
VERSION = r"{version:\d+|latest}"


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
    version = f"{API}/models/{MODEL}/versions/{VERSION}"
    table = [
        ("GET", f"{API}/health", server.health, PUBLIC),
        # The same at the root, where container health checks and load balancers look.
        ("GET", "/health", server.health, PUBLIC),
        ("GET", f"{API}/openapi.json", server.openapi, PUBLIC),
        # Unauthenticated like node_exporter's, so Prometheus needs no admin secret.
        ("GET", "/metrics", server.metrics, PUBLIC),
        ("POST", f"{API}/devices", devices.register, ENROLL),
        ("GET", f"{API}/devices", devices.list, ADMIN),
        ("GET", f"{API}/devices/{ID}", devices.get, own("id")),
        ("DELETE", f"{API}/devices/{ID}", devices.remove, ADMIN),
        ("PUT", f"{API}/devices/{ID}/heartbeat", devices.heartbeat, own("id")),
        ("GET", f"{API}/devices/{ID}/tasks", tasks.poll, own("id")),
        ("GET", f"{API}/groups", devices.groups, ADMIN),
        ("GET", f"{API}/monitoring", monitoring.series, ADMIN),
        # The Data Visualizer's page and assets: public, they hold no data (see dashboard.py).
        ("GET", "/dashboard", dashboard.redirect, PUBLIC),
        ("GET", "/dashboard/", dashboard.index, PUBLIC),
        ("GET", "/dashboard/{path:.+}", dashboard.asset, PUBLIC),
        # Prometheus's http_sd_configs, with the admin token as authorization credentials.
        ("GET", f"{API}/sd/targets", discovery.targets, ADMIN),
        ("GET", f"{API}/probe", probe.download, ANY_DEVICE),
        ("PUT", f"{API}/probe", probe.upload, ANY_DEVICE),
        ("POST", f"{API}/models", models.create, ADMIN),
        ("GET", f"{API}/models", models.list, ANY_DEVICE),
        ("GET", f"{API}/models/{MODEL}", models.get, ANY_DEVICE),
        ("POST", f"{API}/models/{MODEL}/versions", models.add_version, ADMIN),
        ("GET", f"{API}/models/{MODEL}/versions", models.list_versions, ANY_DEVICE),
        ("GET", version, models.get_version, ANY_DEVICE),
        ("GET", f"{version}/blob", models.blob, ANY_DEVICE),
        ("POST", f"{API}/deployments", deployments.create, ADMIN),
        ("GET", f"{API}/deployments", deployments.list, ADMIN),
        ("GET", f"{API}/deployments/{ID}", deployments.get, ANY_DEVICE),
        (
            "PUT",
            rf"{API}/deployments/{ID}/devices/{{device:\d+}}",
            deployments.set_device_state,
            own("device"),
        ),
        ("PUT", f"{API}/tasks/{{task_id}}/update", tasks.update, ANY_DEVICE),
        ("PUT", f"{API}/tasks/{{task_id}}/data", tasks.data, ANY_DEVICE),
        ("PUT", f"{API}/tasks/{{task_id}}/relay", tasks.relay, ANY_DEVICE),
        ("POST", f"{API}/tasks/{{task_id}}/error", tasks.error, ANY_DEVICE),
        ("POST", f"{API}/jobs", jobs.start, ADMIN),
        ("GET", f"{API}/jobs", jobs.list, ADMIN),
        ("GET", f"{API}/jobs/{{job_id}}", jobs.get, ADMIN),
        ("DELETE", f"{API}/jobs/{{job_id}}", jobs.cancel, ADMIN),
    ]
    for method, path, handler, access in table:
        app.router.add_route(method, path, auth.guarded(access, handler))
