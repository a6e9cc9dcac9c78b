"""Grafana dashboards for a fedsim deployment watched by Prometheus, and their provisioning.

Three dashboards mirror the seed's Data Visualizer (its Fig. 3) and the server's built-in
``/dashboard``: *devices* (the fleet and its state), *monitoring* (CPU, memory, GPU, disk and
network traffic, bandwidth and training activity per device) and *models* (repository, jobs,
rounds). Every panel queries the series that ``fedsim prometheus-config`` has Prometheus
collect: the server's ``fedsim_*``, the agents' ``fedsim_agent_*`` and node_exporter's
``node_*``, labelled by the server's service discovery with ``fedsim_device``, ``fedsim_group``
and ``fedsim_role``. The per-device resource panels use the PromQL of the server's own
dashboard (:func:`fedsim.monitor.promql.monitoring_queries`), so both show the same numbers.

The dashboards are built as data so that :func:`expressions` can hand every PromQL expression
to a test, which runs each against a real Prometheus.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import yaml

from fedsim.monitor.promql import monitoring_queries

DATASOURCE_UID = "fedsim-prometheus"
DATASOURCE = {"type": "prometheus", "uid": DATASOURCE_UID}
DASHBOARDS_PATH = "/var/lib/grafana/dashboards/fedsim"
FOLDER = "fedsim"
SCHEMA_VERSION = 39  # Grafana 10/11's dashboard model

# The device and group selectors every per-device panel applies (template variables below).
SEL = 'fedsim_device=~"$device", fedsim_group=~"$group"'
# The server dashboard's queries over the selected devices, each one series per device.
DEVICE_QUERIES = monitoring_queries(SEL, "$__rate_interval")


def _target(expr: str, legend: str = "", *, instant: bool = False, ref: str = "A") -> dict:
    target: dict[str, Any] = {
        "datasource": DATASOURCE,
        "expr": expr,
        "refId": ref,
        "legendFormat": legend or "__auto",
    }
    if instant:
        target |= {"instant": True, "range": False, "format": "table"}
    return target


def _panel(
    title: str,
    kind: str,
    targets: list[dict],
    *,
    unit: str = "short",
    description: str = "",
    w: int = 12,
    h: int = 8,
    **options: Any,
) -> dict[str, Any]:
    """A panel; ``gridPos`` and ``id`` are filled in by :func:`_dashboard`."""
    refs = "ABCDEFGH"
    return {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "targets": [{**t, "refId": refs[i]} for i, t in enumerate(targets)],
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": options,
        "gridPos": {"w": w, "h": h},
    }


def _variables() -> list[dict[str, Any]]:
    def query(name: str, label: str, expr: str) -> dict[str, Any]:
        return {
            "name": name,
            "label": label,
            "type": "query",
            "datasource": DATASOURCE,
            "query": {"query": f"label_values({expr}, {name_to_label[name]})", "refId": name},
            "definition": f"label_values({expr}, {name_to_label[name]})",
            "refresh": 2,  # on time range change: new devices appear without a reload
            "includeAll": True,
            "allValue": ".*",
            "multi": True,
            "current": {"text": "All", "value": "$__all"},
            "sort": 3,  # numerically ascending
        }

    name_to_label = {"group": "fedsim_group", "device": "fedsim_device"}
    return [
        query("group", "Group", 'up{fedsim_role!=""}'),
        query("device", "Device", 'up{fedsim_role!="", fedsim_group=~"$group"}'),
    ]


def _dashboard(uid: str, title: str, description: str, panels: list[dict]) -> dict[str, Any]:
    """Lay ``panels`` out left to right, top to bottom, on Grafana's 24-column grid."""
    x = y = row_h = 0
    laid = []
    for i, panel in enumerate(panels, start=1):
        w, h = panel["gridPos"]["w"], panel["gridPos"]["h"]
        if x + w > 24:
            x, y, row_h = 0, y + row_h, 0
        laid.append({**panel, "id": i, "gridPos": {"x": x, "y": y, "w": w, "h": h}})
        x, row_h = x + w, max(row_h, h)
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["fedsim"],
        "timezone": "browser",
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "editable": True,
        "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {"list": _variables()},
        "annotations": {"list": []},
        "links": [
            {"type": "dashboards", "tags": ["fedsim"], "asDropdown": False, "title": "fedsim"}
        ],
        "panels": laid,
    }


def devices_dashboard() -> dict[str, Any]:
    """Fig. 3(a): the devices, their state, liveness and group."""
    return _dashboard(
        "fedsim-devices",
        "fedsim / Devices",
        "Registered devices by state and group, and each device's liveness.",
        [
            _panel(
                "Devices by state",
                "stat",
                [_target("sum by (state) (fedsim_devices)", "{{state}}")],
                w=8,
                h=5,
                colorMode="background",
                graphMode="none",
            ),
            _panel(
                "Devices by group and state",
                "bargauge",
                [
                    _target(
                        'sum by (group, state) (fedsim_group_devices{group=~"$group"})',
                        "group {{group}} {{state}}",
                    )
                ],
                w=16,
                h=5,
                displayMode="gradient",
                orientation="horizontal",
            ),
            _panel(
                "Devices",
                "table",
                [
                    _target(
                        f'max by (fedsim_device, fedsim_group) (up{{fedsim_role="agent", {SEL}}})',
                        instant=True,
                    ),
                    _target(
                        "max by (fedsim_device) (label_replace("
                        'fedsim_device_last_seen_age_seconds{device=~"$device"}, '
                        '"fedsim_device", "$1", "device", "(.*)"))',
                        instant=True,
                    ),
                    _target(
                        "min by (fedsim_device) "
                        f"(fedsim_agent_probe_bandwidth_bytes_per_second{{{SEL}}})",
                        instant=True,
                    ),
                ],
                description="Agent up (1) or down (0), seconds since the last heartbeat, and "
                "the slower direction of the last bandwidth probe.",
                w=24,
                h=10,
                showHeader=True,
            ),
            _panel(
                "Seconds since last heartbeat",
                "timeseries",
                [
                    _target(
                        'fedsim_device_last_seen_age_seconds{device=~"$device"}',
                        "device {{device}}",
                    )
                ],
                unit="s",
                w=24,
            ),
        ],
    )


def monitoring_dashboard() -> dict[str, Any]:
    """Fig. 3(b): CPU, memory, network bandwidth and training activity per device."""
    return _dashboard(
        "fedsim-monitoring",
        "fedsim / Monitoring",
        "Per device: node_exporter's CPU, memory, disk and network traffic where the device "
        "declared one, else the agent's own readings; the GPU the agent trains on; the agent's "
        "bandwidth probe and training activity.",
        [
            _panel(
                "CPU busy",
                "timeseries",
                [_target(DEVICE_QUERIES["cpu_busy"], "device {{fedsim_device}}")],
                unit="percentunit",
            ),
            _panel(
                "Memory available",
                "timeseries",
                [_target(DEVICE_QUERIES["memory_available"], "device {{fedsim_device}}")],
                unit="bytes",
            ),
            _panel(
                "GPU utilisation",
                "timeseries",
                [_target(DEVICE_QUERIES["gpu_util"], "device {{fedsim_device}}")],
                description="The agent's GPU (NVML), else DCGM-exporter's busiest GPU of the "
                "host. No series for a device without a GPU.",
                unit="percentunit",
                w=8,
            ),
            _panel(
                "Disk traffic",
                "timeseries",
                [
                    _target(DEVICE_QUERIES["disk_read"], "device {{fedsim_device}} read"),
                    _target(DEVICE_QUERIES["disk_write"], "device {{fedsim_device}} written"),
                ],
                description="node_exporter's whole disks, else the agent's counters.",
                unit="Bps",
                w=8,
            ),
            _panel(
                "Network traffic",
                "timeseries",
                [
                    _target(DEVICE_QUERIES["net_receive"], "device {{fedsim_device}} received"),
                    _target(DEVICE_QUERIES["net_transmit"], "device {{fedsim_device}} sent"),
                ],
                description="Every interface but loopback: node_exporter's, else the agent's "
                "counters.",
                unit="Bps",
                w=8,
            ),
            _panel(
                "Probe bandwidth",
                "timeseries",
                [
                    _target(
                        f"fedsim_agent_probe_bandwidth_bytes_per_second{{{SEL}}}",
                        "device {{fedsim_device}} {{direction}}",
                    )
                ],
                unit="Bps",
            ),
            _panel(
                "Round-trip time to the server",
                "timeseries",
                [_target(f"fedsim_agent_probe_rtt_seconds{{{SEL}}}", "device {{fedsim_device}}")],
                unit="s",
            ),
            _panel(
                "Training activity",
                "timeseries",
                [
                    _target(
                        f"rate(fedsim_agent_train_seconds_sum{{{SEL}}}[$__rate_interval])",
                        "device {{fedsim_device}}",
                    )
                ],
                description="Share of wall time spent in local training.",
                unit="percentunit",
            ),
            _panel(
                "Busy with a task",
                "state-timeline",
                [_target(f"fedsim_agent_busy{{{SEL}}}", "device {{fedsim_device}}")],
            ),
            _panel(
                "Load average (1 min)",
                "timeseries",
                [
                    _target(
                        f"max by (fedsim_device) (node_load1{{{SEL}}})"
                        f" or max by (fedsim_device) (fedsim_agent_load1{{{SEL}}})",
                        "device {{fedsim_device}}",
                    )
                ],
            ),
            _panel(
                "Bytes moved by agents",
                "timeseries",
                [
                    _target(
                        f"sum by (kind) (rate(fedsim_agent_bytes_received_total{{{SEL}}}"
                        "[$__rate_interval]))",
                        "received {{kind}}",
                    ),
                    _target(
                        f"sum by (kind) (rate(fedsim_agent_bytes_sent_total{{{SEL}}}"
                        "[$__rate_interval]))",
                        "sent {{kind}}",
                    ),
                ],
                unit="Bps",
            ),
        ],
    )


def models_dashboard() -> dict[str, Any]:
    """Fig. 3(c): the repository's models, the jobs, and the rounds' time and quality."""
    return _dashboard(
        "fedsim-models",
        "fedsim / Models",
        "The model repository, the server's jobs, and its federated rounds.",
        [
            _panel(
                "Versions per model",
                "bargauge",
                [_target("fedsim_repository_versions", "{{model}}")],
                w=8,
            ),
            _panel(
                "Repository size per model",
                "bargauge",
                [_target("fedsim_repository_bytes", "{{model}}")],
                unit="bytes",
                w=8,
            ),
            _panel(
                "Jobs by state",
                "stat",
                [_target("fedsim_jobs", "{{state}}")],
                w=8,
                graphMode="none",
            ),
            _panel(
                "Round duration",
                "timeseries",
                [
                    _target(
                        "histogram_quantile(0.5, sum by (le) "
                        "(rate(fedsim_round_duration_seconds_bucket[$__rate_interval])))",
                        "median",
                    ),
                    _target(
                        "rate(fedsim_round_duration_seconds_sum[$__rate_interval]) / "
                        "rate(fedsim_round_duration_seconds_count[$__rate_interval])",
                        "mean",
                    ),
                ],
                unit="s",
            ),
            _panel(
                "Participants and failures",
                "timeseries",
                [
                    _target("fedsim_round_participants", "participants (last round)"),
                    _target(
                        "increase(fedsim_round_failures_total[$__rate_interval])", "failed devices"
                    ),
                ],
            ),
            _panel(
                "Accuracy",
                "timeseries",
                [_target("fedsim_round_accuracy_ratio", "accuracy")],
                unit="percentunit",
            ),
            _panel(
                "Loss",
                "timeseries",
                [
                    _target("fedsim_round_train_loss", "train"),
                    _target("fedsim_round_eval_loss", "evaluation"),
                ],
            ),
            _panel(
                "Aggregation time (mean)",
                "timeseries",
                [
                    _target(
                        "rate(fedsim_aggregation_seconds_sum[$__rate_interval]) / "
                        "rate(fedsim_aggregation_seconds_count[$__rate_interval])",
                        "mean",
                    )
                ],
                unit="s",
            ),
            _panel(
                "Server traffic",
                "timeseries",
                [
                    _target(
                        "sum by (kind) (rate(fedsim_bytes_received_total[$__rate_interval]))",
                        "received {{kind}}",
                    ),
                    _target(
                        "sum by (kind) (rate(fedsim_bytes_sent_total[$__rate_interval]))",
                        "sent {{kind}}",
                    ),
                ],
                unit="Bps",
            ),
        ],
    )


DASHBOARDS = {
    "fedsim-devices": devices_dashboard,
    "fedsim-monitoring": monitoring_dashboard,
    "fedsim-models": models_dashboard,
}


def dashboards() -> dict[str, dict[str, Any]]:
    """Every dashboard's model by uid."""
    return {uid: build() for uid, build in DASHBOARDS.items()}


def expressions(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """``(where, expr)`` for every PromQL expression of ``dashboard``: the panels' targets and
    the template variables' queries (``label_values(EXPR, label)`` yields ``EXPR``)."""
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            yield f"{dashboard['uid']}: {panel['title']} [{target['refId']}]", target["expr"]
    for var in dashboard["templating"]["list"]:
        definition = var["definition"]
        inner = definition.removeprefix("label_values(").rsplit(",", 1)[0]
        yield f"{dashboard['uid']}: variable {var['name']}", inner


def datasource_provisioning(prometheus_url: str) -> dict[str, Any]:
    return {
        "apiVersion": 1,
        "datasources": [
            {
                "name": "fedsim Prometheus",
                "uid": DATASOURCE_UID,
                "type": "prometheus",
                "access": "proxy",
                "url": prometheus_url,
                "isDefault": True,
                "editable": False,
                "jsonData": {"timeInterval": "5s"},  # the scrape interval prometheus-config sets
            }
        ],
    }


def dashboard_provisioning(dashboards_path: str) -> dict[str, Any]:
    return {
        "apiVersion": 1,
        "providers": [
            {
                "name": "fedsim",
                "folder": FOLDER,
                "type": "file",
                "disableDeletion": True,
                "updateIntervalSeconds": 30,
                "allowUiUpdates": False,
                "options": {"path": dashboards_path},
            }
        ],
    }


def grafana_files(*, prometheus_url: str, dashboards_path: str = DASHBOARDS_PATH) -> dict[str, str]:
    """Relative path -> text of every file: ``dashboards/<uid>.json`` and the provisioning
    files Grafana reads from ``/etc/grafana/provisioning`` (a datasource for
    ``prometheus_url``, and a dashboard provider loading ``dashboards_path``, where the
    dashboards must be copied or mounted)."""
    if not prometheus_url.startswith(("http://", "https://")):
        raise ValueError(f"prometheus URL {prometheus_url!r}: expected http(s)://HOST:PORT")
    files = {
        f"dashboards/{uid}.json": json.dumps(model, indent=2, sort_keys=True) + "\n"
        for uid, model in dashboards().items()
    }
    header = "# Written by fedsim grafana-dashboards.\n"
    files["provisioning/datasources/fedsim.yaml"] = header + yaml.safe_dump(
        datasource_provisioning(prometheus_url), sort_keys=False
    )
    files["provisioning/dashboards/fedsim.yaml"] = header + yaml.safe_dump(
        dashboard_provisioning(dashboards_path), sort_keys=False
    )
    return files
