"""Synchronous rounds (FedAvg's): select, train, wait, aggregate what arrived.

A round waits for its clients until all of them answered or its deadline passed; it aggregates
when at least ``min_fit`` validated updates arrived, and fails, without raising, below that. A
round that finds no candidate online first waits for one to come back, within its deadline.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from fedsim.core.rounds.base import RoundProtocol, RoundReport
from fedsim.core.rounds.secure import secure_collect
from fedsim.core.runtime import TaskResult

# What collecting a round's updates yields: accepted results, then lost and rejected devices
# with the reason for each.
Collected = tuple[list[TaskResult], dict[int, str], dict[int, str]]


class SyncRounds(RoundProtocol):
    """Rounds in lock step: each starts from the version the previous one published."""

    def run(self, candidates: Sequence[int]) -> None:
        for rnd in range(self.fed.config.rounds):
            self.fit_round(rnd, candidates)

    def fit_round(self, rnd: int, candidates: Sequence[int]) -> RoundReport:
        """One round over ``candidates``; returns its report, also added to the history."""
        fed, cfg = self.fed, self.fed.config
        started = fed.transport.now()
        deadline = None if cfg.deadline_s is None else started + cfg.deadline_s
        views = fed.views(candidates)
        selected = sorted(fed.select(views, cfg.per_round(len(views)), rnd + 1))
        # No candidate online: the round waits, within its deadline, for one to come back.
        while not selected and not any(v.online for v in views.values()):
            if not fed.transport.wait_online(candidates, deadline):
                break
            views = fed.views(candidates)
            selected = sorted(fed.select(views, cfg.per_round(len(views)), rnd + 1))
        if not selected:
            report = RoundReport(
                round=rnd,
                started=started,
                finished=fed.transport.now(),
                selected=(),
                completed=(),
                failures={-1: "no device available"},
            )
            return fed.record(report)
        shares = fed.shares(selected, views)
        # What selection saw of every candidate is not needed while the round runs: a million
        # views held through it would be about 160 bytes a device at the round's peak.
        del views
        if fed.secagg is not None:
            accepted, failures, rejected, summed = secure_collect(
                fed, rnd, selected, shares, deadline
            )
            return fed.finish_round(
                rnd, started, selected, accepted, failures, rejected, updates=summed
            )
        accepted, failures, rejected = self.collect(rnd, selected, shares, deadline)
        return fed.finish_round(rnd, started, selected, accepted, failures, rejected)

    def collect(
        self, rnd: int, selected: Sequence[int], shares: Mapping[int, int], deadline: float | None
    ) -> Collected:
        """Each selected client trains on its share and sends its update to the server."""
        fed = self.fed
        tasks = [fed.fit_task(rnd, dev, shares[dev]) for dev in selected]
        fed.transport.submit(tasks)
        results = fed.gather({task.id: task.device for task in tasks}, deadline)
        accepted, rejected = fed.validate(results)
        return accepted, fed.lost(selected, results), rejected
