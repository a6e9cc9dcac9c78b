"""The ``attached`` runtime: a fedsim server that is already up, over its own stores.

Jobs run this way (the server's job manager hands the pipeline its stores), and so does the
``real`` runtime once it has started its local server and agents. Tasks go to the agents through
the server's task board; each transport's task ids carry the session's channel, so that jobs
sharing a server never collide.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fedsim.core.faults import FaultPlan
from fedsim.core.repository import ModelRepository
from fedsim.core.topology import Topology
from fedsim.real.resources import RegistryResources
from fedsim.real.stores import ServerStores
from fedsim.real.transport import HttpTransport
from fedsim.runtimes import Needs, Runtime
from fedsim.spec import ExperimentSpec


@dataclass(kw_only=True)
class ServerSession:
    """Transports over a server's task board; resources from its device registry.

    Each transport drops fit tasks as the fault plan's ``dropout`` says, drawn from its seed
    exactly as the simulator draws them; ``on_transport`` hears of each new transport (the
    real runtime starts its outages on the first one's clock).
    """

    stores: ServerStores
    topology: Topology
    needs: Needs
    faults: FaultPlan = field(default_factory=FaultPlan)
    channel: str = ""
    on_transport: Callable[[HttpTransport], None] | None = None
    _count: itertools.count = field(default_factory=itertools.count)

    @property
    def store(self) -> ModelRepository:
        return self.stores.repository

    def transport(self, topology: Topology, seed: np.random.SeedSequence) -> HttpTransport:
        transport = HttpTransport(
            board=self.stores.board,
            repository=self.stores.repository,
            server=topology.server,
            channel=f"{self.channel}{next(self._count)}:",
            faults=self.faults,
            seed=seed,
        )
        if self.on_transport is not None:
            self.on_transport(transport)
        return transport

    def resources(self, transport: HttpTransport) -> RegistryResources:
        profiles = {d: self.topology.devices[d].hardware for d in self.needs.clients}
        return RegistryResources(
            self.stores.registry,
            train_flops_per_sample=self.needs.train_flops_per_sample,
            profiles=profiles,
        )


@dataclass(frozen=True)
class AttachedRuntime:
    """Runs over ``stores`` of a server that is up; ``channel`` prefixes its task ids.

    It has no agent processes to stop, so a fault plan with outages is refused (``ValueError``).
    """

    stores: ServerStores
    channel: str = ""
    measured = True

    @contextmanager
    def open(self, spec: ExperimentSpec, run_dir: Path, needs: Needs) -> Iterator[ServerSession]:
        if spec.faults.outages:
            raise ValueError(
                "faults.outages: a running server cannot stop its devices' agents; "
                "run the experiment with mode=real on one host to inject outages"
            )
        yield ServerSession(
            stores=self.stores,
            topology=spec.topology,
            needs=needs,
            faults=spec.faults,
            channel=self.channel,
        )


if TYPE_CHECKING:
    # Runtime is a Protocol: nothing else makes mypy check that this class implements it.
    _checked: type[Runtime] = AttachedRuntime
