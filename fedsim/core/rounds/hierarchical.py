"""Hierarchical rounds: devices -> their group's aggregator -> the cloud.

The groups are the network groups of the seed paper's Fig. 3(a). An aggregator device in each
group relays the model to its members, combines their updates with the group's strategy and
forwards one update to the cloud, where the configured strategy aggregates one update per group.
Each WAN uplink carries the model down once and one update up once per round.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import replace

from fedsim.core.rounds.base import (
    NO_RESULT,
    Federation,
    accepted_updates,
    aggregation_cost,
    device_order,
    mean_loss,
)
from fedsim.core.rounds.sync import Collected, SyncRounds
from fedsim.core.runtime import ForwardIns, NDArrays, RelayIns, Task, TaskResult, Update
from fedsim.core.strategies.base import Strategy


def combine(rule: Strategy, current: NDArrays | None, updates: Sequence[Update]) -> Update:
    """A group's update: its members' updates combined by ``rule``.

    It weighs as many examples as its members together, so that the cloud's strategy weighs
    each group by the data behind it.
    """
    loss = mean_loss(updates)
    return Update(
        num_examples=sum(u.num_examples for u in updates),
        nbytes=updates[0].nbytes,
        parameters=rule.aggregate_fit(current, updates),
        metrics={} if loss is None else {"loss": loss},
    )


class HierarchicalRounds(SyncRounds):
    """Synchronous rounds whose updates reach the cloud through group aggregators.

    Groups combine their members' updates with ``group_strategy`` when it is given, else with
    the configured strategy.
    """

    def __init__(self, fed: Federation, *, group_strategy: Strategy | None = None) -> None:
        super().__init__(fed)
        missing = [d for d in fed.work.samples if d not in fed.groups]
        if missing:
            raise ValueError(f"hierarchical: no group known for devices {missing}")
        template = fed.strategy if group_strategy is None else group_strategy
        # One instance per group, copied before any round: a stateful rule (FedAdam, FedYogi
        # and FedAdagrad keep server momentum and second moments) would otherwise mix the
        # cloud's state with a group's, or one group's with another's, each step moving the
        # others' moments.
        self.rules = {g: copy.deepcopy(template) for g in sorted(set(fed.groups.values()))}

    def collect(
        self, rnd: int, selected: Sequence[int], shares: Mapping[int, int], deadline: float | None
    ) -> Collected:
        """One update per group that reached the cloud; each member lost or rejected by name."""
        return _GroupRound(self, rnd, selected, shares).run(deadline)


def _earliest(*times: float | None) -> float | None:
    present = [x for x in times if x is not None]
    return min(present) if present else None


class _GroupRound:
    """The bookkeeping of one hierarchical round: which task is whose, what came back."""

    def __init__(
        self,
        rounds: HierarchicalRounds,
        rnd: int,
        selected: Sequence[int],
        shares: Mapping[int, int],
    ) -> None:
        self.fed, self.rules, self.rnd = rounds.fed, rounds.rules, rnd
        self.selected, self.shares = selected, shares
        self.members: dict[int, list[int]] = {}
        for d in selected:
            self.members.setdefault(self.fed.groups[d], []).append(d)
        aggregators = self.fed.config.aggregators
        self.agg = {g: aggregators.get(g, min(ds)) for g, ds in self.members.items()}
        # Outstanding tasks by id, each mapped to its group.
        self.relays = {f"r{rnd}-relay-g{g}": g for g in self.members}
        self.fits: dict[str, int] = {}
        self.forwards: dict[str, int] = {}
        self.gathered: dict[int, list[TaskResult]] = {g: [] for g in self.members}
        self.open = set(self.members)  # groups still gathering their members' updates
        self.combined: dict[int, Update] = {}
        self.forwarded: list[TaskResult] = []  # one result per group that reached the cloud
        self.reached: set[int] = set()
        self.failures: dict[int, str] = {}
        self.rejected: dict[int, str] = {}

    def run(self, deadline: float | None) -> Collected:
        """Relay, train, combine and forward until all is back or ``deadline`` passed."""
        fed, t = self.fed, self.fed.transport
        wait_s = fed.config.group_deadline_s
        group_deadline = None if wait_s is None else t.now() + wait_s
        relay = RelayIns(model=fed.model, parameters=fed.parameters)
        t.submit([Task(id=i, device=self.agg[g], ins=relay) for i, g in self.relays.items()])
        while self.relays or self.fits or self.forwards:
            limit = _earliest(deadline, group_deadline if self.open else None)
            got = t.wait(count=1, deadline=limit)
            if not got:
                if group_deadline is not None and self.open and t.now() >= group_deadline:
                    # The groups' own deadline: they forward what they have, the rest is lost.
                    for g in sorted(self.open):
                        self.forward(g)
                    self.open.clear()
                    self.fits.clear()
                    continue
                break
            for r in got:
                self.receive(r)
        # In group order, as validate puts a flat round's results: the cloud's sum then does
        # not depend on which group's forward arrived first.
        forwarded = sorted(self.forwarded, key=device_order)
        return forwarded, self.close(), self.rejected

    def receive(self, r: TaskResult) -> None:
        """The next step after ``r``: a relayed model starts the group's training, the last
        member's update makes the group forward, a forwarded update reached the cloud."""
        fed = self.fed
        if r.task_id in self.relays:
            g = self.relays.pop(r.task_id)
            rule, agg = self.rules[g], self.agg[g]
            for d in self.members[g]:
                task = fed.fit_task(self.rnd, d, self.shares[d], rule=rule, source=agg, sink=agg)
                self.fits[task.id] = g
                fed.transport.submit([task])
        elif r.task_id in self.fits:
            g = self.fits.pop(r.task_id)
            self.gathered[g].append(r)
            if g in self.open and len(self.gathered[g]) == len(self.members[g]):
                self.open.discard(g)
                self.forward(g)
        elif r.task_id in self.forwards:
            g = self.forwards.pop(r.task_id)
            self.forwarded.append(replace(r, update=self.combined[g]))
            self.reached.add(g)
        else:
            fed.late.append(r)

    def forward(self, g: int) -> None:
        """Group ``g`` validates and combines what it gathered and sends it to the cloud."""
        fed = self.fed
        accepted, bad = fed.validate(self.gathered[g])
        self.rejected.update(bad)
        expected = [d for d in self.members[g] if d not in self.rejected]
        self.failures.update(fed.lost(expected, accepted))
        if not accepted:
            return
        rule = self.rules[g]
        try:
            update = combine(rule, fed.parameters, accepted_updates(accepted))
        except ValueError as e:
            # The group's rule cannot combine what arrived (Krum with too few members, say):
            # the group sends nothing this round, as a group that missed its deadline.
            for r in accepted:
                self.failures[r.device] = f"group {g} could not combine its updates: {e}"
            return
        self.combined[g] = update
        cost = aggregation_cost(rule, len(accepted), fed.work.state_values, fed.model.nbytes)
        tid = f"r{self.rnd}-forward-g{g}"
        self.forwards[tid] = g
        ins = ForwardIns(cost=cost, nbytes=update.nbytes, num_examples=update.num_examples)
        fed.transport.submit([Task(id=tid, device=self.agg[g], ins=ins)])

    def close(self) -> dict[int, str]:
        """Why each selected device's work did not reach the cloud (rejections aside)."""
        for g, ds in self.members.items():
            if g not in self.reached:
                for d in ds:
                    if d not in self.rejected:
                        self.failures.setdefault(d, f"group {g} did not reach the cloud in time")
        done = {r.device for results in self.gathered.values() for r in results}
        self.failures.update(
            {
                d: NO_RESULT
                for d in self.selected
                if d not in done and d not in self.rejected and d not in self.failures
            }
        )
        return self.failures
