"""What every round protocol shares: the run's state and the steps rounds are made of.

:class:`Federation` holds the current version, the history and what the coordinator learns of
each device, and does the steps: device views, work shares, building fit tasks, gathering
results until a deadline, validating updates, aggregating them with the strategy, evaluating and
recording a round. A protocol (:class:`RoundProtocol`) arranges these steps in its own order.
Everything here is written against :class:`~fedsim.core.runtime.Transport` only.
"""

from __future__ import annotations

import abc
import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from operator import attrgetter
from types import MappingProxyType
from typing import Any

import numpy as np

from fedsim.core.balance import balance_work
from fedsim.core.events import EventKind
from fedsim.core.rounds.config import FederatedConfig
from fedsim.core.runtime import (
    Cost,
    FitIns,
    ModelRef,
    NDArrays,
    Task,
    TaskResult,
    Transport,
    Update,
)
from fedsim.core.scheduling import DeviceView, Reliability, ResourceView
from fedsim.core.secagg import SecureAggregation
from fedsim.core.selection import AllSelection, SelectionPolicy
from fedsim.core.strategies.base import Strategy
from fedsim.core.strategies.validation import check_count, check_metrics, validate_update

log = logging.getLogger(__name__)


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

    fn: Callable[[NDArrays], Mapping[str, float]]
    cost: Cost = field(default_factory=Cost)


# Why a selected device counts as failed when the server never heard from it in time.
NO_RESULT = "no result before the deadline"


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
    # The mean over the accepted results that count it of the processor seconds each device
    # spent on its task, and of those its training (TaskResult.cpu_s, train_cpu_s).
    device_cpu_s: float | None = None
    device_train_cpu_s: float | None = None

    @property
    def duration(self) -> float:
        return self.finished - self.started

    @property
    def unanswered(self) -> list[int]:
        """The devices whose results never reached the server (dropped out, cut off)."""
        return [d for d, why in self.failures.items() if why == NO_RESULT]


# Called with each published version: (version, parameters, round, metrics).
Publisher = Callable[[ModelRef, NDArrays | None, int, Mapping[str, float]], None]


def aggregation_cost(strategy: Strategy, n: int, values: int, model_bytes: int) -> Cost:
    """What combining ``n`` updates of ``values`` numbers with ``strategy`` costs: two FLOPs a
    value for each of its passes (:meth:`Strategy.aggregation_passes`), and the updates read
    and the model written once."""
    passes = strategy.aggregation_passes(n)
    return Cost(flops=2.0 * passes * values, memory_bytes=(n + 1) * model_bytes)


def mean_loss(updates: Sequence[Update]) -> float | None:
    """The example-weighted mean of the updates' training losses (None when none reported)."""
    pairs = [(u.metrics["loss"], u.num_examples) for u in updates if "loss" in u.metrics]
    if not pairs:
        return None
    return float(sum(x * n for x, n in pairs) / sum(n for _, n in pairs))


# A result's place in device order (a device's task id breaks a tie): (device, task_id), read
# in C rather than by a Python function a result (a million of them in a large round).
device_order: Callable[[TaskResult], tuple[int, str]] = attrgetter("device", "task_id")


def accepted_updates(results: Iterable[TaskResult]) -> list[Update]:
    """The updates of results that :meth:`Federation.validate` accepted, which all carry one."""
    updates = []
    for r in results:
        if r.update is None:
            raise ValueError(f"task {r.task_id} of device {r.device} has no update to aggregate")
        updates.append(r.update)
    return updates


def _non_finite(parameters: NDArrays | None) -> str | None:
    """The name of the first array of ``parameters`` holding a NaN or an infinity, if any."""
    for name, arr in (parameters or {}).items():
        a = np.asarray(arr)
        if np.issubdtype(a.dtype, np.inexact) and not np.isfinite(a).all():
            return name
    return None


# eq=False: a federation is one running thing, compared by identity; repr=False: its state
# (parameters, history) is too large to print.
@dataclass(kw_only=True, eq=False, repr=False)
class Federation:
    """The state of a federated run and the steps its rounds are made of."""

    transport: Transport
    strategy: Strategy
    work: ClientWork
    model: ModelRef
    parameters: NDArrays | None = None
    config: FederatedConfig = field(default_factory=FederatedConfig)
    selector: SelectionPolicy = field(default_factory=AllSelection)
    resources: ResourceView | None = None
    reliability: Reliability = field(default_factory=Reliability)
    evaluation: Evaluation | None = None
    groups: Mapping[int, int] = field(default_factory=dict)
    publish: Publisher | None = None
    on_round: Callable[[RoundReport], None] | None = None
    seed: int | np.random.SeedSequence = 0
    # Set: synchronous rounds sum the updates under secure aggregation (rounds/secure.py).
    secagg: SecureAggregation | None = None
    history: list[RoundReport] = field(init=False, default_factory=list)
    # Results of tasks from an earlier round or aggregation, kept out of the current one.
    late: list[TaskResult] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        self.groups = dict(self.groups)
        self.rng = np.random.default_rng(self.seed)
        # What the rounds observed of each device; selection and balancing read it.
        self._utility: dict[int, float] = {}
        self._duration: dict[int, float] = {}
        self._rate: dict[int, float] = {}
        # Each device's latest fit task, whose samples x epochs an update may claim no more
        # than. One per device, as a device trains one task at a time; the task itself, which
        # its run holds anyway, rather than a tuple of its own a device.
        self._asked: dict[int, Task] = {}
        # The settings the fit tasks of one round carry: (round, rule, settings).
        self._fit_config: tuple[int, Strategy, Mapping[str, Any]] | None = None
        # The fit instruction made last: the next task shares it when it would be equal (the
        # same version, settings, share and route), as the tasks of a round mostly are; one
        # frozen object for them all rather than one a device.
        self._last_fit: FitIns | None = None

    # -- choosing and instructing clients ---------------------------------------------------

    def views(self, candidates: Iterable[int]) -> dict[int, DeviceView]:
        """What selection sees of ``candidates``: resources, overlaid with what rounds observed."""
        candidates = list(candidates)
        if self.resources is not None:
            base = self.resources.snapshot(candidates)
        else:
            base = {
                d: DeviceView(id=d, group=self.groups.get(d, 0), throughput=1.0, bandwidth=1.0)
                for d in candidates
            }
        return {
            d: v.observed(
                reliability=self.reliability.score(d),
                utility=self._utility.get(d, v.utility),
                throughput=self._rate.get(d, v.throughput),
                last_duration=self._duration.get(d, v.last_duration),
                samples=self.work.samples.get(d, v.samples),
            )
            for d, v in base.items()
        }

    def select(self, views: Mapping[int, DeviceView], count: int, rnd: int) -> list[int]:
        """Up to ``count`` of the viewed devices, by the selection policy (``rnd`` 1-based)."""
        return self.selector.select(list(views.values()), count, rnd=rnd, rng=self.rng)

    def shares(self, selected: Sequence[int], views: Mapping[int, DeviceView]) -> dict[int, int]:
        """Samples each client processes per epoch: its own data, or a balanced share of it."""
        own = {d: self.work.samples[d] for d in selected}
        if not self.config.balance:
            return own
        return balance_work([views[d] for d in selected], sum(own.values()))

    def fit_task(
        self,
        rnd: int,
        dev: int,
        samples: int,
        *,
        task_id: str | None = None,
        rule: Strategy | None = None,
        **route: int | None,
    ) -> Task:
        """Train on ``dev``: ``samples`` per epoch from the current version.

        ``rule`` is the strategy that will aggregate the update (the configured one unless
        given); its ``configure_fit`` settings travel with the task. ``route`` names the
        ``source`` and ``sink`` devices when they are not the server.
        """
        cfg = self.config
        rule = rule or self.strategy
        # One settings mapping per round and rule, shared by its tasks: a dict per task would
        # be the largest thing a round of a million clients holds per device.
        cached = self._fit_config
        if cached is None or cached[0] != rnd or cached[1] is not rule:
            fresh = {**self.work.config, "learning_rate": cfg.learning_rate, "round": rnd}
            fresh.update(rule.configure_fit(rnd))
            cached = self._fit_config = (rnd, rule, MappingProxyType(fresh))
        config = cached[2]
        unknown = set(route) - {"source", "sink"}
        if unknown:
            raise TypeError(f"fit_task: unknown route {sorted(unknown)}; known: source, sink")
        source, sink = route.get("source"), route.get("sink")
        flops = self.work.train_flops_per_sample * samples * cfg.local_epochs
        post_flops = 2.0 * rule.client_passes() * self.work.state_values
        last = self._last_fit
        # The arrays, model and settings by identity (arrays have no one truth value).
        if (
            last is not None
            and last.model is self.model
            and last.parameters is self.parameters
            and last.config is config
            and (last.samples, last.epochs, last.batch_size, last.flops, last.post_flops)
            == (samples, cfg.local_epochs, cfg.batch_size, flops, post_flops)
            and (last.update_nbytes, last.source, last.sink)
            == (self.work.update_nbytes, source, sink)
        ):
            ins = last
        else:
            ins = self._last_fit = FitIns(
                model=self.model,
                samples=samples,
                epochs=cfg.local_epochs,
                batch_size=cfg.batch_size,
                flops=flops,
                post_flops=post_flops,
                update_nbytes=self.work.update_nbytes,
                parameters=self.parameters,
                config=config,
                source=source,
                sink=sink,
            )
        task = Task(id=task_id or f"r{rnd}-d{dev}", device=dev, ins=ins)
        self._asked[dev] = task
        return task

    # -- collecting and checking results ----------------------------------------------------

    def gather(self, pending: Mapping[str, int], deadline: float | None) -> list[TaskResult]:
        """Results of ``pending`` tasks until all are in or the deadline passed."""
        waiting, results = dict(pending), []
        while waiting:
            # All that is missing at once: a wait per result would cost the transport a
            # deadline (a simulated timer, a poll) per result.
            got = self.transport.wait(count=len(waiting), deadline=deadline)
            if not got:
                break
            for r in got:
                if waiting.pop(r.task_id, None) is None:
                    self.late.append(r)
                else:
                    results.append(r)
        return results

    def validate(
        self, results: Iterable[TaskResult], reference: NDArrays | None = None
    ) -> tuple[list[TaskResult], dict[int, str]]:
        """The results whose updates pass the checks against ``reference`` (default: the
        current parameters), and the reason for each device whose result did not.

        The results are taken in device order, not in the order they arrived: the float32 sums
        of aggregation then do not depend on which transfer finished first, so a real run and
        its simulation (or two real runs) combine the same updates to the same bits."""
        reference = self.parameters if reference is None else reference
        accepted, rejected = [], {}
        for r in sorted(results, key=device_order):
            reason = r.error if r.error is not None else self._refusal(r, reference)
            if reason is None:
                accepted.append(r)
                self.reliability.accept(r.device)
                self._observe(r)
            else:
                rejected[r.device] = reason
                self.reliability.reject(r.device)
                if r.error is None:
                    # A refused update counts as the device failing the round, and says why.
                    log.warning("update of device %d refused: %s", r.device, reason)
        return accepted, rejected

    def _refusal(self, r: TaskResult, reference: NDArrays | None) -> str | None:
        """Why ``r``'s update fails the checks against ``reference`` and its task; None when it
        passes."""
        update = r.update
        if update is None:
            return "no update"
        asked = self._asked.get(r.device)
        if asked is None or asked.id != r.task_id or not isinstance(asked.ins, FitIns):
            return f"task {r.task_id} is not the device's current fit task"
        del self._asked[r.device]
        examples = asked.ins.samples * asked.ins.epochs
        reason = check_count(update.num_examples, examples) or check_metrics(update.metrics)
        if reason is not None:
            return reason
        if update.parameters is None or reference is None:
            return None  # a timing-only update, or no model yet: no arrays to compare
        return validate_update(reference, update.parameters, max_norm=self.config.max_update_norm)

    def _observe(self, r: TaskResult) -> None:
        """Remember what selection and balancing use: duration, speed, statistical utility.

        The speed seen in the last task (samples over its whole duration, transfers included)
        overrides the profiled or reported throughput: it is what the device really delivered.
        """
        self._duration[r.device] = r.finished - r.started
        u = r.update
        if u is None:
            return
        if r.finished > r.started:
            self._rate[r.device] = u.num_examples / (r.finished - r.started)
        loss = u.metrics.get("loss_rms", u.metrics.get("loss"))
        if loss is not None:
            self._utility[r.device] = u.num_examples * float(loss)

    def lost(self, expected: Iterable[int], results: Iterable[TaskResult]) -> dict[int, str]:
        """The ``expected`` devices with no result, each counted against its reliability."""
        arrived = {r.device for r in results}
        lost = dict.fromkeys((d for d in expected if d not in arrived), NO_RESULT)
        for d in lost:
            self.reliability.lost(d)
        return lost

    # -- the new version ----------------------------------------------------------------------

    def aggregate(self, updates: Sequence[Update]) -> str | None:
        """The strategy's next parameters from ``updates``, published as the next version.

        Returns why nothing was published when the strategy's result is not finite: the
        current version then stays, and the run goes on. The updates' own checks keep every
        built-in rule finite; this guards a rule of the user's own.
        """
        t, n = self.transport, len(updates)
        cost = aggregation_cost(self.strategy, n, self.work.state_values, self.model.nbytes)
        new = t.server_work(
            EventKind.AGGREGATE, cost, lambda: self.strategy.aggregate_fit(self.parameters, updates)
        )
        bad = _non_finite(new)
        if bad is not None:
            return f"strategy {self.strategy.name!r} gave non-finite values in {bad}"
        self.parameters = new
        self.model = replace(self.model, version=self.model.version + 1)
        t.server_work(EventKind.PUBLISH, Cost(disk_bytes=self.model.nbytes))
        return None

    def evaluate(self, rnd: int, force: bool = False) -> dict[str, float]:
        """Server-side metrics of the version, every ``eval_every`` rounds or when forced."""
        if self.evaluation is None:
            return {}
        if not force and (rnd + 1) % self.config.eval_every:
            return {}
        ev, parameters = self.evaluation, self.parameters
        if parameters is None:
            raise ValueError(
                "server-side evaluation needs the model's parameters, and this run has none "
                "(its updates carry no arrays: a timing-only workload)"
            )
        metrics = self.transport.server_work(EventKind.EVALUATE, ev.cost, lambda: ev.fn(parameters))
        finite = {k: float(v) for k, v in (metrics or {}).items() if math.isfinite(v)}
        if len(finite) < len(metrics or {}):
            # A model that diverged (or was poisoned) evaluates to NaN or inf: the round is
            # kept with its finite metrics, the others are not numbers to record.
            dropped = sorted(set(metrics or {}) - set(finite))
            log.warning("round %d: evaluation gave non-finite %s", rnd, ", ".join(dropped))
        return finite

    def finish_round(
        self,
        rnd: int,
        started: float,
        selected: Sequence[int],
        accepted: Sequence[TaskResult],
        failures: dict[int, str],
        rejected: dict[int, str],
        staleness: float | None = None,
        updates: Sequence[Update] | None = None,
    ) -> RoundReport:
        """Aggregate, evaluate and publish when ``min_fit`` updates were accepted; record it.

        ``updates`` replaces the accepted results' own when they reached the server combined
        (secure aggregation's one sum); none then means the round cannot aggregate.
        """
        cfg = self.config
        updates = accepted_updates(accepted) if updates is None else updates
        # The rule may need more than min_fit (Krum: 2f + 3), and raises below its least.
        least = self.strategy.min_updates()
        aggregated = len(accepted) >= cfg.min_fit and len(updates) >= least and bool(updates)
        metrics: dict[str, float] = {}
        if aggregated:
            failed = self.aggregate(updates)
            aggregated = failed is None
            if failed is not None:
                log.error("round %d failed: %s; the version stays", rnd, failed)
                failures = {**failures, -1: failed}
            else:
                metrics = self.evaluate(rnd, force=rnd == cfg.rounds - 1)
                if self.publish is not None:
                    self.publish(self.model, self.parameters, rnd, metrics)
        else:
            short = (
                f"{len(accepted)} updates < min_fit {cfg.min_fit}"
                if len(accepted) < cfg.min_fit or not updates
                else f"{len(updates)} updates < the {least} {self.strategy.name} needs"
            )
            reason = failures.get(-1, short)
            log.warning("round %d failed: %s", rnd, reason)
        return self.record(
            RoundReport(
                round=rnd,
                started=started,
                finished=self.transport.now(),
                selected=tuple(selected),
                completed=tuple(r.device for r in accepted),
                failures=failures,
                rejected=rejected,
                aggregated=aggregated,
                version=self.model if aggregated else None,
                train_loss=mean_loss(updates),
                metrics=metrics,
                staleness=staleness,
                device_cpu_s=_mean(r.cpu_s for r in accepted),
                device_train_cpu_s=_mean(r.train_cpu_s for r in accepted),
            )
        )

    def record(self, report: RoundReport) -> RoundReport:
        """Append ``report`` to the history and tell ``on_round``."""
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


class RoundProtocol(abc.ABC):
    """One way of running rounds over a :class:`Federation`'s state and steps."""

    def __init__(self, fed: Federation) -> None:
        self.fed = fed

    @abc.abstractmethod
    def run(self, candidates: Sequence[int]) -> None:
        """All configured rounds over ``candidates``; their reports go to ``fed.history``."""


def _mean(values: Iterable[float | None]) -> float | None:
    """The mean of the values that are not None; None when none is."""
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None
