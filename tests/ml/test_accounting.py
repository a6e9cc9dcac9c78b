"""The RDP accountant (fedsim.ml.accounting) against published values.

TensorFlow Privacy's MNIST DP-SGD tutorial (tensorflow/privacy, tutorials/README.md, "Select
Parameters") reports epsilon at delta 1e-5 for 60,000 examples in batches of 256: noise 1.12
for 60 epochs gives 2.92, noise 0.6 for 30 epochs 9.74, noise 1.2 for 10 epochs 1.20. Those
figures convert RDP to (epsilon, delta) the classic way, epsilon = min over orders of
RDP(order) + log(1 / delta) / (order - 1) (Mironov 2017, Proposition 3); the accountant's own
epsilon uses a tighter conversion (Balle et al. 2020), so it is at most the published value.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedsim.ml.accounting import ORDERS, epsilon, epsilons, noise_for_epsilon

PUBLISHED = [(1.12, 60, 2.92), (0.6, 30, 9.74), (1.2, 10, 1.20)]


@pytest.mark.parametrize(("z", "epochs", "published"), PUBLISHED)
def test_rdp_matches_tensorflow_privacy_published_epsilons(z, epochs, published):
    from opacus.accountants.analysis import rdp

    # Prepare
    q, steps, delta = 256 / 60_000, int(epochs * 60_000 / 256), 1e-5
    # Execute
    total = np.asarray(rdp.compute_rdp(q=q, noise_multiplier=z, steps=steps, orders=list(ORDERS)))
    classic = float(np.min(total + math.log(1 / delta) / (np.asarray(ORDERS) - 1)))
    tight = epsilon(noise_multiplier=z, sample_rate=q, steps=steps, delta=delta)
    # Assert
    assert classic == pytest.approx(published, abs=0.015)
    assert tight <= classic


def test_epsilon_grows_with_rounds_and_shrinks_with_noise():
    # Execute
    by_round = epsilons(noise_multiplier=1.0, sample_rate=0.1, steps=[0, 1, 5, 5, 20], delta=1e-5)
    louder = epsilon(noise_multiplier=2.0, sample_rate=0.1, steps=20, delta=1e-5)
    # Assert
    assert by_round[0] == 0.0
    assert by_round[1] < by_round[2] == by_round[3] < by_round[4]
    assert louder < by_round[4]


def test_noise_for_a_budget_meets_it_closely():
    # Execute
    z = noise_for_epsilon(target_epsilon=8.0, sample_rate=0.2, steps=30, delta=1e-5)
    spent = epsilon(noise_multiplier=z, sample_rate=0.2, steps=30, delta=1e-5)
    # Assert: within the bisection's 0.01 below the target
    assert 7.9 <= spent <= 8.0
