"""What every generated Kubernetes object shares: the options, names, labels and hardening.

The numbers here are contracts with other files: :data:`UID` is the user the image in
``deploy/Dockerfile`` runs as, :data:`SERVER_PORT` and :data:`HEALTH_PATH` are the server's
(``fedsim server``), and the secret keys are the files ``kustomization.yaml`` reads.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from fedsim import __version__

DEFAULT_IMAGE = f"ghcr.io/fedsim/fedsim:{__version__}"
PART_OF = "fedsim"

# Node labels that say which device of the topology a node is, and which group it is in.
LABEL_DEVICE = "fedsim.io/device"
LABEL_GROUP = "fedsim.io/group"
DEFAULT_EDGE_TAINT = "fedsim.io/edge"
DEFAULT_GPU_RESOURCE = "nvidia.com/gpu"  # the NVIDIA device plugin's extended resource

UID = 10001  # deploy/Dockerfile's non-root user
SERVER_NAME = "fedsim-server"
SERVER_PORT = 8080
HEALTH_PATH = "/health"
SERVER_DATA_DIR = "/var/lib/fedsim"
AGENT_METRICS_PORT = 9101  # beside node_exporter's 9100, as the README's agents use
NODE_EXPORTER_PORT = 9100  # node_exporter's default port
PROMETHEUS_NAME = "prometheus"
PROMETHEUS_PORT = 9090

TOKENS_SECRET = "fedsim-tokens"
ADMIN_TOKEN_KEY = "admin-token"
VIEWER_TOKEN_KEY = "viewer-token"  # read-only: service discovery and the dashboard
ENROLLMENT_TOKEN_KEY = "enrollment-token"
GRAFANA_SECRET = "grafana-admin"
GRAFANA_PASSWORD_KEY = "grafana-admin-password"

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$")
_QUALIFIED = re.compile(
    r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
)
_SYNTHETIC = re.compile(r"^synthetic:[1-9][0-9]*$")


def gpu_image_for(image: str) -> str:
    """The CUDA build's reference beside ``image``: its tag with ``-cuda`` appended.

    ``deploy/Dockerfile`` builds the CUDA variant from the same source with
    ``--build-arg TORCH_VARIANT=cu128``; the README tags it so. A digest names one build, so
    nothing can be derived from it.
    """
    if "@" in image:
        raise ValueError(f"--image {image!r}: a digest names one build; pass --gpu-image too")
    name, _, tag = image.rpartition(":")
    if name and "/" not in tag:
        return f"{image}-cuda"
    return f"{image}:cuda"


@dataclass(frozen=True, kw_only=True)
class ManifestOptions:
    """The choices a cluster's operator makes; checked on construction.

    ``agent_data`` is each agent's ``--data``: ``synthetic:N``, or an absolute path that
    exists on every device node (an ``.npz`` file or a class-folder directory), mounted
    read-only at the same path. None: agents run timing-only and upload tasks only.
    """

    namespace: str = "fedsim"
    image: str = DEFAULT_IMAGE
    gpu_image: str | None = None  # default: gpu_image_for(image)
    storage_size: str = "10Gi"
    storage_class: str | None = None
    prometheus_storage_size: str = "10Gi"
    agent_data: str | None = None
    gpu_resource: str = DEFAULT_GPU_RESOURCE
    edge_taint: str = DEFAULT_EDGE_TAINT

    def __post_init__(self) -> None:
        if not _DNS_LABEL.match(self.namespace):
            raise ValueError(
                f"--namespace {self.namespace!r}: expected a DNS label "
                "(lower-case letters, digits and '-', at most 63)"
            )
        for flag, image in (("--image", self.image), ("--gpu-image", self.gpu_image)):
            if image is not None and (not image or any(c.isspace() for c in image)):
                raise ValueError(f"{flag} {image!r}: expected an image reference")
        if self.gpu_image is None:
            object.__setattr__(self, "gpu_image", gpu_image_for(self.image))
        for flag, size in (
            ("--storage-size", self.storage_size),
            ("--prometheus-storage-size", self.prometheus_storage_size),
        ):
            if not _QUANTITY.match(size):
                raise ValueError(f"{flag} {size!r}: expected a Kubernetes quantity such as 10Gi")
        if self.storage_class is not None and not re.match(
            r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", self.storage_class
        ):
            raise ValueError(f"--storage-class {self.storage_class!r}: not a valid class name")
        data = self.agent_data
        if data is not None and not (_SYNTHETIC.match(data) or data.startswith("/")):
            raise ValueError(
                f"--agent-data {data!r}: expected synthetic:N or an absolute path on the nodes"
            )
        # An extended resource is always prefixed by its vendor's domain; a taint key may not be.
        if "/" not in self.gpu_resource or not _QUALIFIED.match(self.gpu_resource):
            raise ValueError(
                f"--gpu-resource {self.gpu_resource!r}: expected DOMAIN/NAME, e.g. nvidia.com/gpu"
            )
        if not _QUALIFIED.match(self.edge_taint) or len(self.edge_taint) > 253:
            raise ValueError(
                f"--edge-taint {self.edge_taint!r}: expected a taint key such as fedsim.io/edge"
            )

    @property
    def server_url(self) -> str:
        """The server as every pod of the cluster reaches it, through its Service."""
        return f"http://{SERVER_NAME}.{self.namespace}.svc:{SERVER_PORT}"

    @property
    def prometheus_url(self) -> str:
        return f"http://{PROMETHEUS_NAME}.{self.namespace}.svc:{PROMETHEUS_PORT}"


def labels(name: str, component: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The recommended ``app.kubernetes.io`` labels of one component, plus ``extra``."""
    return {
        "app.kubernetes.io/name": name,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/part-of": PART_OF,
        **(extra or {}),
    }


def metadata(name: str, namespace: str, object_labels: dict[str, str]) -> dict[str, Any]:
    return {"name": name, "namespace": namespace, "labels": dict(object_labels)}


def pod_security(uid: int) -> dict[str, Any]:
    """Pod-level hardening: never root, the runtime's seccomp profile; volumes owned by ``uid``."""
    return {
        "runAsNonRoot": True,
        "runAsUser": uid,
        "runAsGroup": uid,
        "fsGroup": uid,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security() -> dict[str, Any]:
    """Container hardening: no capabilities, no escalation, a read-only root (``/tmp`` apart)."""
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }


def secret_env(name: str, secret: str, key: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}


def field_env(name: str, field_path: str) -> dict[str, Any]:
    """An environment variable from the downward API (``status.hostIP``, ``spec.nodeName``)."""
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": field_path}}}


def edge_toleration(taint: str) -> dict[str, Any]:
    """Tolerate the taint that keeps everything but fedsim's own pods off the device nodes."""
    return {"key": taint, "operator": "Exists", "effect": "NoSchedule"}


def pvc(
    name: str, namespace: str, object_labels: dict[str, str], size: str, storage_class: str | None
) -> dict[str, Any]:
    """A single-node volume: ReadWriteOnce, as SQLite and Prometheus's TSDB want it."""
    spec: dict[str, Any] = {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": size}},
    }
    if storage_class is not None:
        spec["storageClassName"] = storage_class
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": metadata(name, namespace, object_labels),
        "spec": spec,
    }


def service(
    name: str, namespace: str, object_labels: dict[str, str], port: int, selector: dict[str, str]
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(name, namespace, object_labels),
        "spec": {
            "type": "ClusterIP",
            "selector": dict(selector),
            "ports": [{"name": "http", "port": port, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def http_probe(path: str, port: str = "http", **timing: int) -> dict[str, Any]:
    return {"httpGet": {"path": path, "port": port}, **timing}
