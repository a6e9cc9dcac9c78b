"""FedAdam (Reddi et al., ICLR 2021): Adam's exponential average of squares as ``v``."""

from __future__ import annotations

import numpy as np

from fedsim.core.strategies.fedopt import FedOpt, check_beta


class FedAdam(FedOpt):
    """``v = beta2 * v + (1 - beta2) * delta^2``.

    Defaults: ``eta = 0.1`` (Flower's), ``beta1 = 0.9`` and ``beta2 = 0.99`` (the paper's).
    ``tau = 1e-3``, inside the paper's tuned range, rather than Flower's 1e-9: with a tiny tau
    the first step moves every coordinate by about ``eta`` whatever the size of its delta (a
    sign step), so coordinates the clients barely touched jump as far as the ones they moved.
    """

    name = "fedadam"

    def __init__(
        self, *, eta: float = 0.1, beta1: float = 0.9, beta2: float = 0.99, tau: float = 1e-3
    ) -> None:
        super().__init__(eta=eta, beta1=beta1, tau=tau)
        self.beta2 = check_beta("beta2", beta2)

    def _second_moment(self, v: np.ndarray, delta_sq: np.ndarray) -> np.ndarray:
        return self.beta2 * v + (1.0 - self.beta2) * delta_sq
