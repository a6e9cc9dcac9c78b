"""The strategy interface the round coordinator calls (Flower's hooks, trimmed to what we use).

A strategy sees the current global parameters and the round's validated updates (each the full
parameters a client trained, with its example count) and returns the next global parameters.
``configure_fit`` adds strategy-specific settings to what clients receive (FedProx's ``mu``).
Rules that must see every update at once set ``streaming = False``; the coordinator then keeps
the round's updates in memory, which it otherwise need not.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from typing import Any

from fedsim.core.runtime import NDArrays, Update


class Strategy(abc.ABC):
    """Turns the updates of a round into the next global parameters."""

    name: str = "strategy"
    streaming: bool = True

    def configure_fit(self, rnd: int) -> Mapping[str, Any]:
        """Extra settings sent to every client of round ``rnd``."""
        return {}

    def aggregation_passes(self, n: int) -> float:
        """How many passes over one model's values combining ``n`` updates makes: what the
        simulator charges the aggregator. A streaming rule reads each update once; a rule that
        needs all updates at once compares them, about n^2 passes in the worst case (Krum)."""
        return float(n if self.streaming else n * n)

    def client_passes(self) -> float:
        """How many passes over the model's values each client makes after training, on the
        strategy's behalf (local DP's clipping and noise): what the simulator charges it."""
        return 0.0

    def min_updates(self) -> int:
        """The fewest updates the rule combines (Krum's 2f + 3); a round with fewer fails."""
        return 1

    @abc.abstractmethod
    def aggregate_fit(self, current: NDArrays | None, updates: Sequence[Update]) -> NDArrays | None:
        """The new global parameters, or None when the updates carry no arrays (timing only)."""


class Wrapper(Strategy):
    """A strategy around ``inner`` (clipping, differential privacy): every hook is the inner
    rule's, and its name is the inner rule's with ``+suffix``; a wrapper overrides only the
    hooks it changes."""

    def __init__(self, inner: Strategy, suffix: str) -> None:
        self.inner = inner
        self.name = f"{inner.name}+{suffix}"
        self.streaming = inner.streaming

    def configure_fit(self, rnd: int) -> Mapping[str, Any]:
        return self.inner.configure_fit(rnd)

    def aggregation_passes(self, n: int) -> float:
        return self.inner.aggregation_passes(n)

    def client_passes(self) -> float:
        return self.inner.client_passes()

    def min_updates(self) -> int:
        return self.inner.min_updates()

    def aggregate_fit(self, current: NDArrays | None, updates: Sequence[Update]) -> NDArrays | None:
        return self.inner.aggregate_fit(current, updates)
