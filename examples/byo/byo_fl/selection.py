"""RoundRobin: the clients take part in turn, ``k`` a round, in the order of their ids.

Round ``rnd`` (1-based) starts where the previous one stopped among the online devices, so
that over ``n / k`` rounds every online client trains once. A ``fedsim`` SelectionPolicy
returns the chosen ids ascending and takes any randomness from the ``rng`` it is given (this
one needs none).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedsim.core.scheduling import DeviceView
from fedsim.core.selection import SelectionPolicy


class RoundRobin(SelectionPolicy):
    """``k`` online devices a round, taking turns; see the module's docstring."""

    def select(
        self, views: Sequence[DeviceView], k: int, *, rnd: int, rng: np.random.Generator
    ) -> list[int]:
        online = sorted(v.id for v in views if v.online)
        if not online or k <= 0:
            return []
        take = min(k, len(online))
        start = ((rnd - 1) * take) % len(online)
        return sorted((online + online)[start : start + take])
