"""The round coordinator: deploy the current model, collect updates, aggregate, publish.

Written once against :class:`~fedsim.core.runtime.Transport`; the simulator and the real
runtime drive it unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from fedsim.core.events import EventKind
from fedsim.core.runtime import (
    Cost,
    FitIns,
    ModelRef,
    NDArrays,
    Task,
    TaskResult,
    Transport,
)
from fedsim.core.strategies.base import Strategy

log = logging.getLogger(__name__)

# Builds one device's instructions for a round from the model version it must train.
FitPlan = Callable[[int, ModelRef, NDArrays | None], FitIns]


@dataclass(frozen=True, kw_only=True)
class RoundReport:
    """What happened in one round."""

    round: int
    started: float
    finished: float
    selected: tuple[int, ...]
    completed: tuple[int, ...]
    failures: dict[int, str] = field(default_factory=dict)
    aggregated: bool = False
    version: ModelRef | None = None

    @property
    def duration(self) -> float:
        return self.finished - self.started


class RoundCoordinator:
    """Runs federated rounds over a transport with a strategy, keeping the current version."""

    def __init__(
        self,
        *,
        transport: Transport,
        strategy: Strategy,
        model: ModelRef,
        parameters: NDArrays | None = None,
        state_values: int,
    ) -> None:
        self.transport = transport
        self.strategy = strategy
        self.model = model
        self.parameters = parameters
        self.state_values = state_values
        self.history: list[RoundReport] = []

    def fit_round(
        self,
        rnd: int,
        clients: Sequence[int],
        plan: FitPlan,
        *,
        min_fit: int = 1,
        deadline_s: float | None = None,
    ) -> RoundReport:
        """One synchronous round; it fails, without raising, below ``min_fit`` updates."""
        t = self.transport
        started = t.now()
        tasks = [
            Task(id=f"r{rnd}-d{dev}", device=dev, ins=plan(dev, self.model, self.parameters))
            for dev in clients
        ]
        deadline = None if deadline_s is None else started + deadline_s
        results = t.run(tasks, deadline=deadline)
        ok = [r for r in results if r.ok and r.update is not None]
        failures = {r.device: r.error or "no update" for r in results if not r.ok}
        arrived = {r.device for r in results}
        failures.update({dev: "missed the deadline" for dev in clients if dev not in arrived})
        report = dict(round=rnd, started=started, selected=tuple(clients), failures=failures)
        if len(ok) < min_fit:
            log.warning("round %d failed: %d updates < min_fit %d", rnd, len(ok), min_fit)
            rep = RoundReport(**report, finished=t.now(), completed=tuple(r.device for r in ok))
            self.history.append(rep)
            return rep
        self._aggregate(ok)
        rep = RoundReport(
            **report,
            finished=t.now(),
            completed=tuple(r.device for r in ok),
            aggregated=True,
            version=self.model,
        )
        self.history.append(rep)
        return rep

    def _aggregate(self, results: Sequence[TaskResult]) -> None:
        t = self.transport
        updates = [r.update for r in results if r.update is not None]
        n = len(updates)
        model_bytes = self.model.nbytes
        # Aggregation streams every update once through memory and writes the result: it is
        # bound by memory bandwidth; one multiply-add per value and update.
        agg_cost = Cost(flops=2.0 * n * self.state_values, memory_bytes=(n + 1) * model_bytes)
        new_params = t.server_work(
            EventKind.AGGREGATE,
            agg_cost,
            lambda: self.strategy.aggregate_fit(self.parameters, updates),
        )
        self.parameters = new_params
        self.model = ModelRef(
            name=self.model.name, version=self.model.version + 1, nbytes=model_bytes
        )
        t.server_work(EventKind.PUBLISH, Cost(disk_bytes=model_bytes))
