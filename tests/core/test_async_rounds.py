"""FedBuff rounds pinned to hand-computed numbers through a scripted transport.

The transport finishes tasks in the order a test writes down, so each update's staleness is
chosen, not simulated. Every client moves the parameters it was sent by a fixed step of its own
(device d: ``w + STEP[d]``), and FedAvg combines equally weighted updates, so every version can
be worked out by hand with FedBuff's rebase ``current + (1 + s)^-a * (trained - base)``.
"""

from collections.abc import Callable, Sequence

import numpy as np
import pytest

from fedsim.core.coordinator import ClientWork, Coordinator, FederatedConfig
from fedsim.core.events import EventKind
from fedsim.core.runtime import (
    Cost,
    ModelRef,
    Task,
    TaskResult,
    Transport,
    Update,
)
from fedsim.core.strategies.fedavg import FedAvg

STEP = {1: 4.0, 2: 8.0, 3: 36.0}


class ScriptedTransport(Transport):
    """Delivers results in ``order`` (task ids), one per second; clients add ``STEP[d]``."""

    def __init__(self, order: Sequence[str]) -> None:
        super().__init__()
        self.order = list(order)
        self.clock = 0.0
        self.pending: dict[str, Task] = {}

    def now(self) -> float:
        return self.clock

    def submit(self, tasks: Sequence[Task]) -> None:
        for task in tasks:
            self.pending[task.id] = task

    def wait(self, *, count: int, deadline: float | None = None) -> list[TaskResult]:
        # A coordinator that waits for more than the script holds is itself a failure: without
        # deadlines nothing else would end the wait.
        assert self.order, f"the coordinator waits beyond the script; pending {list(self.pending)}"
        task = self.pending.pop(self.order.pop(0))
        started, self.clock = self.clock, self.clock + 1.0
        ins = task.ins
        trained = {"w": (ins.parameters["w"] + STEP[task.device]).astype(np.float32)}
        update = Update(num_examples=ins.samples, nbytes=4, parameters=trained)
        return [
            TaskResult(
                task_id=task.id,
                device=task.device,
                started=started,
                finished=self.clock,
                update=update,
            )
        ]

    def server_work(self, kind: EventKind, cost: Cost, fn: Callable | None = None):
        return None if fn is None else fn()


def coordinator(order: Sequence[str], **config) -> Coordinator:
    return Coordinator(
        transport=ScriptedTransport(order),
        strategy=FedAvg(),
        work=ClientWork(
            samples=dict.fromkeys(STEP, 10),
            train_flops_per_sample=1.0,
            update_nbytes=4,
            state_values=1,
        ),
        model=ModelRef(name="m", version=0, nbytes=4),
        parameters={"w": np.zeros(1, np.float32)},
        config=FederatedConfig(mode="async", concurrency=3, **config),
    )


def test_stale_updates_are_rebased_with_their_change_scaled_by_staleness():
    # Prepare: all three clients start on version 0 (w = 0); one update per aggregation, so
    # d2's update arrives one version late and d3's two. Task ids are "a<n>-d<device>", n the
    # order of submission.
    coord = coordinator(
        ["a0-d1", "a1-d2", "a2-d3"],
        rounds=3,
        buffer_size=1,
        max_staleness=5,
        staleness_exponent=2.0,
    )
    # Execute
    history = coord.run([1, 2, 3])
    # Assert, by hand with a = 2:
    #   v1: d1, staleness 0: 0 + (1+0)^-2 * ((0 + 4) - 0) = 4
    #   v2: d2, staleness 1: 4 + (1+1)^-2 * ((0 + 8) - 0) = 4 + 8/4 = 6
    #   v3: d3, staleness 2: 6 + (1+2)^-2 * ((0 + 36) - 0) = 6 + 36/9 = 10
    # A wrong exponent (a = 0.5: 4 + 8/sqrt(2)), sign (4 + 8*4) or base (the current version
    # instead of version 0: 4 + (8 - 4)/4) would give another v2.
    assert [r.staleness for r in history] == [0.0, 1.0, 2.0]
    assert [r.completed for r in history] == [(1,), (2,), (3,)]
    assert [r.version.version for r in history] == [1, 2, 3]
    np.testing.assert_allclose(coord.parameters["w"], [10.0], rtol=1e-6)


def test_buffer_of_two_per_aggregation_and_too_stale_updates_rejected():
    # Prepare: buffer_size 2, max_staleness 1, a = 1. A client that finishes is replaced at
    # once, on the version current then. Arrivals, what they make, and what starts on what:
    #   start on v0 (w = 0): a0-d1, a1-d2, a2-d3
    #   a0-d1: 0 + 4 = 4, buffered; a3-d1 starts on v0
    #   a1-d2: 0 + 8 = 8; v1 = mean(4, 8) = 6; a4-d2 starts on v1
    #   a3-d1, trained on v0, staleness 1: 6 + (1+1)^-1 * ((0 + 4) - 0) = 8; a5-d1 on v1
    #   a4-d2: 6 + 8 = 14; v2 = mean(8, 14) = 11; a6-d2 on v2
    #   a2-d3, trained on v0, staleness 2 > max_staleness 1: rejected; a7-d3 on v2
    #   a5-d1, trained on v1, staleness 1: 11 + (1+1)^-1 * ((6 + 4) - 6) = 13; a8-d1 on v2
    #   a6-d2: 11 + 8 = 19; v3 = mean(13, 19) = 16
    order = ["a0-d1", "a1-d2", "a3-d1", "a4-d2", "a2-d3", "a5-d1", "a6-d2"]
    coord = coordinator(order, rounds=3, buffer_size=2, max_staleness=1, staleness_exponent=1.0)
    # Execute
    history = coord.run([1, 2, 3])
    # Assert
    assert [r.completed for r in history] == [(1, 2), (1, 2), (1, 2)]
    assert [r.rejected for r in history] == [{}, {}, {3: "stale by 2 versions"}]
    assert [r.staleness for r in history] == [0.0, 0.5, 0.5]
    np.testing.assert_allclose(coord.parameters["w"], [16.0], rtol=1e-6)


def test_fit_round_refuses_async_mode():
    # Prepare
    coord = coordinator([], rounds=1, buffer_size=1)
    # Execute / Assert
    with pytest.raises(ValueError, match="mode: 'async'"):
        coord.fit_round(0, [1, 2, 3])
