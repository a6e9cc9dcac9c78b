"""FedYogi (Reddi et al., ICLR 2021): Yogi's additive, sign-controlled ``v``."""

from __future__ import annotations

import numpy as np

from fedsim.core.strategies.fedopt import FedOpt, check_beta


class FedYogi(FedOpt):
    """``v = v - (1 - beta2) * delta^2 * sign(v - delta^2)``.

    ``v`` moves by at most ``(1 - beta2) * delta^2`` a round, so the effective learning rate
    changes gradually where Adam's ``v`` can forget past moves fast (Zaheer et al., NeurIPS 2018).
    Defaults: ``eta = 0.01`` (Flower's), ``beta1 = 0.9``, ``beta2 = 0.99`` and ``tau = 1e-3``
    (the paper's; Flower uses 1e-3 here too).
    """

    name = "fedyogi"

    def __init__(
        self, *, eta: float = 0.01, beta1: float = 0.9, beta2: float = 0.99, tau: float = 1e-3
    ) -> None:
        super().__init__(eta=eta, beta1=beta1, tau=tau)
        self.beta2 = check_beta("beta2", beta2)

    def _second_moment(self, v: np.ndarray, delta_sq: np.ndarray) -> np.ndarray:
        return v - (1.0 - self.beta2) * delta_sq * np.sign(v - delta_sq)
