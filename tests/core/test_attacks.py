"""Byzantine clients: their choice, what each attack does to an update, the transport that
applies them, and the settings' checks."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from topologies import star

from fedsim.core.attacks import (
    ATTACKS,
    AttackConfig,
    ByzantineTransport,
    attackers,
    flip_labels,
    tamper,
)
from fedsim.core.runtime import FitIns, ModelRef, Task, Update
from fedsim.sim.runtime import SimTransport

REF = {"w": np.array([1.0, 2.0], np.float32)}
TRAINED = {"w": np.array([1.5, 1.0], np.float32)}  # the honest move: (+0.5, -1.0)


def honest() -> Update:
    return Update(num_examples=100, nbytes=8, parameters=dict(TRAINED), metrics={"loss": 0.4})


@pytest.mark.parametrize(
    ("kind", "scale", "expected"),
    [
        ("sign_flip", 4.0, [1.0 - 4 * 0.5, 2.0 + 4 * 1.0]),
        ("scale", 10.0, [1.0 + 10 * 0.5, 2.0 - 10 * 1.0]),
        ("label_flip", None, [1.5, 1.0]),  # the poison is in its data, not here
    ],
)
def test_move_attacks_change_the_move_from_the_model_sent(kind, scale, expected):
    # Prepare
    attack = AttackConfig(kind=kind, scale=scale)
    # Execute
    got = tamper(attack, honest(), REF, asked=100, seed=0)
    # Assert
    np.testing.assert_allclose(got.parameters["w"], expected)
    assert got.parameters["w"].dtype == np.float32
    assert got.num_examples == 100


def test_gaussian_sends_the_model_plus_seeded_noise_of_the_scale_given():
    # Prepare
    attack = AttackConfig(kind="gaussian", scale=2.0)
    ref = {"w": np.zeros(20_000, np.float32)}
    update = Update(num_examples=5, nbytes=8, parameters={"w": np.ones(20_000, np.float32)})
    # Execute
    a = tamper(attack, update, ref, asked=5, seed=7)
    b = tamper(attack, update, ref, asked=5, seed=7)
    c = tamper(attack, update, ref, asked=5, seed=8)
    # Assert: nothing of the training is left; the noise is the seed's.
    assert abs(float(a.parameters["w"].mean())) < 0.05
    assert float(a.parameters["w"].std()) == pytest.approx(2.0, rel=0.03)
    np.testing.assert_array_equal(a.parameters["w"], b.parameters["w"])
    assert not np.array_equal(a.parameters["w"], c.parameters["w"])


def test_count_inflation_claims_scale_times_the_examples_asked_for():
    # Prepare
    attack = AttackConfig(kind="count_inflation")  # default scale 1000
    # Execute
    got = tamper(attack, honest(), REF, asked=650, seed=0)
    # Assert
    assert got.num_examples == 650_000
    np.testing.assert_array_equal(got.parameters["w"], TRAINED["w"])


def test_a_timing_only_update_has_no_numbers_to_tamper_with():
    update = Update(num_examples=10, nbytes=1000)
    assert tamper(AttackConfig(kind="sign_flip"), update, None, asked=10, seed=0) == update


def test_attackers_are_the_fraction_of_the_clients_drawn_under_the_seed():
    # Prepare
    clients = list(range(1, 21))
    # Execute
    first = attackers(clients, AttackConfig(kind="scale", fraction=0.2, seed=3))
    again = attackers(list(reversed(clients)), AttackConfig(kind="scale", fraction=0.2, seed=3))
    other = attackers(clients, AttackConfig(kind="scale", fraction=0.2, seed=4))
    # Assert
    assert len(first) == 4 and set(first) <= set(clients) and first == tuple(sorted(first))
    assert again == first  # the order clients are listed in does not matter
    assert other != first
    assert len(attackers(clients, AttackConfig(kind="scale", fraction=0.29))) == 5


def test_a_fraction_that_selects_no_client_is_an_error():
    with pytest.raises(ValueError, match=r"attack.fraction: 0.1 of 3 clients selects none"):
        attackers([1, 2, 3], AttackConfig(kind="scale", fraction=0.1))


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"kind": "flip"}, "attack.kind: 'flip' is not one of sign_flip, scale, gaussian"),
        ({"kind": "scale", "fraction": 0.0}, r"attack.fraction: must be in \(0, 1\), got 0.0"),
        ({"kind": "scale", "fraction": 1.0}, r"attack.fraction: must be in \(0, 1\)"),
        ({"kind": "scale", "scale": float("nan")}, "attack.scale: must be finite and > 0"),
        ({"kind": "scale", "scale": -1.0}, "attack.scale: must be finite and > 0"),
        ({"kind": "scale", "seed": -1}, "attack.seed: must be >= 0, got -1"),
    ],
)
def test_bad_settings_name_the_field(settings, message):
    with pytest.raises(ValueError, match=message):
        AttackConfig(**settings)


def test_every_attack_has_a_default_strength_and_none_means_no_attack():
    assert all(AttackConfig(kind=k).strength > 0 for k in ATTACKS)
    assert AttackConfig().kind is None


def test_flip_labels_teaches_the_opposite_class():
    np.testing.assert_array_equal(flip_labels(np.array([0, 3, 9]), 10), [9, 6, 0])
    with pytest.raises(ValueError, match=r"labels must be in \[0, 10\)"):
        flip_labels(np.array([0, 10]), 10)


def test_the_transport_tampers_with_the_attackers_fit_results_only():
    # Prepare: devices 1..3 train; 2 attacks with sign_flip; the trainer moves w to its target.
    def trainer(dev, ins):
        return {"w": ins.parameters["w"] + np.float32(dev)}, {"loss": 0.1}

    inner = SimTransport(star(3), seed=0, trainer=trainer)
    byz = ByzantineTransport(inner=inner, attack=AttackConfig(kind="sign_flip"), attackers=[2])
    params = {"w": np.zeros(2, np.float32)}
    model = ModelRef(name="m", version=0, nbytes=8)

    def fit(dev: int) -> Task:
        ins = FitIns(model=model, samples=10, epochs=2, batch_size=5, flops=1e6, update_nbytes=8)
        return Task(id=f"t{dev}", device=dev, ins=replace(ins, parameters=params))

    # Execute
    results = {r.device: r for r in byz.run([fit(d) for d in (1, 2, 3)])}
    # Assert
    np.testing.assert_array_equal(results[1].update.parameters["w"], [1.0, 1.0])
    np.testing.assert_array_equal(results[2].update.parameters["w"], [-8.0, -8.0])  # -4 x 2
    np.testing.assert_array_equal(results[3].update.parameters["w"], [3.0, 3.0])
    assert byz.sent == 1
    assert byz.events is inner.events and byz.now() == inner.now()
