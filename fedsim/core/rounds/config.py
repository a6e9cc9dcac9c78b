"""How federated rounds run: the one settings dataclass of the engine and of the Hydra schema.

OmegaConf builds it from YAML as a structured config, so its fields keep to the types OmegaConf
understands (int, float, bool, str, ``X | None``, ``dict[int, int]``), and it is not frozen:
OmegaConf makes a frozen dataclass a read-only node, which command-line overrides could not set.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

MODES = ("sync", "async")


@dataclass(kw_only=True)
class FederatedConfig:
    """How rounds run. A round selects ``clients_per_round`` clients when it is set, else
    ``fraction_per_round`` of the candidates (at least one)."""

    rounds: int = 20  # in async mode: aggregations
    clients_per_round: int | None = None
    fraction_per_round: float = 1.0
    min_fit: int = 1  # updates a round needs to aggregate
    deadline_s: float | None = None  # how long a round (async: a task) waits for updates
    local_epochs: int = 1
    batch_size: int = 16
    learning_rate: float = 0.05
    eval_every: int = 1  # evaluate every k rounds, and after the last
    max_update_norm: float | None = None  # reject updates that move the model further
    balance: bool = False  # give faster clients more samples per epoch
    hierarchical: bool = False  # devices -> group aggregator -> cloud
    aggregators: dict[int, int] = field(default_factory=dict)  # group -> device; else lowest id
    group_deadline_s: float | None = None  # how long a group aggregator waits for its devices
    mode: str = "sync"  # sync | async (FedBuff)
    buffer_size: int = 4  # async: updates per aggregation
    concurrency: int = 0  # async: clients training at once; 0 = as many as a round selects
    max_staleness: int = 5  # async: updates older by more versions are rejected
    staleness_exponent: float = 0.5  # async: an update's change is scaled by (1 + s)^-a

    def __post_init__(self) -> None:
        def optional_positive(x: float | None) -> bool:
            return x is None or x > 0

        rules = {
            "rounds": (self.rounds >= 1, "an integer >= 1"),
            "clients_per_round": (
                self.clients_per_round is None or self.clients_per_round >= 1,
                "null or an integer >= 1",
            ),
            "fraction_per_round": (0 < self.fraction_per_round <= 1, "in (0, 1]"),
            "min_fit": (self.min_fit >= 1, "an integer >= 1"),
            "deadline_s": (optional_positive(self.deadline_s), "null or > 0"),
            "local_epochs": (self.local_epochs >= 1, "an integer >= 1"),
            "batch_size": (self.batch_size >= 1, "an integer >= 1"),
            "learning_rate": (
                self.learning_rate > 0 and math.isfinite(self.learning_rate),
                "finite and > 0",
            ),
            "eval_every": (self.eval_every >= 1, "an integer >= 1"),
            "max_update_norm": (optional_positive(self.max_update_norm), "null or > 0"),
            "aggregators": (
                all(
                    isinstance(g, int) and isinstance(d, int) and g >= 0 and d >= 0
                    for g, d in self.aggregators.items()
                ),
                "a map of group ids to device ids, all integers >= 0",
            ),
            "group_deadline_s": (optional_positive(self.group_deadline_s), "null or > 0"),
            "mode": (self.mode in MODES, f"one of {', '.join(MODES)}"),
            "buffer_size": (self.buffer_size >= 1, "an integer >= 1"),
            "concurrency": (self.concurrency >= 0, "an integer >= 0"),
            "max_staleness": (self.max_staleness >= 0, "an integer >= 0"),
            "staleness_exponent": (self.staleness_exponent >= 0, ">= 0"),
        }
        for name, (ok, rule) in rules.items():
            if not ok:
                raise ValueError(f"{name}: must be {rule}, got {getattr(self, name)!r}")
        if self.mode == "async" and self.hierarchical:
            raise ValueError("hierarchical: not available in async mode")

    def per_round(self, candidates: int) -> int:
        """How many of ``candidates`` clients a round selects."""
        if self.clients_per_round is not None:
            return min(candidates, self.clients_per_round)
        return max(1, math.ceil(self.fraction_per_round * candidates))
