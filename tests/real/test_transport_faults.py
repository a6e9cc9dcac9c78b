"""HttpTransport's faults without agents: dropouts drawn as the simulator draws them, and the
task board's handling of dropped tasks and of a device that went away."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest
from topologies import star

from fedsim.core.faults import FaultPlan, LinkChange
from fedsim.core.runtime import FitIns, ModelRef, Task, UploadDataIns
from fedsim.core.topology import Topology, map_profiles
from fedsim.real.board import PostedTask, TaskBoard, TaskState
from fedsim.real.protocol import UploadDataTask
from fedsim.real.transport import HttpTransport
from fedsim.sim.runtime import SimTransport

MODEL = ModelRef(name="m", version=0, nbytes=1000)


def fit(task_id: str, device: int) -> Task:
    ins = FitIns(model=MODEL, samples=10, epochs=1, batch_size=5, flops=1e6, update_nbytes=1000)
    return Task(id=task_id, device=device, ins=ins)


def upload(task_id: str) -> UploadDataTask:
    return UploadDataTask(id=task_id, nbytes=100)


def tasks() -> list[list[Task]]:
    """Fit tasks in three submissions, with an upload_data task (no draw) among them."""
    first = [fit(f"r0-d{d}", d) for d in (1, 2, 3, 4)]
    second = [fit(f"r1-d{d}", d) for d in (4, 2)] + [
        Task(id="u0", device=3, ins=UploadDataIns(samples=5, nbytes=100))
    ]
    third = [fit(f"r2-d{d}-{i}", d) for i, d in enumerate((1, 2, 3, 4, 1, 3))]
    return [first, second, third]


def jittery(topology: Topology) -> Topology:
    """``topology`` with compute and latency jitter: the simulator draws random numbers for
    them too, which must not shift its dropout draws."""
    return map_profiles(
        topology,
        hardware=lambda h: replace(h, jitter=0.3),
        link=lambda p: replace(p, latency_jitter=0.01),
    )


@pytest.mark.parametrize("seed", [0, 7, 2024])
@pytest.mark.parametrize("make", [star, lambda n: jittery(star(n))], ids=["calm", "jitter"])
def test_http_transport_drops_the_tasks_the_simulator_drops(seed: int, make):
    # Prepare
    plan = FaultPlan(dropout=0.4)
    sim = SimTransport(make(4), seed=seed, faults=plan)
    board = TaskBoard()
    http = HttpTransport(board=board, repository=None, server=0, faults=plan, seed=seed)

    # Execute
    for batch in tasks():
        sim.submit(batch)
        http.submit(batch)
    arrived = {r.task_id for r in sim.wait(count=100, deadline=1e6)}
    posted = [t for batch in tasks() for t in batch]
    marked = {t.id for t in posted if board.get(t.id).dropped}

    # Assert: what the simulator lost is exactly what the agents are told to drop.
    assert marked == {t.id for t in posted} - arrived
    assert 0 < len(marked) < len(posted)
    for t in posted:
        assert getattr(board.get(t.id).message, "drop", False) == (t.id in marked)


def test_without_dropout_nothing_is_drawn_or_marked():
    # Prepare
    board = TaskBoard()
    http = HttpTransport(board=board, repository=None, server=0, seed=3)
    state = http.rng.bit_generator.state

    # Execute
    http.submit(tasks()[0])

    # Assert
    assert http.rng.bit_generator.state == state
    assert not any(t.dropped or getattr(t.message, "drop", False) for t in board.pending())


def test_link_changes_are_refused_in_real_mode():
    plan = FaultPlan(link_changes=[LinkChange(network="l", start=0.0, factor=0.5)])
    with pytest.raises(ValueError, match="link_changes"):
        HttpTransport(board=TaskBoard(), repository=None, server=0, faults=plan)


@pytest.mark.parametrize("channel", ["job/", "../", ":x", "a b"])
def test_a_channel_that_would_break_the_task_id_pattern_is_refused(channel):
    with pytest.raises(ValueError, match="channel"):
        HttpTransport(board=TaskBoard(), repository=None, server=0, channel=channel)


def test_a_dropped_task_is_handed_out_once_and_the_next_one_follows():
    # Prepare
    board = TaskBoard()
    for i, dropped in enumerate([True, False]):
        board.post(
            PostedTask(id=f"t{i}", device=1, message=upload(f"t{i}"), posted_at=0, dropped=dropped)
        )

    # Execute: the agent polls, runs the dropped task (says nothing), polls again.
    first = asyncio.run(board.take(1, wait=0))
    second = asyncio.run(board.take(1, wait=0))
    third = asyncio.run(board.take(1, wait=0))

    # Assert: the held-task rule hands t1 again, never the dropped t0.
    assert (first.id, second.id, third.id) == ("t0", "t1", "t1")
    assert board.get("t0") is None and [t.id for t in board.pending()] == ["t1"]


def test_abandon_forgets_what_a_device_held_and_what_waited_for_it():
    # Prepare: device 1 holds t0 and has t1 queued; device 2 has t2.
    board = TaskBoard()
    for task_id, device in [("t0", 1), ("t1", 1), ("t2", 2)]:
        board.post(PostedTask(id=task_id, device=device, message=upload(task_id), posted_at=0))
    asyncio.run(board.take(1, wait=0))

    # Execute
    lost = board.abandon(1)

    # Assert: gone without an outcome; the other device's task stays.
    assert sorted(lost) == ["t0", "t1"]
    assert [t.id for t in board.pending()] == ["t2"]
    assert board.next_outcome(timeout=0) is None
    assert asyncio.run(board.take(1, wait=0)) is None
    assert board.get("t2").state is TaskState.QUEUED
