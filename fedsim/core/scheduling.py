"""Who takes part in a round, and how much work each one gets.

The scheduler reads devices through :class:`ResourceView`, one small interface: the simulator
implements it from simulated state, the real runtime from heartbeats or Prometheus.
This module also holds what selection and load balancing share: a round-time estimate, a
:class:`ResourceView` whose views are set by hand, and the :class:`Reliability` score that
feeds ``DeviceView.reliability``. Policies are in :mod:`fedsim.core.selection`, work splitting
in :mod:`fedsim.core.balance`.
"""

from __future__ import annotations

import abc
import dataclasses
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, kw_only=True, slots=True)
class DeviceView:
    """What the scheduler knows about one device at selection time.

    ``throughput`` is training samples per second (measured, else from the profile);
    ``bandwidth`` is bytes/s to the server (measured, else the path's bottleneck);
    ``reliability`` in [0, 1] falls when the device's updates are rejected or lost;
    ``utility`` is a statistical utility (e.g. Oort's: examples x root mean squared loss of the
    device's last training), 0 when unknown; ``last_duration`` the seconds its last round took
    (None when it has not taken part yet).
    """

    id: int
    group: int
    online: bool = True
    cpu_busy: float = 0.0
    memory_available: float = float("inf")
    throughput: float
    bandwidth: float
    reliability: float = 1.0
    utility: float = 0.0
    last_duration: float | None = None
    samples: int = 0

    def observed(
        self,
        *,
        reliability: float,
        utility: float,
        throughput: float,
        last_duration: float | None,
        samples: int,
    ) -> DeviceView:
        """This view overlaid with what rounds observed of the device: ``dataclasses.replace``
        spelled out, which costs less than half of it (a view a candidate, every round)."""
        return DeviceView(
            id=self.id,
            group=self.group,
            online=self.online,
            cpu_busy=self.cpu_busy,
            memory_available=self.memory_available,
            throughput=throughput,
            bandwidth=self.bandwidth,
            reliability=reliability,
            utility=utility,
            last_duration=last_duration,
            samples=samples,
        )


class ResourceView(abc.ABC):
    """Reads the current state of devices for the scheduler."""

    @abc.abstractmethod
    def snapshot(self, devices: Sequence[int]) -> dict[int, DeviceView]:
        """The view of each of ``devices`` now."""


def estimated_round_time(view: DeviceView, samples: float, model_bytes: float) -> float:
    """Seconds ``view`` would need for one round over ``samples`` training samples.

    The round downloads the model and uploads an update of the same size, so ``model_bytes``
    crosses the device's link twice. Queuing, latency and aggregation are left out: the estimate
    ranks devices, it does not predict the round. A device with no throughput (or bandwidth)
    for work it must do takes forever.
    """
    compute = _seconds(samples, view.throughput)
    transfer = _seconds(2 * model_bytes, view.bandwidth)
    return compute + transfer


def _seconds(amount: float, rate: float) -> float:
    if amount <= 0:
        return 0.0
    return amount / rate if rate > 0 else math.inf


class StaticResourceView(ResourceView):
    """A :class:`ResourceView` over views that its owner sets, for tests and the simulator."""

    def __init__(self, *, views: Iterable[DeviceView] = ()) -> None:
        self._views = {v.id: v for v in views}

    @property
    def devices(self) -> list[int]:
        """Ids of the devices held, ascending."""
        return sorted(self._views)

    def snapshot(self, devices: Sequence[int]) -> dict[int, DeviceView]:
        # A device nobody described is a caller's mistake, so the KeyError is left to surface.
        return {d: self._views[d] for d in devices}

    def update(self, device: int, **fields: Any) -> DeviceView:
        """Replace some fields of ``device``'s view; returns the new (frozen) view."""
        view = dataclasses.replace(self._views[device], **fields)
        self._views[device] = view
        return view


class Reliability:
    """How far each device's updates can be trusted to arrive and pass validation, in [0, 1].

    Each outcome moves the score by an exponential moving average,
    ``score = decay * score + (1 - decay) * outcome``, with outcome 1 for an accepted update and
    0 for one rejected by validation or lost (failed, or past the deadline). Recent rounds weigh
    most, and a device that recovers earns its trust back. Unknown devices start at ``prior``.
    """

    def __init__(self, *, decay: float = 0.8, prior: float = 1.0) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        if not 0.0 <= prior <= 1.0:
            raise ValueError(f"prior must be in [0, 1], got {prior}")
        self._decay = decay
        self._prior = prior
        self._scores: dict[int, float] = {}

    def accept(self, device: int) -> float:
        """Record an update that arrived and passed validation; returns the new score."""
        return self._observe(device, 1.0)

    def reject(self, device: int) -> float:
        """Record an update that validation rejected; returns the new score."""
        return self._observe(device, 0.0)

    def lost(self, device: int) -> float:
        """Record an update that never came (failure or missed deadline); returns the new score."""
        return self._observe(device, 0.0)

    def score(self, device: int) -> float:
        """The current score of ``device`` (``prior`` when nothing was recorded)."""
        return self._scores.get(device, self._prior)

    def scores(self) -> dict[int, float]:
        """Scores of the devices with at least one recorded outcome."""
        return dict(self._scores)

    def _observe(self, device: int, outcome: float) -> float:
        new = self._decay * self.score(device) + (1.0 - self._decay) * outcome
        self._scores[device] = new
        return new
