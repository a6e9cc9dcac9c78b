"""Runtimes by ``mode``: where a run's tasks go and whose clock times them.

Each entry names a factory in its own module, loaded only when asked for, so that picking the
simulator never imports aiohttp and the real runtime never imports SimPy:

- ``sim``: the SimPy simulation of the topology (:mod:`fedsim.runtimes.sim`);
- ``real``: a fedsim server and one agent process per client on this host
  (:mod:`fedsim.runtimes.real`);
- ``emulated``: as ``real``, with the topology's links and device speeds emulated on this
  host (network namespaces, tc, CPU cgroups; needs root) (:mod:`fedsim.runtimes.emulated`);
- ``attached``: a server that is already up, whose stores it is handed: the runtime of jobs
  (:mod:`fedsim.runtimes.attached`).

A runtime opens a :class:`Session` for one run: fresh transports (one per scenario run), the
scheduler's resource view over a transport, and the model store. Adding a runtime is a module
with a factory and an entry in :data:`RUNTIMES`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import numpy as np

from fedsim.core.repository import ModelRepository
from fedsim.core.runtime import FitIns, NDArrays, Transport
from fedsim.core.scheduling import ResourceView
from fedsim.core.topology import Topology

if TYPE_CHECKING:
    from fedsim.spec import ExperimentSpec

RUNTIMES: dict[str, str] = {
    "sim": "fedsim.runtimes.sim:SimRuntime",
    "real": "fedsim.runtimes.real:LocalRuntime",
    "emulated": "fedsim.runtimes.emulated:EmulatedRuntime",
    "attached": "fedsim.runtimes.attached:AttachedRuntime",
}

# Trains a FitIns for real in this process: (device, instructions) -> (parameters, metrics).
LocalTrainer = Callable[[int, FitIns], tuple[NDArrays, dict[str, float]]]
Shards = Mapping[int, tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True, kw_only=True)
class Needs:
    """What a scenario asks of a runtime for one run.

    A runtime that trains in-process uses ``trainer``; one whose devices are processes hands
    each its ``shards`` entry, or ``agent_data`` (e.g. ``synthetic:4``) where it has none.
    """

    clients: Sequence[int]
    train_flops_per_sample: float
    trainer: LocalTrainer | None = None
    shards: Shards | None = None
    agent_data: str | None = None
    store: bool = False  # keep the run's model versions in a repository


# The kind of transport a session makes; its resource view reads that kind only.
TransportT = TypeVar("TransportT", bound=Transport)


class Session(Protocol[TransportT]):
    """An open runtime: where one run's transports, resource view and model store come from."""

    @property
    def store(self) -> ModelRepository | None:
        """Where the run's model versions are kept; None when the run keeps none."""

    def transport(self, topology: Topology, seed: np.random.SeedSequence) -> TransportT:
        """A fresh transport, its clock at zero, for one scenario run."""

    def resources(self, transport: TransportT) -> ResourceView:
        """The scheduler's view of the devices behind ``transport``, one this session made."""


class Runtime(Protocol):
    """Opens sessions; one registry entry."""

    measured: bool  # times are wall-clock seconds of real processes, not simulated ones

    def open(
        self, spec: ExperimentSpec, run_dir: Path, needs: Needs
    ) -> AbstractContextManager[Session[Any]]:
        """The session of one run of ``spec``, writing what it keeps under ``run_dir``."""


def runtime(name: str, **options: Any) -> Runtime:
    """The runtime registered as ``name``, built with ``options``."""
    if name not in RUNTIMES:
        raise KeyError(f"mode: {name!r} is not one of {', '.join(RUNTIMES)}")
    module, factory = RUNTIMES[name].split(":")
    return getattr(import_module(module), factory)(**options)
