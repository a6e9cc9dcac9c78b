"""Asynchronous buffered rounds (FedBuff, Nguyen et al., AISTATS 2022).

``concurrency`` clients train at any time, each from the version that was current when it
started; a finished client is replaced at once. Every ``buffer_size`` accepted updates are
aggregated into a new version. An update trained on a version ``s`` versions old (its
staleness) is first rebased onto the current version with its change scaled down by
``(1 + s)^-a`` (``a`` = ``staleness_exponent``); updates staler than ``max_staleness`` are
rejected.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from fedsim.core.rounds.base import NO_RESULT, RoundProtocol, accepted_updates
from fedsim.core.runtime import NDArrays, TaskResult


def rebase(
    current: NDArrays, base: NDArrays, trained: NDArrays, staleness: int, exponent: float
) -> NDArrays:
    """``trained`` as if trained on ``current``: ``current + (1 + s)^-a * (trained - base)``.

    FedBuff's polynomial staleness weight keeps old updates from dragging the model back; the
    strategy then aggregates rebased updates like fresh ones.
    """
    scale = (1.0 + staleness) ** -exponent
    return {
        k: (current[k] + scale * (trained[k] - base[k])).astype(current[k].dtype) for k in trained
    }


class AsyncRounds(RoundProtocol):
    """FedBuff: clients train continuously; every ``buffer_size`` updates make a version.

    Each aggregation is recorded as one round; ``rounds`` aggregations end the run, as does
    running out of clients to start. With none training and no candidate online, the run
    waits for one to come back before it gives up.
    """

    def run(self, candidates: Sequence[int]) -> None:
        fed, cfg, t = self.fed, self.fed.config, self.fed.transport
        self.candidates = list(candidates)
        self.concurrency = cfg.concurrency or cfg.per_round(len(candidates))
        # The parameters of every version an update may still be based on.
        self.versions: dict[int, NDArrays | None] = {fed.model.version: fed.parameters}
        self.in_flight: dict[str, tuple[int, int, float]] = {}  # id -> (device, version, due)
        self.buffer: list[tuple[TaskResult, int]] = []  # (rebased result, staleness)
        self.failures: dict[int, str] = {}
        self.rejected: dict[int, str] = {}
        self.started = t.now()
        self.submitted = 0
        self.refill()
        while len(fed.history) < cfg.rounds and (self.in_flight or self.resume()):
            due = min(v[2] for v in self.in_flight.values())
            got = t.wait(count=1, deadline=None if math.isinf(due) else due)
            self.expire(t.now(), {r.task_id for r in got})
            for r in got:
                self.receive(r)
            if len(self.buffer) >= cfg.buffer_size:
                self.aggregate()
            self.refill()

    def refill(self) -> None:
        """Start clients on the current version until ``concurrency`` are training."""
        fed, cfg = self.fed, self.fed.config
        busy = {d for d, _, _ in self.in_flight.values()}
        free = [d for d in self.candidates if d not in busy]
        want = self.concurrency - len(self.in_flight)
        if want <= 0 or not free:
            return
        picks = fed.select(fed.views(free), want, len(fed.history) + 1)
        for d in picks[:want]:
            task = fed.fit_task(
                len(fed.history), d, fed.work.samples[d], task_id=f"a{self.submitted}-d{d}"
            )
            self.submitted += 1
            now = fed.transport.now()
            due = math.inf if cfg.deadline_s is None else now + cfg.deadline_s
            self.in_flight[task.id] = (d, fed.model.version, due)
            fed.transport.submit([task])

    def resume(self) -> bool:
        """With no client training: while no candidate is online, wait for one to come back and
        start clients. Whether any started."""
        fed = self.fed
        while not any(v.online for v in fed.views(self.candidates).values()):
            if not fed.transport.wait_online(self.candidates):
                return False
            self.refill()
        return bool(self.in_flight)

    def expire(self, now: float, arrived: set[str]) -> None:
        """Give up on the tasks past their deadline that did not just arrive."""
        for tid, (d, _, due) in list(self.in_flight.items()):
            if due <= now and tid not in arrived:
                del self.in_flight[tid]
                self.failures[d] = NO_RESULT
                self.fed.reliability.lost(d)

    def receive(self, r: TaskResult) -> None:
        """Buffer ``r``'s update, rebased, unless it is late, too stale or invalid."""
        fed = self.fed
        entry = self.in_flight.pop(r.task_id, None)
        if entry is None:
            fed.late.append(r)
            return
        _, version, _ = entry
        staleness = fed.model.version - version
        if staleness > fed.config.max_staleness:
            self.rejected[r.device] = f"stale by {staleness} versions"
            return
        base = self.versions[version]
        accepted, bad = fed.validate([r], reference=base)
        self.rejected.update(bad)
        if not accepted:
            return
        [u] = accepted_updates(accepted)
        if u.parameters is not None and base is not None and fed.parameters is not None:
            moved = rebase(
                fed.parameters, base, u.parameters, staleness, fed.config.staleness_exponent
            )
            r = replace(r, update=replace(u, parameters=moved))
        self.buffer.append((r, staleness))

    def aggregate(self) -> None:
        """The first ``buffer_size`` buffered updates become the next version (one round)."""
        fed, cfg = self.fed, self.fed.config
        batch = self.buffer[: cfg.buffer_size]
        self.buffer = self.buffer[cfg.buffer_size :]
        fed.finish_round(
            len(fed.history),
            self.started,
            [r.device for r, _ in batch],
            [r for r, _ in batch],
            self.failures,
            self.rejected,
            staleness=float(np.mean([s for _, s in batch])),
        )
        self.versions[fed.model.version] = fed.parameters
        for old in [v for v in self.versions if v < fed.model.version - cfg.max_staleness]:
            del self.versions[old]
        self.failures, self.rejected, self.started = {}, {}, fed.transport.now()
