"""Kubernetes manifests for a topology: the server, one agent per device, their monitoring.

:func:`build_manifests` returns file name -> objects (plain dicts, in a fixed order), and
:func:`kustomization` ties the files together with the secrets; ``output`` writes them. The
same placements and options always give the same objects, so generated files can be diffed
and committed.

Placement follows the topology: a node labelled ``fedsim.io/device=<id>`` (and
``fedsim.io/group=<group>``) *is* that device. The server runs on the topology's server
device, and every device, the server's included, gets one agent, which registers it with
the server and declares the node_exporter beside it, so the Device Manager lists and monitors
every device of the topology as the seed's does.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from fedsim.deploy.common import (
    ADMIN_TOKEN_KEY,
    AGENT_METRICS_PORT,
    ENROLLMENT_TOKEN_KEY,
    GRAFANA_PASSWORD_KEY,
    GRAFANA_SECRET,
    HEALTH_PATH,
    LABEL_DEVICE,
    LABEL_GROUP,
    NODE_EXPORTER_PORT,
    SERVER_DATA_DIR,
    SERVER_NAME,
    SERVER_PORT,
    TOKENS_SECRET,
    UID,
    VIEWER_TOKEN_KEY,
    ManifestOptions,
    container_security,
    edge_toleration,
    field_env,
    http_probe,
    labels,
    metadata,
    pod_security,
    pvc,
    secret_env,
    service,
)
from fedsim.deploy.k8s_monitoring import grafana, node_exporter, prometheus
from fedsim.deploy.placement import Placement, TopologyPlacements

log = logging.getLogger(__name__)

AGENT_STATE_DIR = "/var/lib/fedsim/agent"  # inside the agent's container
HOST_STATE_ROOT = "/var/lib/fedsim"  # on the node: one directory per device under it
SECRETS_DIR = "secrets"
SECRET_FILES = {
    TOKENS_SECRET: (ADMIN_TOKEN_KEY, VIEWER_TOKEN_KEY, ENROLLMENT_TOKEN_KEY),
    GRAFANA_SECRET: (GRAFANA_PASSWORD_KEY,),
}
KUSTOMIZATION = "kustomization.yaml"


def _tmp_volume() -> tuple[dict[str, Any], dict[str, Any]]:
    """A writable ``/tmp`` beside the read-only root filesystem (matplotlib, torch caches)."""
    return {"name": "tmp", "emptyDir": {}}, {"name": "tmp", "mountPath": "/tmp"}


def node_selector(p: Placement) -> dict[str, str]:
    return {LABEL_DEVICE: str(p.device), LABEL_GROUP: str(p.group)}


def namespace(options: ManifestOptions) -> dict[str, Any]:
    """The namespace, admitted at the ``privileged`` Pod Security level, said explicitly.

    A cluster that defaults namespaces to ``baseline`` would refuse node_exporter (host
    network, PID namespace and root filesystem, to see the node rather than its container)
    and the agents (their identity in a hostPath directory on their device).
    """
    pod_security_level = {"pod-security.kubernetes.io/enforce": "privileged"}
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": options.namespace,
            "labels": labels("fedsim", "namespace", pod_security_level),
        },
    }


def server_args() -> list[str]:
    """``fedsim server``'s arguments; the tokens come from the environment, never argv."""
    return [
        "server",
        "--host",
        "0.0.0.0",
        "--port",
        str(SERVER_PORT),
        "--data-dir",
        SERVER_DATA_DIR,
    ]


def server(placement: Placement, options: ManifestOptions) -> list[dict[str, Any]]:
    """The server's PersistentVolumeClaim, Deployment and Service.

    One replica with the ``Recreate`` strategy: the repository and registry are SQLite files,
    which take one writer, so an update stops the old pod before the new one opens them.
    """
    ns = options.namespace
    selector = labels("fedsim", "server")
    claim = f"{SERVER_NAME}-data"
    tmp, tmp_mount = _tmp_volume()
    container = {
        "name": "server",
        "image": options.image,
        "args": server_args(),
        "env": [
            secret_env("FEDSIM_ADMIN_TOKEN", TOKENS_SECRET, ADMIN_TOKEN_KEY),
            secret_env("FEDSIM_VIEWER_TOKEN", TOKENS_SECRET, VIEWER_TOKEN_KEY),
            secret_env("FEDSIM_ENROLLMENT_TOKEN", TOKENS_SECRET, ENROLLMENT_TOKEN_KEY),
        ],
        "ports": [{"name": "http", "containerPort": SERVER_PORT, "protocol": "TCP"}],
        # Importing the server (and torch, for jobs) on a small node can take a while.
        "startupProbe": http_probe(HEALTH_PATH, periodSeconds=2, failureThreshold=60),
        "readinessProbe": http_probe(HEALTH_PATH, periodSeconds=5, failureThreshold=2),
        "livenessProbe": http_probe(HEALTH_PATH, periodSeconds=20, failureThreshold=3),
        "volumeMounts": [{"name": "data", "mountPath": SERVER_DATA_DIR}, tmp_mount],
        "securityContext": container_security(),
    }
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(SERVER_NAME, ns, selector),
        "spec": {
            "replicas": 1,
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": dict(selector)},
            "template": {
                "metadata": {"labels": dict(selector)},
                "spec": {
                    "automountServiceAccountToken": False,
                    "nodeSelector": node_selector(placement),
                    "tolerations": [edge_toleration(options.edge_taint)],
                    "securityContext": pod_security(UID),
                    # The server lets uploads in flight finish for 30 s (--shutdown-timeout).
                    "terminationGracePeriodSeconds": 45,
                    "containers": [container],
                    "volumes": [
                        {"name": "data", "persistentVolumeClaim": {"claimName": claim}},
                        tmp,
                    ],
                },
            },
        },
    }
    return [
        pvc(claim, ns, selector, options.storage_size, options.storage_class),
        deployment,
        service(SERVER_NAME, ns, selector, SERVER_PORT, selector),
    ]


def agent_args(p: Placement, options: ManifestOptions) -> list[str]:
    """``fedsim agent``'s arguments for device ``p``.

    ``$(NODE_IP)`` and ``$(NODE_NAME)`` are expanded by the kubelet from the container's
    environment (the downward API), so the node_exporter URL is the node's own.
    """
    args = [
        "agent",
        "--server",
        options.server_url,
        "--device-id",
        str(p.device),
        "--description",
        p.description,
        "--group",
        str(p.group),
        "--group-description",
        p.group_description,
        "--id-in-group",
        str(p.id_in_group),
        "--profile",
        p.profile,
        "--label",
        "k8s_node=$(NODE_NAME)",
        "--state-dir",
        AGENT_STATE_DIR,
        "--torch-device",
        "cuda" if p.gpu else "cpu",
        "--metrics-host",
        "0.0.0.0",
        "--metrics-port",
        str(AGENT_METRICS_PORT),
        "--node-exporter",
        f"http://$(NODE_IP):{NODE_EXPORTER_PORT}/metrics",
    ]
    if options.agent_data is not None:
        args += ["--data", options.agent_data]
    return args


def _state_dir_owner(image: str) -> dict[str, Any]:
    """An init container that hands the node's state directory to the agent's user.

    The kubelet creates a missing hostPath directory owned by root, where the non-root agent
    could not save its device token. This is the only step that runs as root, with only the
    CHOWN capability; it also closes the directory to other users of the node.
    """
    state = repr(AGENT_STATE_DIR)
    script = f"import os; os.chmod({state}, 0o700); os.chown({state}, {UID}, {UID})"
    return {
        "name": "state-dir-owner",
        "image": image,
        "command": ["python", "-c", script],
        "securityContext": {
            "runAsNonRoot": False,
            "runAsUser": 0,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"], "add": ["CHOWN"]},
        },
        "volumeMounts": [{"name": "state", "mountPath": AGENT_STATE_DIR}],
    }


def agent(p: Placement, options: ManifestOptions) -> dict[str, Any]:
    """Device ``p``'s agent: a Deployment of one replica pinned to the device's node.

    A Deployment rather than a StatefulSet: the agent's identity (its device token) lives on
    the node, in a hostPath directory of its own, not in a volume that must follow the pod,
    and its nodeSelector allows exactly one node, so a StatefulSet's ordinal names and volume
    claims would add nothing. ``Recreate`` stops the old pod before the new one starts, so
    two agents never hold the same device token at once. The state directory is per device
    id, so a node relabelled as another device does not take over the old one's identity.
    """
    ns = options.namespace
    device = {LABEL_DEVICE: str(p.device)}
    selector = labels("fedsim", "agent", device)
    pod_labels = labels("fedsim", "agent", {**device, LABEL_GROUP: str(p.group)})
    image = options.gpu_image if p.gpu else options.image
    tmp, tmp_mount = _tmp_volume()
    volumes: list[dict[str, Any]] = [
        {
            "name": "state",
            "hostPath": {
                "path": f"{HOST_STATE_ROOT}/device-{p.device}",
                "type": "DirectoryOrCreate",
            },
        },
        tmp,
    ]
    mounts: list[dict[str, Any]] = [{"name": "state", "mountPath": AGENT_STATE_DIR}, tmp_mount]
    data = options.agent_data
    if data is not None and data.startswith("/"):
        kind = "File" if data.endswith(".npz") else "Directory"  # fail early if missing
        volumes.append({"name": "data", "hostPath": {"path": data, "type": kind}})
        mounts.append({"name": "data", "mountPath": data, "readOnly": True})
    container: dict[str, Any] = {
        "name": "agent",
        "image": image,
        "args": agent_args(p, options),
        "env": [
            field_env("NODE_IP", "status.hostIP"),
            field_env("NODE_NAME", "spec.nodeName"),
            secret_env("FEDSIM_ENROLLMENT_TOKEN", TOKENS_SECRET, ENROLLMENT_TOKEN_KEY),
        ],
        "ports": [{"name": "metrics", "containerPort": AGENT_METRICS_PORT, "protocol": "TCP"}],
        # No liveness probe: a device busy training may answer /metrics late, and killing it
        # mid-round loses the round's work; the agent exits on a fatal error by itself.
        "volumeMounts": mounts,
        "securityContext": container_security(),
    }
    tolerations = [edge_toleration(options.edge_taint)]
    if p.gpu:
        container["resources"] = {"limits": {options.gpu_resource: 1}}
        # GPU nodes are commonly tainted with the resource's name to keep CPU pods off.
        tolerations.append(edge_toleration(options.gpu_resource))
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(f"fedsim-agent-{p.device}", ns, pod_labels),
        "spec": {
            "replicas": 1,
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {"labels": pod_labels},
                "spec": {
                    "automountServiceAccountToken": False,
                    "nodeSelector": node_selector(p),
                    "tolerations": tolerations,
                    "securityContext": pod_security(UID),
                    # The agent finishes the request in flight on SIGTERM.
                    "terminationGracePeriodSeconds": 60,
                    "initContainers": [_state_dir_owner(image)],
                    "containers": [container],
                    "volumes": volumes,
                },
            },
        },
    }


def agents_file(group: int) -> str:
    return f"agents-group-{group}.yaml"


def build_manifests(
    topology: TopologyPlacements, options: ManifestOptions
) -> dict[str, list[dict[str, Any]]]:
    """File name -> the objects it holds, every file in apply order.

    Agents go one file per group, so a group's devices can be applied or deleted together.
    """
    by_id = {p.device: p for p in topology.devices}
    files: dict[str, list[dict[str, Any]]] = {
        "namespace.yaml": [namespace(options)],
        "server.yaml": server(by_id[topology.server], options),
    }
    for p in sorted(topology.devices, key=lambda d: (d.group, d.device)):
        files.setdefault(agents_file(p.group), []).append(agent(p, options))
    files["node-exporter.yaml"] = node_exporter(options)
    files["prometheus.yaml"] = prometheus(options)
    files["grafana.yaml"] = grafana(options)
    log.info("%d files, %d agents", len(files), len(topology.devices))
    return files


def kustomization(files: Iterable[str], options: ManifestOptions) -> dict[str, Any]:
    """The kustomization listing ``files``, with Secrets generated from ``secrets/``.

    The secrets' values never appear in a manifest: ``kubectl apply -k`` reads them from the
    files under ``secrets/`` (see :func:`fedsim.deploy.output.ensure_secrets`), and the hash
    it appends to each Secret's name rolls the pods that use it when a token changes.
    """
    return {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "namespace": options.namespace,
        "resources": list(files),
        "secretGenerator": [
            {
                "name": name,
                "type": "Opaque",
                "files": [f"{key}={SECRETS_DIR}/{key}" for key in keys],
            }
            for name, keys in SECRET_FILES.items()
        ],
    }
