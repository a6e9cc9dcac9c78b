import math
from dataclasses import fields, replace

import pytest
from topologies import hardware, link, star

from fedsim.core.calibration import StepModel
from fedsim.core.topology import (
    CpuQuota,
    Device,
    Topology,
    TopologyError,
    with_speeds_scaled,
    without_jitter,
)


def test_path_goes_up_to_the_meeting_point_and_down():
    # Prepare: server in group 0, clients 1 and 2 in group 1.
    t = star(2)
    # Execute / Assert: client to server crosses both uplinks; client to client stays in group 1.
    assert t.path(1, 0) == [
        (("device", 1), "up"),
        (("switch", 1), "up"),
        (("switch", 0), "down"),
        (("device", 0), "down"),
    ]
    assert t.path(1, 2) == [(("device", 1), "up"), (("device", 2), "down")]
    assert t.path(2, 2) == []


def test_device_attached_to_another_device():
    t = star(2)
    cam = Device(
        id=9,
        description="cam",
        group=1,
        id_in_group=5,
        role="device",
        hardware=hardware(),
        link=link("cam"),
        attach_to=2,
    )
    t2 = Topology("x", t.groups, {**t.devices, 9: cam})
    assert t2.path(9, 2) == [(("device", 9), "up")]
    assert len(t2.path(9, 0)) == 5


def test_every_path_crosses_the_links_its_ends_do_not_share():
    # Prepare: three devices hang below device 2 in a chain (9 on 2, 10 on 9, 11 on 2).
    t = star(3)
    hung = {
        i: Device(
            id=i,
            description=f"hung {i}",
            group=1,
            id_in_group=i,
            role="device",
            hardware=hardware(),
            link=link(),
            attach_to=above,
        )
        for i, above in ((9, 2), (10, 9), (11, 2))
    }
    t = Topology("x", t.groups, {**t.devices, **hung})

    def above(d: int) -> list[tuple]:
        """The nodes from device d up to the backbone, read from the devices' own fields."""
        dev = t.devices[d]
        if dev.attach_to is not None:
            return [("device", d), *above(dev.attach_to)]
        return [("device", d), ("switch", dev.group)]

    # Twice: the second time the hops between two parents come from what the first kept.
    for src, dst in [(s, d) for s in t.devices for d in t.devices] * 2:
        # Expected: up through src's nodes that dst's chain lacks, then down through dst's.
        up, down = above(src), above(dst)
        expected = [(n, "up") for n in up if n not in down]
        expected += [(n, "down") for n in reversed(down) if n not in up]

        # Execute / Assert
        assert t.path(src, dst) == expected, (src, dst)


def test_invalid_topologies_name_the_field():
    t = star(1)
    orphan = Device(
        id=5,
        description="x",
        group=7,
        id_in_group=0,
        role="device",
        hardware=hardware(),
        link=link(),
    )
    with pytest.raises(TopologyError, match=r"devices\[id=5\]\.group"):
        Topology("x", t.groups, {**t.devices, 5: orphan})
    dangling = Device(
        id=5,
        description="x",
        group=1,
        id_in_group=0,
        role="device",
        hardware=hardware(),
        link=link(),
        attach_to=42,
    )
    with pytest.raises(TopologyError, match=r"link\.to: no device 42"):
        Topology("x", t.groups, {**t.devices, 5: dangling})
    no_server = {k: v for k, v in t.devices.items() if k != 0}
    with pytest.raises(TopologyError, match="exactly one server"):
        Topology("x", t.groups, no_server)
    with pytest.raises(TopologyError, match="bandwidth"):
        link(mb_per_s=-1)


def test_attachment_cycle_is_rejected():
    t = star(1)
    a = Device(
        id=5,
        description="a",
        group=1,
        id_in_group=0,
        role="device",
        hardware=hardware(),
        link=link(),
        attach_to=6,
    )
    b = Device(
        id=6,
        description="b",
        group=1,
        id_in_group=1,
        role="device",
        hardware=hardware(),
        link=link(),
        attach_to=5,
    )
    with pytest.raises(TopologyError, match="cycle"):
        Topology("x", t.groups, {**t.devices, 5: a, 6: b})


def test_loss_caps_a_flow_by_the_mathis_formula():
    t = star(1, access=link("lossy", 100, latency_s=0.01, loss=0.01))
    path = t.path(1, 0)
    # RTT 20 ms, p = 1%: 1460 / 0.02 * sqrt(1.5 / 0.01) = 894,043 B/s
    assert t.flow_cap(path) == pytest.approx(1460 / 0.02 * math.sqrt(150), rel=1e-9)
    assert star(1).flow_cap(path) == math.inf


def test_without_jitter_clears_every_profile():
    t = star(2)
    noisy = Topology(
        t.name,
        t.groups,
        {k: replace(d, hardware=hardware(jitter=0.3)) for k, d in t.devices.items()},
    )
    calm = without_jitter(noisy)
    assert all(d.hardware.jitter == 0 for d in calm.devices.values())


def test_speeds_scaled_only_for_the_devices_named_and_only_by_positive_factors():
    t = star(3)
    faster = with_speeds_scaled(t, {1: 2.0, 3: 0.5})
    assert [faster.devices[d].speed for d in (1, 2, 3)] == [
        2.0 * t.devices[1].speed,
        t.devices[2].speed,
        0.5 * t.devices[3].speed,
    ]
    with pytest.raises(TopologyError, match=r"devices \[9\], not in the topology"):
        with_speeds_scaled(t, {9: 2.0})
    with pytest.raises(TopologyError, match="finite and > 0"):
        with_speeds_scaled(t, {1: 0.0})


def test_only_a_measured_profile_carries_evaluation_step_models():
    # Prepare
    evaluation = {"m": StepModel(overhead_s=1e-3, per_sample_s=1e-5)}

    # Execute / Assert: a spec-sheet profile with one is refused, naming the profile.
    with pytest.raises(TopologyError, match="hardware hw: only a measured profile carries eval"):
        replace(hardware(), eval_steps=evaluation)
    measured = replace(
        hardware(), kind="measured", steps={"m": evaluation["m"]}, eval_steps=evaluation
    )
    assert measured.eval_steps == evaluation


def test_with_traits_is_replace_and_shares_an_unchanged_device():
    # Prepare: a device whose every field is set, and traits that differ from its own
    hw, other = hardware("hw"), hardware("other", tflops=2.0)
    own = link(latency_s=0.01)
    d = Device(
        id=4,
        description="d",
        group=2,
        id_in_group=1,
        role="trainer",
        hardware=hw,
        link=own,
        attach_to=3,
        speed=1.5,
        cpu_quota=CpuQuota(cores=0.5, period_s=0.1),
    )
    assert all(getattr(d, f.name) != f.default for f in fields(Device))
    traits = {"hardware": other, "link": replace(own, bandwidth=2e6), "speed": 0.5}

    # Execute / Assert: the same device as replace() makes, and the device itself when the
    # traits are its own (equal, not necessarily the same objects)
    assert d.with_traits(**traits) == replace(d, **traits)
    assert d.with_traits(hardware=replace(hw), link=replace(own), speed=1.5) is d


def test_devices_attached_in_a_cycle_are_refused_and_the_server_is_known_once_built():
    # Prepare: devices 1 and 2 attached to each other; device 3 to itself
    t = star(3)
    pair = {
        **t.devices,
        1: replace(t.devices[1], attach_to=2),
        2: replace(t.devices[2], attach_to=1),
    }
    alone = {**t.devices, 3: replace(t.devices[3], attach_to=3)}

    # Execute / Assert: each is refused, naming the cycle; the valid one names its server
    for devices in (pair, alone):
        with pytest.raises(TopologyError, match="form a cycle"):
            Topology("x", t.groups, devices)
    assert t.server == 0
