"""Adaptive server optimisers (Reddi et al., "Adaptive Federated Optimization", ICLR 2021).

The server treats the example-weighted mean of the clients' moves, ``delta = mean(w_i) -
current``, as a pseudo-gradient and steps with momentum ``m`` and a per-coordinate second
moment ``v`` (Algorithm 2 of the paper; no bias correction, as there):

    m = beta1 * m + (1 - beta1) * delta
    v = <variant-specific update of v with delta^2>
    w = current + eta * m / (sqrt(v) + tau)

The weighted mean of the full parameters is FedAvg's, taken in one pass over each update, so
these strategies stream as FedAvg does. ``m`` and ``v`` live in the strategy from round to round.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence

import numpy as np

from fedsim.core.runtime import NDArrays, Update
from fedsim.core.strategies.aggregate import updates_with_arrays, weighted_average
from fedsim.core.strategies.base import Strategy


def check_beta(name: str, value: float) -> float:
    """``value`` as a float, checked to be a decay rate in [0, 1)."""
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value}")
    return float(value)


class FedOpt(Strategy):
    """The shared server step; subclasses say how ``v`` absorbs ``delta^2``."""

    def __init__(self, *, eta: float, beta1: float, tau: float) -> None:
        if eta <= 0:
            raise ValueError(f"eta must be > 0, got {eta}")
        self.beta1 = check_beta("beta1", beta1)
        if tau <= 0:
            raise ValueError(f"tau must be > 0, got {tau}")
        self.eta = float(eta)
        self.tau = float(tau)
        # float64 state: v sums squares round after round, which float32 would round away.
        self._m: dict[str, np.ndarray] | None = None
        self._v: dict[str, np.ndarray] | None = None

    @abc.abstractmethod
    def _second_moment(self, v: np.ndarray, delta_sq: np.ndarray) -> np.ndarray:
        """The new ``v`` from the old one and the squared pseudo-gradient."""

    def aggregate_fit(self, current: NDArrays | None, updates: Sequence[Update]) -> NDArrays | None:
        with_arrays = updates_with_arrays(updates, self.name)
        if with_arrays is None:
            return None
        if current is None:
            raise ValueError(f"{self.name} needs the current parameters to form a pseudo-gradient")
        # float64: the pseudo-gradient is a small difference of large numbers.
        mean = weighted_average(
            ((arrays, float(u.num_examples)) for u, arrays in with_arrays), np.float64
        )
        if mean.keys() != current.keys():
            raise ValueError("update names differ from the current parameters'")
        for k, w in current.items():
            if mean[k].shape != np.shape(w):
                raise ValueError(f"{k}: shape {mean[k].shape} != {np.shape(w)} of the model")
        if self._m is None or self._v is None:
            self._m = {k: np.zeros(np.shape(w)) for k, w in current.items()}
            # Algorithm 2 starts v at tau^2 (its v_{-1} >= tau^2), not at 0 as Flower does.
            self._v = {k: np.full(np.shape(w), self.tau**2) for k, w in current.items()}
        elif {k: m.shape for k, m in self._m.items()} != {
            k: np.shape(w) for k, w in current.items()
        }:
            raise ValueError("the model's names or shapes changed between rounds")
        new: NDArrays = {}
        for k, w in current.items():
            w64 = np.asarray(w, dtype=np.float64)
            delta = mean[k] - w64
            self._m[k] = self.beta1 * self._m[k] + (1.0 - self.beta1) * delta
            self._v[k] = self._second_moment(self._v[k], delta * delta)
            step = self.eta * self._m[k] / (np.sqrt(self._v[k]) + self.tau)
            new[k] = (w64 + step).astype(np.float32)
        return new
