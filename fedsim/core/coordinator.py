"""The round coordinator: select, deploy, train, collect, validate, aggregate, publish, evaluate.

Written once against :class:`~fedsim.core.runtime.Transport`; the simulator and the real
runtime drive it unchanged. Three ways to run rounds:

- synchronous (FedAvg's): a round waits for its clients until ``min_fit`` updates and all the
  others arrived, or its deadline passed; what arrived is validated and aggregated;
- hierarchical: devices send their updates to an aggregator in their network group, which
  combines them and forwards one update to the cloud (the groups of the seed paper's Fig. 3(a));
- asynchronous (FedBuff, Nguyen et al., AISTATS 2022): ``concurrency`` clients train at any
  time; every ``buffer_size`` arrivals are aggregated, each update's change scaled down by its
  staleness, and a finished client is replaced at once.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from fedsim.core.balance import balance_work
from fedsim.core.events import EventKind
from fedsim.core.runtime import (
    Cost,
    FitIns,
    ForwardIns,
    ModelRef,
    NDArrays,
    RelayIns,
    Task,
    TaskResult,
    Transport,
    Update,
)
from fedsim.core.scheduling import DeviceView, Reliability, ResourceView
from fedsim.core.selection import AllSelection, SelectionPolicy
from fedsim.core.strategies.aggregate import WeightedSum
from fedsim.core.strategies.base import Strategy
from fedsim.core.strategies.validation import validate_update

log = logging.getLogger(__name__)

MODES = ("sync", "async")


@dataclass(frozen=True, kw_only=True)
class FederatedConfig:
    """How rounds run. A round selects ``clients_per_round`` clients when it is set, else
    ``fraction_per_round`` of the candidates (at least one)."""

    rounds: int = 1
    clients_per_round: int | None = None
    fraction_per_round: float = 1.0
    min_fit: int = 1
    deadline_s: float | None = None
    local_epochs: int = 1
    batch_size: int = 32
    learning_rate: float = 0.05
    eval_every: int = 1
    max_update_norm: float | None = None
    balance: bool = False
    hierarchical: bool = False
    aggregators: Mapping[int, int] = field(default_factory=dict)
    group_deadline_s: float | None = None
    mode: str = "sync"
    buffer_size: int = 10
    concurrency: int = 0
    max_staleness: int = 5
    staleness_exponent: float = 0.5

    def __post_init__(self) -> None:
        checks = {
            "rounds": self.rounds >= 1,
            "clients_per_round": self.clients_per_round is None or self.clients_per_round >= 1,
            "fraction_per_round": 0 < self.fraction_per_round <= 1,
            "min_fit": self.min_fit >= 1,
            "local_epochs": self.local_epochs >= 1,
            "batch_size": self.batch_size >= 1,
            "learning_rate": self.learning_rate > 0,
            "eval_every": self.eval_every >= 1,
            "deadline_s": self.deadline_s is None or self.deadline_s > 0,
            "mode": self.mode in MODES,
            "buffer_size": self.buffer_size >= 1,
            "max_staleness": self.max_staleness >= 0,
            "concurrency": self.concurrency >= 0,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"{bad[0]}: invalid value {getattr(self, bad[0])!r}")
        if self.mode == "async" and self.hierarchical:
            raise ValueError("hierarchical: not available in async mode")

    def per_round(self, candidates: int) -> int:
        if self.clients_per_round is not None:
            return min(candidates, self.clients_per_round)
        return max(1, math.ceil(self.fraction_per_round * candidates))


@dataclass(frozen=True, kw_only=True)
class ClientWork:
    """What a client's training costs: its local samples, FLOPs per sample, update size.

    ``config`` travels to every client with its task (what model to build, the seed); the
    round's own settings (learning rate, strategy parameters) are added to it.
    """

    samples: Mapping[int, int]
    train_flops_per_sample: float
    update_nbytes: int
    state_values: int
    config: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class Evaluation:
    """Server-side evaluation of a new version: ``fn(parameters)`` costs ``cost`` on the server."""

    fn: Callable[[NDArrays | None], Mapping[str, float]]
    cost: Cost = field(default_factory=Cost)


@dataclass(frozen=True, kw_only=True)
class RoundReport:
    """What happened in one round (in async mode: one aggregation)."""

    round: int
    started: float
    finished: float
    selected: tuple[int, ...]
    completed: tuple[int, ...]
    failures: dict[int, str] = field(default_factory=dict)
    rejected: dict[int, str] = field(default_factory=dict)
    aggregated: bool = False
    version: ModelRef | None = None
    train_loss: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    staleness: float | None = None

    @property
    def duration(self) -> float:
        return self.finished - self.started


# Called with each published version: (version, parameters, round, metrics).
Publisher = Callable[[ModelRef, NDArrays | None, int, Mapping[str, float]], None]


class Coordinator:
    """Runs federated rounds over a transport with a strategy, keeping the current version."""

    def __init__(
        self,
        *,
        transport: Transport,
        strategy: Strategy,
        work: ClientWork,
        model: ModelRef,
        parameters: NDArrays | None = None,
        config: FederatedConfig | None = None,
        selector: SelectionPolicy | None = None,
        resources: ResourceView | None = None,
        reliability: Reliability | None = None,
        evaluation: Evaluation | None = None,
        groups: Mapping[int, int] | None = None,
        publish: Publisher | None = None,
        on_round: Callable[[RoundReport], None] | None = None,
        seed: int | np.random.SeedSequence = 0,
    ) -> None:
        self.transport = transport
        self.strategy = strategy
        self.work = work
        self.model = model
        self.parameters = parameters
        self.config = config or FederatedConfig()
        self.selector = selector or AllSelection()
        self.resources = resources
        self.reliability = reliability or Reliability()
        self.evaluation = evaluation
        self.groups = dict(groups or {})
        self.publish = publish
        self.on_round = on_round
        self.rng = np.random.default_rng(seed)
        self.history: list[RoundReport] = []
        self._utility: dict[int, float] = {}
        self._duration: dict[int, float] = {}
        self._rate: dict[int, float] = {}
        self._late: list[TaskResult] = []
        if self.config.hierarchical:
            missing = [d for d in work.samples if d not in self.groups]
            if missing:
                raise ValueError(f"hierarchical: no group known for devices {missing}")

    # -- driving -------------------------------------------------------------------------

    def run(self, candidates: Sequence[int]) -> list[RoundReport]:
        """All configured rounds over ``candidates``; returns their reports."""
        if self.config.mode == "async":
            self._run_async(candidates)
        else:
            for rnd in range(self.config.rounds):
                self.fit_round(rnd, candidates)
        return self.history

    def fit_round(self, rnd: int, candidates: Sequence[int]) -> RoundReport:
        """One synchronous round; it fails, without raising, below ``min_fit`` updates."""
        cfg, t = self.config, self.transport
        started = t.now()
        views = self._views(candidates)
        selected = sorted(
            self.selector.select(
                list(views.values()), cfg.per_round(len(views)), rnd=rnd + 1, rng=self.rng
            )
        )
        if not selected:
            return self._record(
                RoundReport(
                    round=rnd,
                    started=started,
                    finished=t.now(),
                    selected=(),
                    completed=(),
                    failures={-1: "no device available"},
                )
            )
        shares = self._shares(selected, views)
        deadline = None if cfg.deadline_s is None else started + cfg.deadline_s
        if cfg.hierarchical:
            accepted, failures, rejected = self._hierarchical(rnd, selected, shares, deadline)
        else:
            tasks = [self._fit_task(rnd, dev, shares[dev]) for dev in selected]
            t.submit(tasks)
            results = self._gather({task.id: task.device for task in tasks}, deadline)
            accepted, rejected = self._validate(results)
            failures = self._lost(selected, results)
        return self._finish_round(rnd, started, selected, accepted, failures, rejected)

    # -- the steps of a round ------------------------------------------------------------

    def _views(self, candidates: Iterable[int]) -> dict[int, DeviceView]:
        candidates = list(candidates)
        if self.resources is not None:
            base = self.resources.snapshot(candidates)
        else:
            base = {
                d: DeviceView(id=d, group=self.groups.get(d, 0), throughput=1.0, bandwidth=1.0)
                for d in candidates
            }
        return {
            d: replace(
                v,
                reliability=self.reliability.score(d),
                utility=self._utility.get(d, v.utility),
                throughput=self._rate.get(d, v.throughput),
                last_duration=self._duration.get(d, v.last_duration),
                samples=self.work.samples.get(d, v.samples),
            )
            for d, v in base.items()
        }

    def _shares(self, selected: Sequence[int], views: Mapping[int, DeviceView]) -> dict[int, int]:
        """Samples each client processes per epoch: its own data, or a balanced share of it."""
        own = {d: self.work.samples[d] for d in selected}
        if not self.config.balance:
            return own
        return balance_work([views[d] for d in selected], sum(own.values()))

    def _fit_ins(self, rnd: int, samples: int, **route: int | None) -> FitIns:
        cfg = self.config
        config = {**self.work.config, "learning_rate": cfg.learning_rate, "round": rnd}
        config.update(self.strategy.configure_fit(rnd))
        return FitIns(
            model=self.model,
            samples=samples,
            epochs=cfg.local_epochs,
            batch_size=cfg.batch_size,
            flops=self.work.train_flops_per_sample * samples * cfg.local_epochs,
            update_nbytes=self.work.update_nbytes,
            parameters=self.parameters,
            config=config,
            **route,
        )

    def _fit_task(self, rnd: int, dev: int, samples: int, **route: int | None) -> Task:
        return Task(id=f"r{rnd}-d{dev}", device=dev, ins=self._fit_ins(rnd, samples, **route))

    def _gather(self, pending: Mapping[str, int], deadline: float | None) -> list[TaskResult]:
        """Results of ``pending`` tasks until all are in or the deadline passed."""
        waiting, results = dict(pending), []
        while waiting:
            got = self.transport.wait(count=1, deadline=deadline)
            if not got:
                break
            for r in got:
                if waiting.pop(r.task_id, None) is None:
                    self._late.append(r)  # a result from an earlier round or aggregation
                else:
                    results.append(r)
        return results

    def _validate(
        self, results: Iterable[TaskResult], reference: NDArrays | None = None
    ) -> tuple[list[TaskResult], dict[int, str]]:
        reference = self.parameters if reference is None else reference
        accepted, rejected = [], {}
        for r in results:
            reason = r.error
            if reason is None and r.update is None:
                reason = "no update"
            if reason is None and r.update.parameters is not None and reference is not None:
                reason = validate_update(
                    reference, r.update.parameters, max_norm=self.config.max_update_norm
                )
            if reason is None:
                accepted.append(r)
                self.reliability.accept(r.device)
                self._observe(r)
            else:
                rejected[r.device] = reason
                self.reliability.reject(r.device)
        return accepted, rejected

    def _observe(self, r: TaskResult) -> None:
        """Remember what selection and balancing use: duration, speed, statistical utility.

        The speed seen in the last task (samples over its whole duration, transfers included)
        overrides the profiled or reported throughput: it is what the device really delivered.
        """
        self._duration[r.device] = r.finished - r.started
        if r.update is not None and r.finished > r.started:
            self._rate[r.device] = r.update.num_examples / (r.finished - r.started)
        metrics = r.update.metrics if r.update else {}
        loss = metrics.get("loss_rms", metrics.get("loss"))
        if loss is not None:
            self._utility[r.device] = r.update.num_examples * float(loss)

    def _lost(self, expected: Iterable[int], results: Iterable[TaskResult]) -> dict[int, str]:
        arrived = {r.device for r in results}
        lost = {d: "no result before the deadline" for d in expected if d not in arrived}
        for d in lost:
            self.reliability.lost(d)
        return lost

    def _aggregate(self, updates: Sequence[Update]) -> None:
        t = self.transport
        n, values = len(updates), self.work.state_values
        model_bytes = self.model.nbytes
        # A streaming rule passes over each update once (memory bound); a rule that needs all
        # updates at once compares them, which costs about n^2 passes in the worst case (Krum).
        passes = n if self.strategy.streaming else n * n
        cost = Cost(flops=2.0 * passes * values, memory_bytes=(n + 1) * model_bytes)
        self.parameters = t.server_work(
            EventKind.AGGREGATE, cost, lambda: self.strategy.aggregate_fit(self.parameters, updates)
        )
        self.model = replace(self.model, version=self.model.version + 1)
        t.server_work(EventKind.PUBLISH, Cost(disk_bytes=model_bytes))

    def _evaluate(self, rnd: int, force: bool = False) -> dict[str, float]:
        if self.evaluation is None:
            return {}
        if not force and (rnd + 1) % self.config.eval_every:
            return {}
        ev = self.evaluation
        return dict(
            self.transport.server_work(EventKind.EVALUATE, ev.cost, lambda: ev.fn(self.parameters))
            or {}
        )

    def _finish_round(
        self,
        rnd: int,
        started: float,
        selected: Sequence[int],
        accepted: Sequence[TaskResult],
        failures: dict[int, str],
        rejected: dict[int, str],
        staleness: float | None = None,
    ) -> RoundReport:
        cfg = self.config
        report = dict(
            round=rnd,
            started=started,
            selected=tuple(selected),
            completed=tuple(r.device for r in accepted),
            failures=failures,
            rejected=rejected,
            train_loss=_mean_loss([r.update for r in accepted]),
            staleness=staleness,
        )
        if len(accepted) < cfg.min_fit:
            log.warning("round %d failed: %d updates < min_fit %d", rnd, len(accepted), cfg.min_fit)
            return self._record(RoundReport(**report, finished=self.transport.now()))
        self._aggregate([r.update for r in accepted])
        metrics = self._evaluate(rnd, force=rnd == cfg.rounds - 1)
        if self.publish is not None:
            self.publish(self.model, self.parameters, rnd, metrics)
        return self._record(
            RoundReport(
                **report,
                finished=self.transport.now(),
                aggregated=True,
                version=self.model,
                metrics=metrics,
            )
        )

    def _record(self, report: RoundReport) -> RoundReport:
        self.history.append(report)
        if self.on_round is not None:
            self.on_round(report)
        log.info(
            "round %d: %d/%d updates, %.3f s%s",
            report.round,
            len(report.completed),
            len(report.selected),
            report.duration,
            "".join(f", {k} {v:.4g}" for k, v in report.metrics.items()),
        )
        return report

    # -- hierarchical rounds ---------------------------------------------------------------

    def _hierarchical(
        self, rnd: int, selected: Sequence[int], shares: Mapping[int, int], deadline: float | None
    ) -> tuple[list[TaskResult], dict[int, str], dict[int, str]]:
        """Devices -> their group's aggregator -> the cloud; returns one result per group."""
        cfg, t = self.config, self.transport
        members: dict[int, list[int]] = {}
        for d in selected:
            members.setdefault(self.groups[d], []).append(d)
        agg = {g: cfg.aggregators.get(g, min(ds)) for g, ds in members.items()}
        group_deadline = None if cfg.group_deadline_s is None else t.now() + cfg.group_deadline_s
        relays = {f"r{rnd}-relay-g{g}": g for g in members}
        relay = RelayIns(model=self.model, parameters=self.parameters)
        t.submit([Task(id=i, device=agg[g], ins=relay) for i, g in relays.items()])
        fits: dict[str, tuple[int, int]] = {}  # task id -> (group, device)
        forwards: dict[str, int] = {}
        gathered: dict[int, list[TaskResult]] = {g: [] for g in members}
        group_updates: dict[int, Update] = {}
        forwarded: list[TaskResult] = []
        failures: dict[int, str] = {}
        rejected: dict[int, str] = {}

        def forward(g: int) -> None:
            accepted, bad = self._validate(gathered[g])
            rejected.update(bad)
            failures.update(self._lost([d for d in members[g] if d not in rejected], accepted))
            if not accepted:
                return
            update = _combine([r.update for r in accepted])
            group_updates[g] = update
            n = len(accepted)
            cost = Cost(
                flops=2.0 * n * self.work.state_values, memory_bytes=(n + 1) * self.model.nbytes
            )
            tid = f"r{rnd}-forward-g{g}"
            forwards[tid] = g
            t.submit(
                [
                    Task(
                        id=tid,
                        device=agg[g],
                        ins=ForwardIns(
                            cost=cost, nbytes=update.nbytes, num_examples=update.num_examples
                        ),
                    )
                ]
            )

        open_groups = set(members)
        while relays or fits or forwards:
            limit = _earliest(deadline, group_deadline if open_groups else None)
            got = t.wait(count=1, deadline=limit)
            if not got:
                if group_deadline is not None and open_groups and t.now() >= group_deadline:
                    for g in sorted(open_groups):
                        forward(g)
                    open_groups.clear()
                    fits.clear()
                    continue
                break
            for r in got:
                if r.task_id in relays:
                    g = relays.pop(r.task_id)
                    for d in members[g]:
                        task = self._fit_task(rnd, d, shares[d], source=agg[g], sink=agg[g])
                        fits[task.id] = (g, d)
                        t.submit([task])
                elif r.task_id in fits:
                    g, _ = fits.pop(r.task_id)
                    gathered[g].append(r)
                    if g in open_groups and len(gathered[g]) == len(members[g]):
                        open_groups.discard(g)
                        forward(g)
                elif r.task_id in forwards:
                    g = forwards.pop(r.task_id)
                    forwarded.append(replace(r, update=group_updates[g]))
                else:
                    self._late.append(r)
        done = {r.device for g in members for r in gathered[g]}
        for g, ds in members.items():
            if all(r.task_id != f"r{rnd}-forward-g{g}" for r in forwarded):
                for d in ds:
                    if d not in rejected:
                        failures.setdefault(d, f"group {g} did not reach the cloud in time")
        failures.update(
            {
                d: "no result before the deadline"
                for d in selected
                if d not in done and d not in rejected and d not in failures
            }
        )
        # The cloud's strategy sees one update per group, weighted by the group's examples.
        return forwarded, failures, rejected

    # -- asynchronous rounds ---------------------------------------------------------------

    def _run_async(self, candidates: Sequence[int]) -> None:
        cfg, t = self.config, self.transport
        concurrency = cfg.concurrency or cfg.per_round(len(candidates))
        versions: dict[int, NDArrays | None] = {self.model.version: self.parameters}
        in_flight: dict[str, tuple[int, int, float]] = {}  # id -> (device, version, due)
        buffer: list[tuple[TaskResult, int]] = []
        failures: dict[int, str] = {}
        rejected: dict[int, str] = {}
        started = t.now()
        submitted = 0

        def refill() -> None:
            nonlocal submitted
            busy = {d for d, _, _ in in_flight.values()}
            free = [d for d in candidates if d not in busy]
            want = concurrency - len(in_flight)
            if want <= 0 or not free:
                return
            views = self._views(free)
            picks = self.selector.select(
                list(views.values()), want, rnd=len(self.history) + 1, rng=self.rng
            )
            for d in picks[:want]:
                task = self._fit_task(len(self.history), d, self.work.samples[d])
                task = replace(task, id=f"a{submitted}-d{d}")
                submitted += 1
                due = math.inf if cfg.deadline_s is None else t.now() + cfg.deadline_s
                in_flight[task.id] = (d, self.model.version, due)
                t.submit([task])

        refill()
        while len(self.history) < cfg.rounds and in_flight:
            due = min(v[2] for v in in_flight.values())
            got = t.wait(count=1, deadline=None if math.isinf(due) else due)
            now = t.now()
            for tid, (d, _, when) in list(in_flight.items()):
                if when <= now and all(r.task_id != tid for r in got):
                    del in_flight[tid]
                    failures[d] = "no result before the deadline"
                    self.reliability.lost(d)
            for r in got:
                entry = in_flight.pop(r.task_id, None)
                if entry is None:
                    self._late.append(r)
                    continue
                _, version, _ = entry
                staleness = self.model.version - version
                if staleness > cfg.max_staleness:
                    rejected[r.device] = f"stale by {staleness} versions"
                    continue
                accepted, bad = self._validate([r], reference=versions[version])
                rejected.update(bad)
                if accepted:
                    buffer.append((self._rebase(r, versions[version], staleness), staleness))
            if len(buffer) >= cfg.buffer_size:
                rnd = len(self.history)
                batch, buffer = buffer[: cfg.buffer_size], buffer[cfg.buffer_size :]
                self._finish_round(
                    rnd,
                    started,
                    [r.device for r, _ in batch],
                    [r for r, _ in batch],
                    failures,
                    rejected,
                    staleness=float(np.mean([s for _, s in batch])),
                )
                versions[self.model.version] = self.parameters
                for old in [v for v in versions if v < self.model.version - cfg.max_staleness]:
                    del versions[old]
                failures, rejected, started = {}, {}, t.now()
            refill()

    def _rebase(self, r: TaskResult, base: NDArrays | None, staleness: int) -> TaskResult:
        """The update as if trained on the current version, its change scaled by staleness.

        FedBuff's polynomial staleness weight 1 / (1 + s)^a keeps old updates from dragging
        the model back; the strategy then aggregates rebased updates like fresh ones.
        """
        u = r.update
        if u.parameters is None or base is None or self.parameters is None:
            return r
        scale = (1.0 + staleness) ** -self.config.staleness_exponent
        rebased = {
            k: (self.parameters[k] + scale * (u.parameters[k] - base[k])).astype(
                self.parameters[k].dtype
            )
            for k in u.parameters
        }
        return replace(r, update=replace(u, parameters=rebased))


def _combine(updates: Sequence[Update]) -> Update:
    """A group aggregator's result: the example-weighted mean of its members' updates."""
    total = sum(u.num_examples for u in updates)
    arrays = [u.parameters for u in updates if u.parameters is not None]
    params = None
    if arrays:
        acc = WeightedSum()
        for u in updates:
            acc.add(u.parameters, float(u.num_examples))
        params = acc.average()
    loss = _mean_loss(updates)
    metrics = {} if loss is None else {"loss": loss}
    return Update(num_examples=total, nbytes=updates[0].nbytes, parameters=params, metrics=metrics)


def _mean_loss(updates: Sequence[Update | None]) -> float | None:
    """The example-weighted mean of the updates' training losses (None when none reported)."""
    pairs = [
        (u.metrics["loss"], u.num_examples)
        for u in updates
        if u is not None and "loss" in u.metrics
    ]
    if not pairs:
        return None
    return float(sum(x * n for x, n in pairs) / sum(n for _, n in pairs))


def _earliest(*times: float | None) -> float | None:
    present = [x for x in times if x is not None]
    return min(present) if present else None
