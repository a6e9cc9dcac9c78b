"""Availability in the simulator: offline devices are not selected, and one that goes offline
during its task drops out of the round; a round (or an async run) with no device online waits
for one to come back; a device's speed scales its compute."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
from topologies import star

from fedsim.core.coordinator import ClientWork, Coordinator, FederatedConfig
from fedsim.core.events import EventKind
from fedsim.core.faults import FaultPlan, Outage
from fedsim.core.fleet import Availability, Timeline
from fedsim.core.runtime import ModelRef
from fedsim.core.strategies.fedavg import FedAvg
from fedsim.sim.resources import SimResources
from fedsim.sim.runtime import SimTransport

FLOPS_PER_SAMPLE = 1e10  # 100 samples: 1 s on a 1 TFLOP/s client


def coordinator(topology, faults, *, rounds=3, deadline_s=5.0, **config):
    clients = topology.trainers
    transport = SimTransport(topology, seed=0, faults=faults)
    coord = Coordinator(
        transport=transport,
        strategy=FedAvg(),
        work=ClientWork(
            samples=dict.fromkeys(clients, 100),
            train_flops_per_sample=FLOPS_PER_SAMPLE,
            update_nbytes=1000,
            state_values=1,
        ),
        model=ModelRef(name="m", version=0, nbytes=1000),
        config=FederatedConfig(rounds=rounds, deadline_s=deadline_s, min_fit=1, **config),
        resources=SimResources(transport, train_flops_per_sample=FLOPS_PER_SAMPLE),
    )
    return coord, clients, transport


def test_offline_devices_are_not_selected_and_one_leaving_mid_task_drops_out():
    # Prepare: rounds take about 1 s. Device 1 is online throughout; device 2 comes online at
    # 1.5 s; device 3 leaves at 0.5 s, during its first task; device 4 is never online.
    availability = Availability({2: Timeline([1.5, 1e6]), 3: Timeline([0.0, 0.5]), 4: Timeline([])})
    coord, clients, _ = coordinator(star(4), FaultPlan(availability=availability))

    # Execute
    history = coord.run(clients)

    # Assert
    assert history[0].selected == (1, 3) and history[0].completed == (1,)
    assert 3 in history[0].failures
    assert history[0].finished == pytest.approx(5.0)  # waited for device 3 up to the deadline
    assert [r.selected for r in history[1:]] == [(1, 2), (1, 2)]
    assert all(r.completed == (1, 2) for r in history[1:])


def test_a_faster_device_trains_in_proportion_less_time():
    # Prepare: device 2 at twice its profile's speed.
    topology = star(2)
    topology = replace(
        topology, devices={**topology.devices, 2: replace(topology.devices[2], speed=2.0)}
    )
    coord, clients, transport = coordinator(topology, FaultPlan(), rounds=1, deadline_s=None)

    # Execute
    coord.run(clients)

    # Assert
    train = {e.device: e.end - e.start for e in transport.events if e.kind is EventKind.TRAIN}
    assert train[1] == pytest.approx(1.0) and train[2] == pytest.approx(0.5)
    views = SimResources(transport, train_flops_per_sample=FLOPS_PER_SAMPLE).snapshot([1, 2])
    assert views[2].throughput == pytest.approx(2 * views[1].throughput)
    assert np.isfinite(views[2].bandwidth)


def test_next_online_time_of_a_timeline_and_of_a_fault_plan():
    # Prepare: a 100 s trace online in [20, 30) and [60, 70); an outage of device 1 over the
    # first of its sessions after 100 s; device 2 online only in [5, 6), once.
    periodic = Timeline([20, 30, 60, 70], period=100)
    availability = Availability({1: periodic, 2: Timeline([5, 6])})
    plan = FaultPlan(availability=availability, outages=[Outage(device=1, start=110, end=125)])

    # Execute / Assert
    assert [periodic.next_online(t) for t in (0, 25, 30, 75, 1_000_000.5)] == [
        20,
        25,
        60,
        120,
        1_000_020,
    ]
    assert Timeline([5, 6]).next_online(7) == math.inf and Timeline([]).next_online(0) == math.inf
    # The outage covers [120, 125) of the session [120, 130): back at its end.
    assert plan.next_online(1, 100) == 125 and plan.next_online(1, 126) == 126
    assert plan.next_online(2, 0) == 5 and plan.next_online(2, 6) == math.inf
    assert plan.next_online(3, 42) == 42  # no timeline: online throughout
    # A float an ulp short of an edge is read as offline: the time returned reads as online.
    t = 1e9 + 19.999999
    assert periodic.online(periodic.next_online(t)) and periodic.next_online(t) >= t


def test_rounds_with_no_device_online_wait_for_one_within_their_deadline():
    # Prepare: rounds of 5 s; the only device is offline until 12 s, then trains in about 1 s.
    availability = Availability({1: Timeline([12.0, 1e6])})
    coord, clients, transport = coordinator(star(1), FaultPlan(availability=availability))

    # Execute
    history = coord.run(clients)

    # Assert: the first two rounds wait out their deadlines, one after the other, and fail;
    # the third waits for the device to come back at 12 s and aggregates.
    assert [(r.started, r.finished) for r in history[:2]] == [(0.0, 5.0), (5.0, 10.0)]
    assert [r.selected for r in history] == [(), (), (1,)]
    assert [r.aggregated for r in history] == [False, False, True]
    assert history[2].started == 10.0 and history[2].completed == (1,)
    first = min(e.start for e in transport.events if e.device == 1)
    assert first == pytest.approx(12.0)


def test_a_round_without_deadline_waits_until_a_device_comes_back_or_fails_if_none_will():
    # Prepare: device 1 comes online at 100 s, device 2 never; in the second run no device
    # ever comes online.
    availability = Availability({1: Timeline([100.0, 1e6]), 2: Timeline([])})
    waits, clients, _ = coordinator(
        star(2), FaultPlan(availability=availability), rounds=1, deadline_s=None
    )
    never = Availability({1: Timeline([]), 2: Timeline([])})
    gives_up, _, _ = coordinator(star(2), FaultPlan(availability=never), deadline_s=None)

    # Execute
    [waited] = waits.run(clients)
    failed = gives_up.run(clients)

    # Assert: the first waits 100 s; the second has nothing to wait for and fails at once.
    assert waited.selected == (1,) and waited.aggregated
    assert waited.started == 0.0 and waited.finished == pytest.approx(101.0, abs=0.1)
    assert len(failed) == 3 and all(r.selected == () and r.finished == 0.0 for r in failed)


def test_an_async_run_with_no_device_online_waits_for_one_to_come_back():
    # Prepare: both devices offline until 50 s, then online; async rounds of one update.
    availability = Availability({1: Timeline([50.0, 1e6]), 2: Timeline([50.0, 1e6])})
    coord, clients, transport = coordinator(
        star(2), FaultPlan(availability=availability), mode="async", buffer_size=1
    )

    # Execute
    history = coord.run(clients)

    # Assert
    assert len(history) == 3 and all(r.aggregated for r in history)
    assert min(e.start for e in transport.events if e.device in (1, 2)) == pytest.approx(50.0)
