"""Where each device of a topology runs on a cluster, and what it needs there.

A topology from ``conf/topology/`` is composed exactly as ``python -m fedsim topology=NAME``
composes it (same schema, same overrides) and built by :func:`fedsim.config.build_topology`,
so the cluster gets the devices, groups and hardware profiles that the simulator models. The
one fact the core's :class:`~fedsim.core.topology.HardwareProfile` does not keep, whether the
device trains on a GPU, is read from the profile's config (``train_on`` and ``accelerator``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from fedsim.config import ConfigError, HardwareConf, build_topology, register_configs

log = logging.getLogger(__name__)


class PlacementError(ValueError):
    """A topology that cannot be read; the message names the bad input in one line."""


@dataclass(frozen=True, kw_only=True)
class Placement:
    """One device of the topology as the cluster sees it: a node to run on and its needs."""

    device: int
    group: int
    id_in_group: int
    role: str
    description: str
    group_description: str
    profile: str
    gpu: bool  # the profile trains on an accelerator, so the agent needs one


@dataclass(frozen=True, kw_only=True)
class TopologyPlacements:
    """A topology's name, its server device and every device's placement, by device id."""

    name: str
    server: int
    devices: tuple[Placement, ...]


def available_topologies(conf_dir: Path) -> list[str]:
    return sorted(p.stem for p in (conf_dir / "topology").glob("*.yaml"))


def compose(topology: str, overrides: Sequence[str], conf_dir: Path) -> Any:
    """The composed config for ``topology=NAME`` plus ``overrides``, as ``python -m fedsim``."""
    known = available_topologies(conf_dir)
    if topology not in known:
        raise PlacementError(
            f"--topology {topology!r}: unknown topology (available: {', '.join(known)})"
        )
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    register_configs()
    try:
        with initialize_config_dir(config_dir=str(conf_dir), version_base=None):
            return hydra_compose(
                config_name="config", overrides=[f"topology={topology}", *overrides]
            )
    except Exception as e:  # Hydra reports composition failures through several types
        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        cause = str(e.__cause__ or "").strip()
        if cause:  # Hydra's "Could not override 'x'." says why only in its cause
            detail += " " + cause.splitlines()[0]
        raise PlacementError(f"--set {' '.join(overrides)}: {detail}") from None


def _hardware_conf(cfg: Any, name: str, conf_dir: Path) -> Any:
    """Profile ``name``'s config: the composed one, else ``conf/hardware/NAME.yaml``.

    The same two places, in the same order, as :func:`fedsim.config.build_topology` looks.
    """
    if name in cfg.hardware:
        return cfg.hardware[name]
    path = conf_dir / "hardware" / f"{name}.yaml"
    try:
        return OmegaConf.merge(OmegaConf.structured(HardwareConf), OmegaConf.load(path))
    except (OSError, OmegaConfBaseException) as e:
        raise PlacementError(f"hardware.{name} ({path}): {e}") from None


def trains_on_gpu(conf: Any) -> bool:
    """Whether a hardware profile trains on its accelerator.

    A profile that has a GPU but trains on the CPU (``train_on: cpu``) gets no GPU on the
    cluster: the simulator times that device's training on its CPU, and a GPU reserved for
    it would sit idle while other pods could not have it.
    """
    return conf.train_on == "accelerator" and conf.accelerator is not None


def placements(topology: str, conf_dir: Path, overrides: Sequence[str] = ()) -> TopologyPlacements:
    """Every device of ``topology`` (after ``overrides``) with its node labels and needs."""
    cfg = compose(topology, overrides, conf_dir)
    try:
        topo = build_topology(cfg, conf_dir)
    except ConfigError as e:
        raise PlacementError(str(e)) from None
    gpu: dict[str, bool] = {}
    devices = []
    for dev in sorted(topo.devices.values(), key=lambda d: d.id):
        name = dev.hardware.name
        if name not in gpu:
            gpu[name] = trains_on_gpu(_hardware_conf(cfg, name, conf_dir))
        devices.append(
            Placement(
                device=dev.id,
                group=dev.group,
                id_in_group=dev.id_in_group,
                role=dev.role,
                description=dev.description,
                group_description=topo.groups[dev.group].description,
                profile=name,
                gpu=gpu[name],
            )
        )
    log.info("topology %s: %d devices, server %d", topo.name, len(devices), topo.server)
    return TopologyPlacements(name=topo.name, server=topo.server, devices=tuple(devices))
