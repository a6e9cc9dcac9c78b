"""The ``sim`` runtime: SimPy over the topology, training (if any) in this process."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fedsim.core import collector
from fedsim.core.faults import FaultPlan
from fedsim.core.repository import ModelRepository
from fedsim.core.secagg import SecAggDevices
from fedsim.core.topology import Topology
from fedsim.real.secagg_crypto import X25519Crypto
from fedsim.runtimes import Needs, Runtime
from fedsim.sim.independent import IndependentNetwork
from fedsim.sim.network import FlowNetwork, FlowNetworkBase
from fedsim.sim.resources import SimResources
from fedsim.sim.runtime import SimTransport
from fedsim.spec import ExperimentSpec

# The flow models mode.network names (fedsim.config.NETWORKS lists the same names).
NETWORKS: dict[str, type[FlowNetworkBase]] = {
    "shared": FlowNetwork,
    "independent": IndependentNetwork,
}


@dataclass(kw_only=True)
class SimSession:
    needs: Needs
    faults: FaultPlan
    store: ModelRepository | None = None
    secure: bool = False
    polling: bool = False  # SimTransport's: latency as fedsim's agents pay it
    network: str = "shared"  # mode.network: a key of NETWORKS

    def transport(self, topology: Topology, seed: np.random.SeedSequence) -> SimTransport:
        # Under secure aggregation the devices' side of the protocol runs in the transport,
        # as it runs in each agent in real mode.
        secagg = SecAggDevices(crypto=X25519Crypto()) if self.secure else None
        return SimTransport(
            topology,
            seed=seed,
            trainer=self.needs.trainer,
            faults=self.faults,
            secagg=secagg,
            polling=self.polling,
            network=NETWORKS[self.network],
        )

    def resources(self, transport: SimTransport) -> SimResources:
        return SimResources(transport, train_flops_per_sample=self.needs.train_flops_per_sample)


class SimRuntime:
    """Simulated devices and links; faults are injected by the simulator."""

    measured = False

    @contextmanager
    def open(self, spec: ExperimentSpec, run_dir: Path, needs: Needs) -> Iterator[SimSession]:
        store = None
        if needs.store:
            from fedsim.store.sqlite import SqliteRepository

            store = SqliteRepository(Path(run_dir) / "repository")
        try:
            secure = spec.secagg is not None
            # The fleet's objects (millions, for a large one) are not walked again by the
            # collector while the session runs, and young collections come fewer.
            with collector.relaxed():
                yield SimSession(
                    needs=needs,
                    faults=spec.faults,
                    store=store,
                    secure=secure,
                    polling=spec.mode.polling,
                    network=spec.mode.network,
                )
        finally:
            if store is not None:
                store.close()


if TYPE_CHECKING:
    # Runtime is a Protocol: nothing else makes mypy check that this class implements it.
    _checked: type[Runtime] = SimRuntime
