"""The monitoring half of the manifests: node_exporter on every device, Prometheus, Grafana.

Prometheus's configuration is :mod:`fedsim.monitor.prometheus_config`'s, pointed at the
server's Service: it discovers the agents and node_exporters through the server's HTTP service
discovery, as outside a cluster, so nothing here needs access to the Kubernetes API. Grafana's
dashboards and provisioning are :func:`fedsim.report.grafana.grafana_files`, mounted from
ConfigMaps. A hash of each configuration sits in its pod template's annotations, so a changed
configuration rolls the pods that read it.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from typing import Any

from fedsim.deploy.common import (
    GRAFANA_PASSWORD_KEY,
    GRAFANA_SECRET,
    LABEL_DEVICE,
    NODE_EXPORTER_PORT,
    PROMETHEUS_NAME,
    PROMETHEUS_PORT,
    TOKENS_SECRET,
    VIEWER_TOKEN_KEY,
    ManifestOptions,
    container_security,
    http_probe,
    labels,
    metadata,
    pod_security,
    pvc,
    secret_env,
    service,
)
from fedsim.monitor.prometheus_config import build_config, render
from fedsim.report.grafana import DASHBOARDS_PATH, grafana_files

# Pinned so that the same manifests deploy the same software; override with
# `kustomize edit set image` (README, "Running on a cluster").
NODE_EXPORTER_IMAGE = "quay.io/prometheus/node-exporter:v1.8.2"
PROMETHEUS_IMAGE = "quay.io/prometheus/prometheus:v2.53.3"
GRAFANA_IMAGE = "docker.io/grafana/grafana:11.4.0"
NOBODY = 65534  # the user the Prometheus images run as
GRAFANA_UID = 472  # the user the Grafana image runs as
GRAFANA_PORT = 3000
GRAFANA_PROVISIONING = "/etc/grafana/provisioning"
CONFIG_DIR = "/etc/prometheus/config"  # not /etc/prometheus: a mount cannot nest in a ConfigMap
TOKEN_DIR = "/etc/prometheus/secrets"
CONFIG_HASH = "fedsim.io/config-sha256"


def _hash(data: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def _config_map(name: str, ns: str, object_labels: dict[str, str], data: dict[str, str]) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(name, ns, object_labels),
        "data": dict(sorted(data.items())),
    }


def _deployment(
    name: str,
    ns: str,
    selector: dict[str, str],
    *,
    uid: int,
    annotations: dict[str, str],
    container: dict[str, Any],
    volumes: list[dict[str, Any]],
) -> dict[str, Any]:
    """One replica, ``Recreate``: each keeps its state on a single-node volume."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(name, ns, selector),
        "spec": {
            "replicas": 1,
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": dict(selector)},
            "template": {
                "metadata": {"labels": dict(selector), "annotations": annotations},
                "spec": {
                    "automountServiceAccountToken": False,
                    "securityContext": pod_security(uid),
                    "containers": [container],
                    "volumes": volumes,
                },
            },
        },
    }


def node_exporter(options: ManifestOptions) -> list[dict[str, Any]]:
    """node_exporter on every device node, on the node's network at its default port 9100.

    On the host network its address is the node's, which each agent learns from the downward
    API (``status.hostIP``) and declares to the server, so Prometheus scrapes it labelled as
    that device. It tolerates every taint: a device node must be monitored whatever else it
    keeps away.
    """
    selector = labels("node-exporter", "monitoring")
    container = {
        "name": "node-exporter",
        "image": NODE_EXPORTER_IMAGE,
        "args": [
            "--path.procfs=/host/proc",
            "--path.sysfs=/host/sys",
            "--path.rootfs=/host/root",
            f"--web.listen-address=:{NODE_EXPORTER_PORT}",
        ],
        "ports": [
            {
                "name": "metrics",
                "containerPort": NODE_EXPORTER_PORT,
                "hostPort": NODE_EXPORTER_PORT,
                "protocol": "TCP",
            }
        ],
        "livenessProbe": http_probe("/", "metrics", periodSeconds=30),
        "volumeMounts": [
            {"name": "proc", "mountPath": "/host/proc", "readOnly": True},
            {"name": "sys", "mountPath": "/host/sys", "readOnly": True},
            {
                "name": "root",
                "mountPath": "/host/root",
                "readOnly": True,
                "mountPropagation": "HostToContainer",
            },
        ],
        "securityContext": container_security(),
    }
    return [
        {
            "apiVersion": "apps/v1",
            "kind": "DaemonSet",
            "metadata": metadata("node-exporter", options.namespace, selector),
            "spec": {
                "selector": {"matchLabels": dict(selector)},
                "updateStrategy": {"type": "RollingUpdate"},
                "template": {
                    "metadata": {"labels": dict(selector)},
                    "spec": {
                        "automountServiceAccountToken": False,
                        "hostNetwork": True,
                        "hostPID": True,
                        "affinity": {
                            "nodeAffinity": {
                                "requiredDuringSchedulingIgnoredDuringExecution": {
                                    "nodeSelectorTerms": [
                                        {
                                            "matchExpressions": [
                                                {"key": LABEL_DEVICE, "operator": "Exists"}
                                            ]
                                        }
                                    ]
                                }
                            }
                        },
                        "tolerations": [{"operator": "Exists"}],
                        "securityContext": pod_security(NOBODY),
                        "containers": [container],
                        "volumes": [
                            {"name": name, "hostPath": {"path": path}}
                            for name, path in (("proc", "/proc"), ("sys", "/sys"), ("root", "/"))
                        ],
                    },
                },
            },
        }
    ]


def prometheus_yml(options: ManifestOptions) -> str:
    """``fedsim prometheus-config``'s file for the server's in-cluster address."""
    return render(
        build_config(server=options.server_url, token_file=f"{TOKEN_DIR}/{VIEWER_TOKEN_KEY}")
    )


def prometheus(options: ManifestOptions) -> list[dict[str, Any]]:
    """Prometheus's configuration, its storage, the Deployment and its Service.

    Service discovery authenticates with the viewer token, which reads and changes nothing,
    rather than the admin token: it is mounted from the Secret as a file, the
    ``credentials_file`` of the configuration, and never copied into the ConfigMap.
    """
    ns = options.namespace
    selector = labels(PROMETHEUS_NAME, "monitoring")
    data = {"prometheus.yml": prometheus_yml(options)}
    claim = f"{PROMETHEUS_NAME}-data"
    container = {
        "name": "prometheus",
        "image": PROMETHEUS_IMAGE,
        "args": [
            f"--config.file={CONFIG_DIR}/prometheus.yml",
            "--storage.tsdb.path=/prometheus",
            "--storage.tsdb.retention.time=15d",
            f"--web.listen-address=:{PROMETHEUS_PORT}",
        ],
        "ports": [{"name": "http", "containerPort": PROMETHEUS_PORT, "protocol": "TCP"}],
        "readinessProbe": http_probe("/-/ready", periodSeconds=10),
        "livenessProbe": http_probe("/-/healthy", periodSeconds=30),
        "volumeMounts": [
            {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
            {"name": "token", "mountPath": TOKEN_DIR, "readOnly": True},
            {"name": "data", "mountPath": "/prometheus"},
        ],
        "securityContext": container_security(),
    }
    volumes = [
        {"name": "config", "configMap": {"name": f"{PROMETHEUS_NAME}-config"}},
        {
            "name": "token",
            "secret": {
                "secretName": TOKENS_SECRET,
                "items": [{"key": VIEWER_TOKEN_KEY, "path": VIEWER_TOKEN_KEY}],
            },
        },
        {"name": "data", "persistentVolumeClaim": {"claimName": claim}},
    ]
    return [
        _config_map(f"{PROMETHEUS_NAME}-config", ns, selector, data),
        pvc(claim, ns, selector, options.prometheus_storage_size, options.storage_class),
        _deployment(
            PROMETHEUS_NAME,
            ns,
            selector,
            uid=NOBODY,
            annotations={CONFIG_HASH: _hash(data)},
            container=container,
            volumes=volumes,
        ),
        service(PROMETHEUS_NAME, ns, selector, PROMETHEUS_PORT, selector),
    ]


def _grafana_mount(directory: str) -> str:
    """Where Grafana reads a directory of :func:`grafana_files`."""
    if directory == "dashboards":
        return DASHBOARDS_PATH
    if directory.startswith("provisioning/"):
        return posixpath.join(GRAFANA_PROVISIONING, directory.removeprefix("provisioning/"))
    raise ValueError(f"grafana file directory {directory!r}: no place to mount it")


def grafana(options: ManifestOptions) -> list[dict[str, Any]]:
    """One ConfigMap per directory of Grafana's files, the Deployment mounting them, a Service.

    The admin password comes from a generated Secret. Grafana's own database stays on an
    emptyDir: everything it shows is provisioned from these files and read from Prometheus.
    """
    ns = options.namespace
    selector = labels("grafana", "monitoring")
    files = grafana_files(prometheus_url=options.prometheus_url, dashboards_path=DASHBOARDS_PATH)
    by_dir: dict[str, dict[str, str]] = {}
    for path, text in sorted(files.items()):
        directory, name = posixpath.split(path)
        by_dir.setdefault(directory, {})[name] = text
    # Grafana's database first: the dashboards are mounted inside it, so it must be mounted
    # before them. Its log goes to the console, as the root filesystem is read-only.
    volumes = [{"name": "storage", "emptyDir": {}}, {"name": "tmp", "emptyDir": {}}]
    mounts = [
        {"name": "storage", "mountPath": "/var/lib/grafana"},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    maps = []
    for i, (directory, data) in enumerate(sorted(by_dir.items())):
        name = "grafana-" + directory.replace("/", "-")
        maps.append(_config_map(name, ns, selector, data))
        volume = f"files-{i}"
        volumes.append({"name": volume, "configMap": {"name": name}})
        mounts.append({"name": volume, "mountPath": _grafana_mount(directory), "readOnly": True})
    container = {
        "name": "grafana",
        "image": GRAFANA_IMAGE,
        "env": [
            secret_env("GF_SECURITY_ADMIN_PASSWORD", GRAFANA_SECRET, GRAFANA_PASSWORD_KEY),
            {"name": "GF_PATHS_PROVISIONING", "value": GRAFANA_PROVISIONING},
            {"name": "GF_LOG_MODE", "value": "console"},
            {"name": "GF_ANALYTICS_REPORTING_ENABLED", "value": "false"},
        ],
        "ports": [{"name": "http", "containerPort": GRAFANA_PORT, "protocol": "TCP"}],
        "readinessProbe": http_probe("/api/health", periodSeconds=10),
        "livenessProbe": http_probe("/api/health", periodSeconds=30, failureThreshold=5),
        "volumeMounts": mounts,
        "securityContext": container_security(),
    }
    return [
        *maps,
        _deployment(
            "grafana",
            ns,
            selector,
            uid=GRAFANA_UID,
            annotations={CONFIG_HASH: _hash(files)},
            container=container,
            volumes=volumes,
        ),
        service("grafana", ns, selector, GRAFANA_PORT, selector),
    ]
