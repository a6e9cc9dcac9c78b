"""The scheduler's view of simulated devices, read from profiles and the simulation's state."""

from __future__ import annotations

from collections.abc import Sequence

from fedsim.core.scheduling import DeviceView, ResourceView
from fedsim.sim.runtime import SimTransport


class SimResources(ResourceView):
    """Throughput from the hardware profile at the device's own speed, bandwidth from the
    path's current bottleneck.

    A device is offline during an outage of the fault plan and busy while it computes.
    """

    def __init__(self, transport: SimTransport, *, train_flops_per_sample: float) -> None:
        self.transport = transport
        self.train_flops_per_sample = train_flops_per_sample

    def snapshot(self, devices: Sequence[int]) -> dict[int, DeviceView]:
        t = self.transport
        topo = t.topology
        narrowest = t.network.narrowest
        views = {}
        for d in devices:
            dev = topo.devices[d]
            bandwidth = narrowest(topo.path(d, t.server))
            views[d] = DeviceView(
                id=d,
                group=dev.group,
                online=not t.offline(d),
                cpu_busy=1.0 if t.busy(d) else 0.0,
                memory_available=dev.hardware.memory_bytes,
                throughput=dev.hardware.effective_flops * dev.speed / self.train_flops_per_sample,
                bandwidth=bandwidth,
            )
        return views
