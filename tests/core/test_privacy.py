"""Client-level DP (fedsim.core.privacy): clipping, the noise's scale and its reproducibility."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedsim.core.privacy import (
    LOCAL_CLIP_KEY,
    LOCAL_NOISE_KEY,
    CentralDP,
    LocalDP,
    PrivacyConfig,
    local_dp_settings,
    local_participations,
    privatize,
)
from fedsim.core.runtime import Update
from fedsim.core.strategies.fedavg import FedAvg

SIZE = 200_000  # values per array: the sample std is within ~0.3 % of the true one


def model(value: float = 0.0) -> dict[str, np.ndarray]:
    return {
        "w": np.full(SIZE, value, dtype=np.float32),
        "steps": np.array([7], dtype=np.int64),
    }


def update(arrays: dict[str, np.ndarray], examples: int = 10) -> Update:
    return Update(num_examples=examples, nbytes=4 * SIZE, parameters=arrays)


def central(z: float, clip: float, m: int, seed: int = 0) -> CentralDP:
    return CentralDP(
        inner=FedAvg(), clip_norm=clip, noise_multiplier=z, expected_clients=m, seed=seed
    )


@pytest.mark.parametrize(("z", "clip", "m"), [(1.0, 1.0, 4), (0.5, 2.0, 10), (3.0, 0.1, 1)])
def test_central_noise_has_the_configured_std(z, clip, m):
    # Prepare: every client sends the model back unchanged, so all that moves it is the noise
    current = model()
    strategy = central(z, clip, m)
    # Execute
    out = strategy.aggregate_fit(current, [update(model()) for _ in range(m)])
    # Assert
    assert out is not None
    noise = out["w"].astype(np.float64)
    assert abs(noise.mean()) < 5 * z * clip / m / math.sqrt(SIZE)
    assert noise.std() == pytest.approx(z * clip / m, rel=0.01)
    assert strategy.releases == 1


def test_central_divides_by_the_expected_clients_even_when_fewer_arrive():
    # Prepare: one update of 5 expected, with a move far past the clip norm and almost no noise
    current = model()
    strategy = central(1e-9, 1.0, 5)
    moved = {"w": np.full(SIZE, 1.0, dtype=np.float32), "steps": np.array([9])}
    # Execute
    out = strategy.aggregate_fit(current, [update(moved)])
    # Assert: the move is clipped to norm 1, then divided by 5 (not by the 1 that arrived)
    assert out is not None
    assert float(np.linalg.norm(out["w"].astype(np.float64))) == pytest.approx(0.2, rel=1e-4)
    assert out["steps"].tolist() == [7]  # integer counters are the reference's, never noised


def test_central_noise_is_reproducible_and_fresh_each_round():
    # Prepare
    current = model()
    a, b = central(1.0, 1.0, 2, seed=3), central(1.0, 1.0, 2, seed=3)
    ups = [update(model()), update(model())]
    # Execute
    first_a, first_b = a.aggregate_fit(current, ups), b.aggregate_fit(current, ups)
    second_a = a.aggregate_fit(current, ups)
    # Assert
    assert first_a is not None and first_b is not None and second_a is not None
    np.testing.assert_array_equal(first_a["w"], first_b["w"])
    assert not np.array_equal(first_a["w"], second_a["w"])


def test_central_passes_timing_only_updates_through():
    # Prepare: modelled training sends no arrays
    strategy = central(1.0, 1.0, 2)
    # Execute
    out = strategy.aggregate_fit(None, [Update(num_examples=1, nbytes=8)])
    # Assert
    assert out is None and strategy.releases == 0


def test_local_privatize_clips_then_adds_noise_of_z_times_clip():
    # Prepare: a move of norm 2 * sqrt(SIZE), clipped to 0.5
    reference = model()
    moved = {"w": np.full(SIZE, 2.0, dtype=np.float32), "steps": np.array([8])}
    # Execute
    quiet = privatize(
        moved, reference, clip_norm=0.5, noise_multiplier=1e-9, rng=np.random.default_rng(0)
    )
    noisy = privatize(
        reference, reference, clip_norm=0.5, noise_multiplier=2.0, rng=np.random.default_rng(0)
    )
    # Assert
    assert float(np.linalg.norm(quiet["w"].astype(np.float64))) == pytest.approx(0.5, rel=1e-4)
    assert noisy["w"].astype(np.float64).std() == pytest.approx(1.0, rel=0.01)
    assert quiet["w"].dtype == np.float32 and quiet["steps"].tolist() == [7]


def test_local_dp_asks_every_client_and_the_trainer_reads_it():
    # Prepare
    strategy = LocalDP(inner=FedAvg(), clip_norm=0.3, noise_multiplier=1.5)
    # Execute
    config = strategy.configure_fit(1)
    # Assert
    assert config[LOCAL_CLIP_KEY] == 0.3 and config[LOCAL_NOISE_KEY] == 1.5
    assert local_dp_settings(config) == (0.3, 1.5)
    assert local_dp_settings({}) is None
    with pytest.raises(ValueError, match="finite and > 0"):
        local_dp_settings({LOCAL_CLIP_KEY: 0.0, LOCAL_NOISE_KEY: 1.0})


def test_local_participations_counts_the_most_exposed_client():
    assert local_participations([(1, 2), (2, 3), (3,), (1,)]) == [1, 2, 2, 2]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"kind": "global"}, "kind: 'global' is not one of central, local"),
        ({"kind": "central", "clip_norm": 0.0}, "clip_norm: must be finite and > 0"),
        ({"kind": "central", "delta": 1.0}, "delta: must be in"),
        ({"kind": "local", "noise_multiplier": math.nan}, "noise_multiplier: must be finite"),
        ({"kind": "central", "noise_multiplier": None}, "null needs a target_epsilon"),
    ],
)
def test_bad_privacy_settings_are_refused_with_the_field_named(fields, message):
    with pytest.raises(ValueError, match=message):
        PrivacyConfig(**fields)


def test_noise_does_not_depend_on_the_order_of_the_names():
    # Prepare: the same model with its arrays listed in two orders (a file read back sorts them)
    a = {"b": np.zeros(100, np.float32), "a": np.zeros(50, np.float32)}
    b = {"a": a["a"].copy(), "b": a["b"].copy()}
    # Execute
    out_a = privatize(a, a, clip_norm=1.0, noise_multiplier=1.0, rng=np.random.default_rng(1))
    out_b = privatize(b, b, clip_norm=1.0, noise_multiplier=1.0, rng=np.random.default_rng(1))
    # Assert
    for k in a:
        np.testing.assert_array_equal(out_a[k], out_b[k])


def test_the_simulator_charges_central_dp_its_clipping_and_noise():
    from fedsim.core.privacy import NOISE_PASSES
    from fedsim.core.rounds.base import aggregation_cost
    from fedsim.core.strategies.clipping import CLIP_PASSES

    # Execute
    plain = aggregation_cost(FedAvg(), 10, 1000, 4000)
    private = aggregation_cost(central(1.0, 1.0, 10), 10, 1000, 4000)
    local = aggregation_cost(
        LocalDP(inner=FedAvg(), clip_norm=1.0, noise_multiplier=1.0), 10, 1000, 4000
    )
    # Assert: per update, a clip and an add; once, the noise and FedAvg over the one mean
    assert plain.flops == 2.0 * 10 * 1000
    assert private.flops == 2.0 * ((CLIP_PASSES + 1) * 10 + NOISE_PASSES + 1) * 1000
    assert private.memory_bytes == plain.memory_bytes
    assert local.flops == plain.flops  # local DP's noise is drawn on the clients


def test_the_simulator_charges_local_dp_on_each_client_after_training():
    from fedsim.core.privacy import NOISE_PASSES
    from fedsim.core.strategies.clipping import CLIP_PASSES, Clipped

    # Prepare
    local = LocalDP(
        inner=Clipped(inner=FedAvg(), max_norm=1.0), clip_norm=1.0, noise_multiplier=1.0
    )
    # Execute / Assert: each client clips and draws a value of noise per model value; the
    # server-side rules add nothing on the clients
    assert local.client_passes() == CLIP_PASSES + NOISE_PASSES
    assert FedAvg().client_passes() == 0.0 and central(1.0, 1.0, 3).client_passes() == 0.0
