"""The scheduler's view of real devices, read from the registry's heartbeats.

Heartbeats carry what the agent measured (CPU busy, memory available, bandwidth); throughput
comes from the device's hardware profile when the topology names one, since a device that has
not trained yet has no measured speed. The monitoring layer adds a Prometheus-backed view with
the same interface.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from fedsim.core.registry import DeviceRegistry, DeviceState, UnknownDevice
from fedsim.core.scheduling import DeviceView, ResourceView
from fedsim.core.topology import HardwareProfile

_ALIVE = (DeviceState.ONLINE, DeviceState.BUSY)


class RegistryResources(ResourceView):
    """Devices as their last heartbeat describes them; unknown or silent devices are offline."""

    def __init__(
        self,
        registry: DeviceRegistry,
        *,
        train_flops_per_sample: float,
        profiles: Mapping[int, HardwareProfile] | None = None,
        default_bandwidth: float = 12.5e6,
    ) -> None:
        self.registry = registry
        self.train_flops_per_sample = train_flops_per_sample
        self.profiles = dict(profiles or {})
        self.default_bandwidth = default_bandwidth

    def snapshot(self, devices: Sequence[int]) -> dict[int, DeviceView]:
        views = {}
        for d in devices:
            try:
                rec = self.registry.get(d)
            except UnknownDevice:
                views[d] = DeviceView(id=d, group=0, online=False, throughput=0.0, bandwidth=0.0)
                continue
            res = rec.resources
            profile = self.profiles.get(d)
            measured = res.get("throughput")
            throughput = (
                measured
                if measured
                else profile.effective_flops / self.train_flops_per_sample
                if profile
                else 1.0
            )
            bandwidth = min(
                res.get("bandwidth_up") or self.default_bandwidth,
                res.get("bandwidth_down") or self.default_bandwidth,
            )
            views[d] = DeviceView(
                id=d,
                group=rec.group,
                online=rec.state in _ALIVE,
                cpu_busy=float(res.get("cpu_busy", 0.0)),
                memory_available=float(res.get("memory_available", float("inf"))),
                throughput=float(throughput),
                bandwidth=float(bandwidth),
            )
        return views
