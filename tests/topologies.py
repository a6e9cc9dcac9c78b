"""Small topologies with round numbers, so that tests can derive expected times by hand."""

from __future__ import annotations

from fedsim.core.topology import (
    Device,
    Group,
    HardwareProfile,
    LinkProfile,
    Topology,
)

MB = 1e6


def hardware(name="hw", tflops=1.0, jitter=0.0):
    """A device that trains at exactly ``tflops`` TFLOP/s (efficiency 1)."""
    return HardwareProfile(
        name=name,
        peak_flops=tflops * 1e12,
        efficiency=1.0,
        memory_bytes=16e9,
        memory_bandwidth=10e9,
        disk_bandwidth=1e9,
        jitter=jitter,
    )


def link(name="l", mb_per_s=100.0, latency_s=0.0, loss=0.0):
    return LinkProfile(name=name, bandwidth=mb_per_s * MB, latency=latency_s, loss=loss)


def server(hw, link_profile):
    """Device 0, the server, in group 0 (the cloud)."""
    return Device(
        id=0,
        description="server",
        group=0,
        id_in_group=0,
        role="server",
        hardware=hw,
        link=link_profile,
    )


def star(n_clients=2, *, access=None, uplink=None, server_tflops=10.0, client_tflops=1.0):
    """A server in group 0 and ``n_clients`` trainers in group 1.

    Links default to 1e12 B/s (effectively free) so a test sets only the one it studies.
    """
    fast = link("fast", 1e6)
    groups = {
        0: Group(id=0, description="cloud", uplink=fast),
        1: Group(id=1, description="edge", uplink=uplink or fast),
    }
    devices = {0: server(hardware("srv", server_tflops), fast)}
    for i in range(1, n_clients + 1):
        devices[i] = Device(
            id=i,
            description=f"client {i}",
            group=1,
            id_in_group=i - 1,
            role="trainer",
            hardware=hardware("cli", client_tflops),
            link=access or fast,
        )
    return Topology("star", groups, devices)


def grouped(members, *, uplink=None, access=None, client_hardware=None, name="two_groups"):
    """A server in group 0 and devices in edge groups: ``members`` maps device -> group.

    ``uplink`` joins each edge group to the backbone and ``access`` each device to its group
    (both effectively free by default); ``client_hardware(device)`` picks a device's profile.
    """
    fast = link("fast", 1e6)
    edge = sorted(set(members.values()))
    groups = {0: Group(id=0, description="cloud", uplink=fast)}
    groups.update({g: Group(id=g, description=f"g{g}", uplink=uplink or fast) for g in edge})
    devices = {0: server(hardware("srv", 10.0), fast)}
    for d, g in members.items():
        devices[d] = Device(
            id=d,
            description=f"d{d}",
            group=g,
            id_in_group=d,
            role="trainer",
            hardware=client_hardware(d) if client_hardware else hardware("cli", 1.0),
            link=access or fast,
        )
    return Topology(name, groups, devices)
