"""The paper's two ways to train, written against the transport interface.

- cloud-based (``t_ref``): every device ships its training data to the cloud server, which then
  trains on all of it;
- client-based (``t_new``): one federated round: the server deploys the model, every device
  trains on its own data and returns its update, the server aggregates and publishes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fedsim.core.coordinator import ClientWork, Coordinator, FederatedConfig, RoundReport
from fedsim.core.events import EventKind
from fedsim.core.runtime import Cost, ModelRef, NDArrays, Task, Transport, UploadDataIns
from fedsim.core.strategies.fedavg import FedAvg
from fedsim.core.workload import WorkloadSpec


class ScenarioError(RuntimeError):
    """A scenario could not complete (a device failed where the scenario needs it)."""


@dataclass(frozen=True, kw_only=True)
class RealWork:
    """What a runtime that does the work for real needs beyond the workload's costs.

    ``server_train(samples)`` trains on the server in the cloud-based scenario; ``parameters``
    are deployed in the client-based one, with ``client_config`` telling agents what to build.
    Left empty, the work is modelled from its cost (the simulator's way).
    """

    server_train: Callable[[int], object] | None = None
    parameters: NDArrays | None = None
    client_config: Mapping[str, Any] = field(default_factory=dict)


MODELLED = RealWork()


def cloud_based(
    transport: Transport,
    *,
    clients: Sequence[int],
    workload: WorkloadSpec,
    real: RealWork = MODELLED,
) -> float:
    """Upload every client's shard to the server, then train there; returns the elapsed time."""
    t0 = transport.now()
    n = workload.samples_per_device
    tasks = [
        Task(
            id=f"data-d{dev}",
            device=dev,
            ins=UploadDataIns(samples=n, nbytes=workload.shard_bytes()),
        )
        for dev in clients
    ]
    results = transport.run(tasks)
    failed = {r.device: r.error for r in results if not r.ok}
    if failed or len(results) < len(tasks):
        raise ScenarioError(f"data upload failed: {failed or 'results missing'}")
    samples = n * len(results)
    server_train = real.server_train
    train = None if server_train is None else (lambda: server_train(samples))
    cost = Cost(
        flops=workload.train_flops(samples),
        model=workload.model.name,
        samples=samples,
        batch_size=workload.batch_size,
        epochs=workload.epochs,
    )
    transport.server_work(EventKind.TRAIN, cost, train)
    return transport.now() - t0


def client_based(
    transport: Transport,
    *,
    clients: Sequence[int],
    workload: WorkloadSpec,
    real: RealWork = MODELLED,
) -> tuple[float, RoundReport]:
    """One FedAvg round on ``clients``; returns the elapsed time and the round's report."""
    t0 = transport.now()
    spec = workload.model
    coordinator = Coordinator(
        transport=transport,
        strategy=FedAvg(),
        work=ClientWork(
            samples=dict.fromkeys(clients, workload.samples_per_device),
            train_flops_per_sample=float(spec.train_flops),
            update_nbytes=spec.state_bytes,
            state_values=spec.state_values,
            config=real.client_config,
        ),
        model=ModelRef(name=spec.name, version=0, nbytes=spec.state_bytes),
        parameters=real.parameters,
        config=FederatedConfig(
            rounds=1,
            min_fit=len(clients),
            local_epochs=workload.epochs,
            batch_size=workload.batch_size,
        ),
    )
    report = coordinator.fit_round(0, clients)
    if not report.aggregated:
        raise ScenarioError(f"federated round failed: {report.failures}")
    return transport.now() - t0, report
