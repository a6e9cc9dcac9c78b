"""The round coordinator: runs federated rounds with the protocol the configuration asks for.

Written once against :class:`~fedsim.core.runtime.Transport`; the simulator and the real
runtime drive it unchanged. The protocols live in :mod:`fedsim.core.rounds`:

- synchronous (FedAvg's): a round waits for its clients until all answered or its deadline
  passed; what arrived is validated and aggregated (``sync``);
- hierarchical: devices send their updates to an aggregator in their network group, which
  combines them and forwards one update to the cloud (``hierarchical``);
- asynchronous (FedBuff): clients train continuously and every ``buffer_size`` updates,
  weighted down by their staleness, make a new version (``asynchronous``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from fedsim.core.rounds.asynchronous import AsyncRounds
from fedsim.core.rounds.base import (
    ClientWork,
    Evaluation,
    Federation,
    Publisher,
    RoundProtocol,
    RoundReport,
)
from fedsim.core.rounds.config import FederatedConfig
from fedsim.core.rounds.hierarchical import HierarchicalRounds
from fedsim.core.rounds.sync import SyncRounds
from fedsim.core.strategies.base import Strategy

__all__ = [
    "ClientWork",
    "Coordinator",
    "Evaluation",
    "FederatedConfig",
    "Publisher",
    "RoundReport",
]


@dataclass(kw_only=True, eq=False, repr=False)
class Coordinator(Federation):
    """Runs federated rounds over a transport with a strategy, keeping the current version.

    ``group_strategy`` combines the updates within each group of hierarchical rounds; the
    configured ``strategy`` does when it is None.
    """

    group_strategy: Strategy | None = None
    protocol: RoundProtocol = field(init=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        cfg = self.config
        if self.group_strategy is not None and not cfg.hierarchical:
            raise ValueError("group_strategy: only hierarchical rounds aggregate groups")
        if self.secagg is not None and (cfg.mode == "async" or cfg.hierarchical):
            raise ValueError("secure aggregation runs in synchronous rounds without groups only")
        if self.secagg is not None and self.strategy.name != "fedavg":
            # The server learns only the sum of the updates: a rule that looks at each one
            # (median, Krum) or keeps state of its own cannot run on it.
            raise ValueError(
                f"secure aggregation sums the updates, so it needs strategy fedavg, "
                f"not {self.strategy.name!r}"
            )
        if cfg.mode == "async":
            self.protocol = AsyncRounds(self)
        elif cfg.hierarchical:
            self.protocol = HierarchicalRounds(self, group_strategy=self.group_strategy)
        else:
            self.protocol = SyncRounds(self)

    def run(self, candidates: Sequence[int]) -> list[RoundReport]:
        """All configured rounds over ``candidates``; returns their reports."""
        self.protocol.run(candidates)
        return self.history

    def fit_round(self, rnd: int, candidates: Sequence[int]) -> RoundReport:
        """One synchronous round; it fails, without raising, below ``min_fit`` updates."""
        if not isinstance(self.protocol, SyncRounds):
            raise ValueError(
                f"mode: {self.config.mode!r} rounds run continuously; call run(), not fit_round()"
            )
        return self.protocol.fit_round(rnd, candidates)
