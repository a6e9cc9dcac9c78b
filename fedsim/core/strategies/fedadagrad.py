"""FedAdagrad (Reddi et al., ICLR 2021): Adagrad's running sum of squares as ``v``."""

from __future__ import annotations

import numpy as np

from fedsim.core.strategies.fedopt import FedOpt


class FedAdagrad(FedOpt):
    """``v = v + delta^2``: the step shrinks as a coordinate keeps moving.

    Defaults: ``eta = 0.1`` (Flower's). ``beta1 = 0``, classic Adagrad without momentum, as
    Flower fixes it; the paper's Algorithm 2 allows momentum, so it is a parameter here.
    ``tau = 1e-3`` for the reason given in :class:`~fedsim.core.strategies.fedadam.FedAdam`.
    """

    name = "fedadagrad"

    def __init__(self, *, eta: float = 0.1, beta1: float = 0.0, tau: float = 1e-3) -> None:
        super().__init__(eta=eta, beta1=beta1, tau=tau)

    def _second_moment(self, v: np.ndarray, delta_sq: np.ndarray) -> np.ndarray:
        return v + delta_sq
