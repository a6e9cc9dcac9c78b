"""Keeps a federated run's model versions and deployments in a model repository.

Hooked to the coordinator's ``on_round``: each aggregated round stores the new global model as
a version (safetensors, with the round and its evaluation metrics), and each round's deployment
records which devices received the version it started from and how that ended for them. The
repository's statistics are then what the seed paper's Fig. 3(c) shows for the model.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

from fedsim.core.coordinator import RoundReport
from fedsim.core.repository import DeploymentState, DuplicateModel, ModelRepository
from fedsim.core.runtime import NDArrays
from fedsim.store.safetensors_io import encode


class RepositoryRecorder:
    """Stores versions and deployments of model ``name`` as rounds end.

    The model may already be registered (an earlier job on the same server, a run directory
    used again): the run's versions then continue its history, starting from ``initial``.
    """

    def __init__(
        self,
        repository: ModelRepository,
        *,
        name: str,
        architecture: str,
        initial: NDArrays,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        self.repository = repository
        self.name = name
        with contextlib.suppress(DuplicateModel):
            # Registering and catching the duplicate, rather than looking first, also holds
            # when two jobs on one server start at once.
            repository.register_model(name, architecture, metadata)
        self.version = repository.add_version(name, encode(initial)).version

    def record(self, report: RoundReport, parameters: NDArrays | None) -> None:
        # A round that found no device to select (none online, on a server) sent the version
        # nowhere: it has no deployment to record, and the repository refuses an empty one.
        if report.selected:
            self._deployment(report)
        if report.aggregated and parameters is not None:
            metrics = {k: float(v) for k, v in report.metrics.items()}
            if report.train_loss is not None:
                metrics["train_loss"] = report.train_loss
            info = self.repository.add_version(
                self.name,
                encode(parameters),
                parent=self.version,
                round=report.round,
                metrics=metrics,
            )
            self.version = info.version

    def _deployment(self, report: RoundReport) -> None:
        # An asynchronous aggregation may hold two updates of one fast device; the deployment
        # names each device once.
        devices = list(dict.fromkeys(report.selected))
        deployment = self.repository.create_deployment(self.name, self.version, devices)
        arrived = set(report.completed) | set(report.rejected)
        changes: list[tuple[int, DeploymentState]] = []
        for device in devices:
            # Every selected device was sent the version; those that answered had it.
            final = DeploymentState.DEPLOYED if device in arrived else DeploymentState.FAILED
            changes += [(device, DeploymentState.DOWNLOADING), (device, final)]
        self.repository.set_deployment_states(deployment.id, changes)
