"""Availability in the simulator: offline devices are not selected, and one that goes offline
during its task drops out of the round; a device's speed scales its compute."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from topologies import star

from fedsim.core.coordinator import ClientWork, Coordinator, FederatedConfig
from fedsim.core.events import EventKind
from fedsim.core.faults import FaultPlan
from fedsim.core.fleet import Availability, Timeline
from fedsim.core.runtime import ModelRef
from fedsim.core.strategies.fedavg import FedAvg
from fedsim.sim.resources import SimResources
from fedsim.sim.runtime import SimTransport

FLOPS_PER_SAMPLE = 1e10  # 100 samples: 1 s on a 1 TFLOP/s client


def coordinator(topology, faults, *, rounds=3, deadline_s=5.0):
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
        config=FederatedConfig(rounds=rounds, deadline_s=deadline_s, min_fit=1),
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
