"""The strategy interface the round coordinator calls."""

from __future__ import annotations

import abc
from collections.abc import Sequence

from fedsim.core.runtime import NDArrays, Update


class Strategy(abc.ABC):
    """Turns the updates of a round into the next global parameters."""

    name: str = "strategy"

    @abc.abstractmethod
    def aggregate_fit(self, current: NDArrays | None, updates: Sequence[Update]) -> NDArrays | None:
        """The new global parameters, or None when the updates carry no arrays (timing only)."""
