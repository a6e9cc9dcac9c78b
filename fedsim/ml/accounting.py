"""Privacy accounting for client-level DP (:mod:`fedsim.core.privacy`) with Opacus's RDP accountant.

A round of central DP-FedAvg is one step of the sampled Gaussian mechanism, at sampling rate
``clients per round / clients``; Rényi-DP (Mironov, CSF 2017; Mironov, Talwar and Zhang 2019
for the sampled mechanism) composes the rounds, and Opacus converts the total to (epsilon,
delta) with the tighter conversion of Balle et al. (AISTATS 2020). Local DP is the same with a
sampling rate of 1, over the rounds a client took part in.

Opacus is the accountant PyTorch's own DP-SGD library ships (``opacus.accountants``); it is
imported on first use, as it imports torch.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

# Opacus's default orders for RDPAccountant (fine steps near 1, then integers up to 63), and
# larger ones for the strongly private runs (large noise, few steps) whose best order is higher.
ORDERS: tuple[float, ...] = (
    *(1 + x / 10.0 for x in range(1, 100)),
    *map(float, range(12, 64)),
    *map(float, (80, 96, 128, 192, 256, 384, 512, 1024)),
)


def epsilon(*, noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> float:
    """Epsilon at ``delta`` after ``steps`` sampled Gaussian steps (0 steps: 0)."""
    if steps <= 0:
        return 0.0
    from opacus.accountants.analysis import rdp

    total = rdp.compute_rdp(
        q=sample_rate, noise_multiplier=noise_multiplier, steps=steps, orders=list(ORDERS)
    )
    eps, _ = rdp.get_privacy_spent(orders=list(ORDERS), rdp=total, delta=delta)
    return float(eps)


def epsilons(
    *, noise_multiplier: float, sample_rate: float, steps: Sequence[int], delta: float
) -> list[float]:
    """:func:`epsilon` after each count of ``steps`` (e.g. releases so far, round by round)."""
    cache: dict[int, float] = {}
    out = []
    for n in steps:
        if n not in cache:
            cache[n] = epsilon(
                noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=n, delta=delta
            )
        out.append(cache[n])
    return out


def noise_for_epsilon(
    *, target_epsilon: float, sample_rate: float, steps: int, delta: float
) -> float:
    """The smallest noise multiplier whose epsilon after ``steps`` is at most the target
    (Opacus's ``get_noise_multiplier``, a bisection to within 0.01 of epsilon)."""
    from opacus.accountants.utils import get_noise_multiplier

    with warnings.catch_warnings():
        # The bisection tries large noise levels whose best order is past the largest; that
        # only loosens the bound for levels it then rejects.
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
        return float(
            get_noise_multiplier(
                target_epsilon=target_epsilon,
                target_delta=delta,
                sample_rate=sample_rate,
                steps=steps,
                accountant="rdp",
                alphas=list(ORDERS),
            )
        )
