"""FedProx (Li et al., MLSys 2020): FedAvg's aggregation, plus a proximal term for clients."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fedsim.core.strategies.fedavg import FedAvg


class FedProx(FedAvg):
    """FedAvg on the server; clients add ``(mu / 2) * ||w - w_global||^2`` to their loss.

    The proximal term only changes local training, so all the server does differently is tell
    the clients ``proximal_mu``. ``mu = 0`` is FedAvg.
    """

    name = "fedprox"

    def __init__(self, *, proximal_mu: float = 0.01) -> None:
        if proximal_mu < 0:
            raise ValueError(f"proximal_mu must be >= 0, got {proximal_mu}")
        self.proximal_mu = float(proximal_mu)

    def configure_fit(self, rnd: int) -> Mapping[str, Any]:
        return {"proximal_mu": self.proximal_mu}
