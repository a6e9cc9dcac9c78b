"""``fedsim k8s-manifests --topology NAME OUT``: Kubernetes manifests for a topology.

Exit codes: 0 when written, 2 for a bad argument, an unknown topology, a configuration that
does not build, or an output directory that cannot take the files, in one line on stderr.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

from fedsim.cli_args import OneLineParser
from fedsim.deploy.common import (
    DEFAULT_EDGE_TAINT,
    DEFAULT_GPU_RESOURCE,
    DEFAULT_IMAGE,
    LABEL_DEVICE,
    LABEL_GROUP,
    ManifestOptions,
)
from fedsim.deploy.k8s import (
    KUSTOMIZATION,
    SECRET_FILES,
    SECRETS_DIR,
    build_manifests,
    kustomization,
)
from fedsim.deploy.output import OutputError, ensure_secrets, prepare_directory, render, write_files
from fedsim.deploy.placement import PlacementError, placements

PROG = "fedsim k8s-manifests"
LARGE_FLEET = 1000  # devices beyond which the output's size deserves a warning

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog=PROG,
        description=(
            "Write Kubernetes manifests that run fedsim on an existing cluster for a topology "
            "of conf/topology/: a namespace; the server (Deployment, Service, a volume for "
            "its repository) on the topology's server device; one agent per device, pinned "
            f"to the node labelled {LABEL_DEVICE}=<id> and {LABEL_GROUP}=<group>, with a GPU "
            "where the device's hardware profile trains on one; node_exporter on every device "
            "node; Prometheus and Grafana. OUT/kustomization.yaml ties them together and "
            f"generates the Secrets from OUT/{SECRETS_DIR}/, where missing tokens are created "
            "at random (mode 0600) and existing ones kept. Apply with: kubectl apply -k OUT"
        ),
    )
    p.add_argument(
        "out", metavar="OUT", type=Path, help="the directory to write, created if missing"
    )
    p.add_argument("--topology", required=True, metavar="NAME", help="a topology of conf/topology/")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        dest="overrides",
        metavar="KEY=VALUE",
        help="a Hydra override applied to the configuration before the topology is read, "
        "e.g. topology.generate.devices_per_group=4 (repeatable)",
    )
    p.add_argument(
        "--namespace",
        default="fedsim",
        help="the namespace to create and use (default: %(default)s)",
    )
    p.add_argument(
        "--image",
        default=DEFAULT_IMAGE,
        help="the fedsim image (deploy/Dockerfile) for the server and CPU agents "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--gpu-image",
        help="the fedsim image built with CUDA, for agents that train on a GPU "
        "(default: --image's tag with -cuda appended)",
    )
    p.add_argument(
        "--storage-size",
        default="10Gi",
        metavar="QUANTITY",
        help="the server's volume, for its model repository and registry (default: %(default)s)",
    )
    p.add_argument(
        "--prometheus-storage-size",
        default="10Gi",
        metavar="QUANTITY",
        help="Prometheus's volume (default: %(default)s)",
    )
    p.add_argument(
        "--storage-class",
        metavar="NAME",
        help="the StorageClass of both volumes (default: the cluster's default class)",
    )
    p.add_argument(
        "--agent-data",
        metavar="SPEC",
        help="every agent's --data: synthetic:N, or an absolute path that exists on each "
        "device node (an .npz file or a class-folder directory), mounted read-only "
        "(default: none, agents run timing-only and upload tasks)",
    )
    p.add_argument(
        "--gpu-resource",
        default=DEFAULT_GPU_RESOURCE,
        metavar="NAME",
        help="the extended resource a GPU agent requests one of (default: %(default)s)",
    )
    p.add_argument(
        "--edge-taint",
        default=DEFAULT_EDGE_TAINT,
        metavar="KEY",
        help="the NoSchedule taint key of device nodes, which fedsim's pods tolerate "
        "(default: %(default)s)",
    )
    return p


def _conf_dir() -> Path:
    from fedsim.config import conf_dir

    return conf_dir()


def generate(args: argparse.Namespace) -> tuple[int, list[str]]:
    """Write the manifests ``args`` describe; (number of agents, secret keys created)."""
    options = ManifestOptions(
        namespace=args.namespace,
        image=args.image,
        gpu_image=args.gpu_image,
        storage_size=args.storage_size,
        storage_class=args.storage_class,
        prometheus_storage_size=args.prometheus_storage_size,
        agent_data=args.agent_data,
        gpu_resource=args.gpu_resource,
        edge_taint=args.edge_taint,
    )
    topology = placements(args.topology, _conf_dir(), args.overrides)
    if len(topology.devices) > LARGE_FLEET:
        log.warning(
            "topology %s has %d devices: one agent Deployment each makes large files; "
            "--set can shrink a generated fleet",
            topology.name,
            len(topology.devices),
        )
    files = build_manifests(topology, options)
    # The header of every file names the command that regenerates it.
    source = " ".join([f"--topology {args.topology}", *(f"--set {o}" for o in args.overrides)])
    texts = {name: render(objects, source=source) for name, objects in files.items()}
    texts[KUSTOMIZATION] = render([kustomization(files, options)], source=source)
    stale = prepare_directory(args.out, texts)
    write_files(args.out, texts)
    for path in stale:
        log.info("removing %s, which this topology no longer needs", path)
        path.unlink()
    keys = [key for group in SECRET_FILES.values() for key in group]
    created = ensure_secrets(args.out / SECRETS_DIR, keys)
    return len(topology.devices), created


def main(argv: Sequence[str] | None = None) -> int:
    """Write the manifests ``argv`` asks for; the process's exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        agents, created = generate(args)
    except (PlacementError, OutputError, ValueError) as e:  # each names the bad input
        parser.error(str(e))
    if created:
        print(f"generated secrets: {', '.join(f'{SECRETS_DIR}/{k}' for k in created)}")
    print(f"{agents} agents; apply with: kubectl apply -k {args.out}")
    return 0
