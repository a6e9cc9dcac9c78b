"""Heterogeneous fleets: per-device figures from tables and spreads, and availability."""

from __future__ import annotations

import math

import numpy as np
import pytest
from topologies import hardware, star

from fedsim.core.faults import FaultPlan
from fedsim.core.fleet import (
    Availability,
    DeviceTraits,
    FleetError,
    Spreads,
    Timeline,
    alternating,
    assign_timelines,
    heterogeneous,
)


def figures(topology):
    """(speed, bandwidth, latency) of each trainer, as arrays."""
    devices = [topology.devices[d] for d in topology.trainers]
    return (
        np.array([d.speed for d in devices]),
        np.array([d.link.bandwidth for d in devices]),
        np.array([d.link.latency for d in devices]),
    )


def test_spreads_are_log_normal_of_mean_one_and_the_asked_variation():
    # Prepare: 20,000 trainers on a 100 MB/s, 10 ms link.
    base = star(20_000)
    base = heterogeneous(base, base.trainers, seed=0, table=[DeviceTraits(latency=0.01)])
    spreads = Spreads(speed=0.5, bandwidth=1.0, latency=0.2)

    # Execute
    fleet = heterogeneous(base, base.trainers, seed=7, spreads=spreads)

    # Assert: each figure's mean is the profile's and its coefficient of variation the one
    # asked for (the standard error of a CV near 1 over 20,000 draws is about 0.01).
    speed, bandwidth, latency = figures(fleet)
    for values, profile, cv in ((speed, 1.0, 0.5), (bandwidth, 1e12, 1.0), (latency, 0.01, 0.2)):
        assert values.mean() == pytest.approx(profile, rel=0.03)
        assert values.std() / values.mean() == pytest.approx(cv, abs=0.05)
        assert (values > 0).all()
    assert np.log(speed).std() == pytest.approx(math.sqrt(math.log1p(0.25)), rel=0.03)


def test_the_same_seed_draws_the_same_fleet_and_another_seed_another():
    # Prepare
    base = star(50)
    spreads = Spreads(speed=0.5, bandwidth=0.5)

    # Execute
    a = heterogeneous(base, base.trainers, seed=1, spreads=spreads)
    b = heterogeneous(base, base.trainers, seed=1, spreads=spreads)
    c = heterogeneous(base, base.trainers, seed=2, spreads=spreads)
    # Only the bandwidth's spread changes: the speeds stay as they were.
    d = heterogeneous(base, base.trainers, seed=1, spreads=Spreads(speed=0.5, bandwidth=2.0))

    # Assert
    assert all((x == y).all() for x, y in zip(figures(a), figures(b), strict=True))
    assert not (figures(a)[0] == figures(c)[0]).any()
    assert (figures(a)[0] == figures(d)[0]).all()
    assert not (figures(a)[1] == figures(d)[1]).any()


def test_a_table_is_assigned_in_order_or_drawn_and_overrides_the_profiles():
    # Prepare: three rows; the last names another hardware profile.
    base = star(7)
    gpu = hardware("gpu", tflops=10.0)
    table = [
        DeviceTraits(speed=2.0, bandwidth=1e6),
        DeviceTraits(latency=0.05),
        DeviceTraits(hardware="gpu"),
    ]

    # Execute
    ordered = heterogeneous(base, base.trainers, seed=0, table=table, hardware={"gpu": gpu})
    drawn = heterogeneous(
        base, base.trainers, seed=0, table=table, assign="sample", hardware={"gpu": gpu}
    )

    # Assert: trainer i takes row i mod 3; fields a row leaves out keep the profile's.
    d = ordered.devices
    assert [d[i].speed for i in range(1, 8)] == [2.0, 1.0, 1.0] * 2 + [2.0]
    assert d[1].link.bandwidth == 1e6 and d[1].link.latency == base.devices[1].link.latency
    assert d[2].link.latency == 0.05 and d[2].link.bandwidth == base.devices[2].link.bandwidth
    assert d[3].hardware is gpu and d[3].link is base.devices[3].link
    assert d[0] is base.devices[0]  # the server is no trainer: as it was
    rows = [
        table.index(next(r for r in table if _matches(drawn.devices[i], r, base)))
        for i in range(1, 8)
    ]
    assert rows != [0, 1, 2, 0, 1, 2, 0] and set(rows) <= {0, 1, 2}


def _matches(device, row, base):
    profile = base.devices[device.id]
    return (
        device.speed == (row.speed or 1.0)
        and device.link.bandwidth == (row.bandwidth or profile.link.bandwidth)
        and device.hardware.name == (row.hardware or profile.hardware.name)
    )


def test_a_table_naming_an_unknown_profile_is_refused():
    base = star(1)
    with pytest.raises(FleetError, match="no hardware profile 'tpu'"):
        heterogeneous(base, base.trainers, seed=0, table=[DeviceTraits(hardware="tpu")])


def test_a_timeline_without_period_is_online_only_inside_its_intervals():
    # Prepare: online in [10, 20) and [30, 40).
    tl = Timeline([10, 20, 30, 40])

    # Execute / Assert
    assert [tl.online(t) for t in (0, 10, 19.9, 20, 35, 40, 100)] == [
        False,
        True,
        True,
        False,
        True,
        False,
        False,
    ]
    assert tl.next_offline(12) == 20 and tl.next_offline(25) == 25
    assert tl.fraction_online() == pytest.approx(0.5)


def test_a_periodic_timeline_repeats_and_joins_across_the_period():
    # Prepare: a 100 s trace online in [0, 10) and [80, 100): one session from 80 to 110.
    tl = Timeline([0, 10, 80, 100], period=100)

    # Execute / Assert
    assert tl.online(105) and tl.online(285) and not tl.online(150)
    assert tl.next_offline(85) == 110
    assert tl.next_offline(285) == 310
    assert Timeline([0, 100], period=100).next_offline(5) == math.inf


@pytest.mark.parametrize(
    ("edges", "period", "complaint"),
    [
        ([1, 2, 3], None, "pairs"),
        ([2, 1], None, "end after"),
        ([0, 2, 2, 3], None, "apart"),
        ([0, 2, 1, 3], None, "apart"),
        ([-1, 2], None, ">= 0"),
        ([0, 200], 100, "after the period"),
        ([0, 1], 0, "period"),
    ],
)
def test_bad_timelines_are_refused(edges, period, complaint):
    with pytest.raises(FleetError, match=complaint):
        Timeline(edges, period)


def test_a_device_is_offline_when_its_timeline_leaves_it_at_any_time_of_a_step():
    # Prepare: device 1 online in [0, 50); device 2 has no timeline.
    plan = FaultPlan(availability=Availability({1: Timeline([0, 50])}))

    # Execute / Assert
    assert not plan.offline(1, 10) and plan.offline(1, 50)
    assert plan.offline(1, 40, 60)  # goes offline mid-step
    assert not plan.offline(1, 40, 50)  # the step ends as it goes offline: [start, end)
    assert not plan.offline(2, 0, 1e9)


def test_trace_timelines_are_assigned_to_devices_in_order():
    timelines = [Timeline([0, 1]), Timeline([5, 6])]
    availability = assign_timelines(timelines, [4, 2, 3], seed=0)
    assert availability.timelines == {2: timelines[0], 3: timelines[1], 4: timelines[0]}


def test_alternating_availability_is_online_for_its_share_of_time():
    # Prepare: online 1 h, offline 2 h on average: a third of the time online.
    devices = range(1, 2001)

    # Execute
    a = alternating(devices, seed=3, mean_online_s=3600, mean_offline_s=7200, period_s=86400)
    again = alternating(devices, seed=3, mean_online_s=3600, mean_offline_s=7200, period_s=86400)

    # Assert: the share online at a given time and over the day; the same seed, the same trace.
    at_noon = np.mean([a.online(d, 43200.0) for d in devices])
    overall = np.mean([a.timelines[d].fraction_online() for d in devices])
    assert at_noon == pytest.approx(1 / 3, abs=0.04)
    assert overall == pytest.approx(1 / 3, abs=0.02)
    assert all((a.timelines[d].edges == again.timelines[d].edges).all() for d in devices)
