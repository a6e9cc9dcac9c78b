"""FedAvgM: FedAvg with server momentum (Hsu, Qi and Brown, arXiv:1909.06335, 2019).

The server treats the round's example-weighted mean of the client models as a step from the
current global model, ``delta = mean - current``, keeps a momentum buffer
``v = momentum * v + delta`` and moves ``current + server_lr * v``. With ``momentum: 0`` and
``server_lr: 1`` it is FedAvg.

``record``, when set, is a file to which each aggregation appends one JSON line (the round
as this instance counts them, the updates combined, their examples and the step's L2 norm):
a trace of what the strategy did, for inspection.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fedsim.core.runtime import NDArrays, Update
from fedsim.core.strategies.base import Strategy


class FedAvgM(Strategy):
    """FedAvg with a server momentum buffer; see the module's docstring."""

    name = "fedavgm"

    def __init__(
        self, *, server_lr: float = 1.0, momentum: float = 0.9, record: str | None = None
    ) -> None:
        if not server_lr > 0:
            raise ValueError(f"server_lr must be > 0, got {server_lr}")
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        self.server_lr = server_lr
        self.momentum = momentum
        self.record = None if record is None else Path(record)
        self._velocity: NDArrays = {}
        self._rounds = 0

    def configure_fit(self, rnd: int) -> Mapping[str, Any]:
        """Nothing beyond fedsim's own settings: the clients train as under FedAvg."""
        return {}

    def aggregate_fit(self, current: NDArrays | None, updates: Sequence[Update]) -> NDArrays | None:
        trained = [(u.parameters, u.num_examples) for u in updates if u.parameters is not None]
        if not trained:
            return None  # a timing-only workload: no arrays to combine
        total = float(sum(n for _, n in trained))
        mean: NDArrays = {}
        for arrays, n in trained:
            for name, values in arrays.items():
                weighted = (n / total) * values.astype(np.float64)
                mean[name] = weighted if name not in mean else mean[name] + weighted
        if current is None:  # no global model yet: the mean is the first one
            new = {k: np.asarray(v, dtype=np.float32) for k, v in mean.items()}
            step_norm = 0.0
        else:
            new, squares = {}, 0.0
            for name, average in mean.items():
                delta = average - current[name]
                velocity = self.momentum * self._velocity.get(name, 0.0) + delta
                self._velocity[name] = velocity
                step = self.server_lr * velocity
                squares += float(np.sum(step * step))
                new[name] = (current[name] + step).astype(current[name].dtype)
            step_norm = math.sqrt(squares)
        self._rounds += 1
        self._write_record(len(trained), int(total), step_norm)
        return new

    def _write_record(self, updates: int, examples: int, step_norm: float) -> None:
        if self.record is None:
            return
        line = {
            "round": self._rounds,
            "updates": updates,
            "examples": examples,
            "step_norm": step_norm,
        }
        # The first aggregation of an instance starts the file afresh.
        with self.record.open("w" if self._rounds == 1 else "a", encoding="utf-8") as f:
            f.write(json.dumps(line) + "\n")
