"""Aggregation strategies: closed forms, hand-computed cases, robustness, registry and configs."""

import dataclasses
import inspect
from pathlib import Path

import numpy as np
import pytest
import yaml

from fedsim.core.runtime import Update
from fedsim.core.strategies.aggregate import (
    delta_norm,
    krum_scores,
    pairwise_sq_distances,
    stacked,
    trimmed_mean,
)
from fedsim.core.strategies.clipping import Clipped, clip_update
from fedsim.core.strategies.fedadagrad import FedAdagrad
from fedsim.core.strategies.fedadam import FedAdam
from fedsim.core.strategies.fedavg import FedAvg
from fedsim.core.strategies.fedprox import FedProx
from fedsim.core.strategies.fedyogi import FedYogi
from fedsim.core.strategies.krum import Krum, MultiKrum
from fedsim.core.strategies.median import Median
from fedsim.core.strategies.registry import STRATEGIES, make_strategy, strategy_params
from fedsim.core.strategies.trimmed_mean import TrimmedMean

CONF = Path(__file__).resolve().parents[2] / "conf" / "strategy"


def upd(n=1, **arrays):
    params = {k: np.asarray(v, dtype=np.float32) for k, v in arrays.items()}
    return Update(
        num_examples=n, nbytes=4 * sum(a.size for a in params.values()), parameters=params
    )


def vec(values, n=1):
    return upd(n, w=values)


# FedProx


def test_fedprox_sends_mu_and_aggregates_as_fedavg():
    # Prepare
    updates = [vec([0.0, 2.0], n=1), vec([4.0, 6.0], n=3)]
    # Execute
    config = FedProx(proximal_mu=0.1).configure_fit(3)
    out = FedProx(proximal_mu=0.1).aggregate_fit(None, updates)
    # Assert
    assert config == {"proximal_mu": 0.1}
    np.testing.assert_array_equal(out["w"], FedAvg().aggregate_fit(None, updates)["w"])
    with pytest.raises(ValueError, match="proximal_mu"):
        FedProx(proximal_mu=-1.0)


# Adaptive federated optimisation


def test_fedadam_one_step_by_hand():
    # Prepare: (1 * [5, -6] + 3 * [1, -6]) / 4 = [2, -6], so delta = [1, -7] from [1, 1].
    # tau = 1 -> v0 = 1; beta2 = 0.5 -> v = 0.5 + 0.5 * delta^2 = [1, 25]; beta1 = 0.5 ->
    # m = [0.5, -3.5]; w = current + m / (sqrt(v) + 1) = [1 + 0.5/2, 1 - 3.5/6].
    current = {"w": np.array([1.0, 1.0], np.float32)}
    updates = [vec([5.0, -6.0], n=1), vec([1.0, -6.0], n=3)]
    adam = FedAdam(eta=1.0, beta1=0.5, beta2=0.5, tau=1.0)
    # Execute
    out = adam.aggregate_fit(current, updates)
    # Assert
    assert out["w"].dtype == np.float32
    np.testing.assert_allclose(out["w"], [1.25, 1.0 - 3.5 / 6.0], rtol=1e-6)


def test_fedadam_keeps_its_moments_across_rounds():
    # Prepare: the same delta [1, -7] twice. Round 2: m = 0.5 * [0.5, -3.5] + 0.5 * [1, -7]
    # = [0.75, -5.25]; v = 0.5 * [1, 25] + 0.5 * [1, 49] = [1, 37].
    adam = FedAdam(eta=1.0, beta1=0.5, beta2=0.5, tau=1.0)
    first = adam.aggregate_fit({"w": np.array([1.0, 1.0], np.float32)}, [vec([2.0, -6.0])])
    # Execute
    second = adam.aggregate_fit(first, [vec(first["w"] + np.array([1.0, -7.0]))])
    # Assert
    expected = first["w"] + np.array([0.75 / 2.0, -5.25 / (np.sqrt(37.0) + 1.0)])
    np.testing.assert_allclose(second["w"], expected, rtol=1e-6)


def test_fedyogi_one_step_by_hand():
    # Prepare: tau = 1 -> v0 = 1; delta = [4, 0.5]. Coordinate 0: v < delta^2 so v grows,
    # 1 + 0.5 * 16 = 9; coordinate 1: v > delta^2 so v shrinks, 1 - 0.5 * 0.25 = 0.875.
    current = {"w": np.zeros(2, np.float32)}
    yogi = FedYogi(eta=1.0, beta1=0.5, beta2=0.5, tau=1.0)
    # Execute
    out = yogi.aggregate_fit(current, [vec([4.0, 0.5])])
    # Assert
    np.testing.assert_allclose(out["w"], [2.0 / 4.0, 0.25 / (np.sqrt(0.875) + 1.0)], rtol=1e-6)


def test_fedadagrad_one_step_by_hand():
    # Prepare: beta1 = 0 -> m = delta = [4, -4]; tau = 3 -> v = 9 + 16 = 25; step 4 / (5 + 3).
    current = {"w": np.array([10.0, 10.0], np.float32)}
    adagrad = FedAdagrad(eta=1.0, beta1=0.0, tau=3.0)
    # Execute
    out = adagrad.aggregate_fit(current, [vec([14.0, 6.0])])
    # Assert
    np.testing.assert_allclose(out["w"], [10.5, 9.5], rtol=1e-6)


@pytest.mark.parametrize("cls", [FedAdam, FedYogi, FedAdagrad])
def test_fedopt_needs_the_current_model_and_sane_parameters(cls):
    with pytest.raises(ValueError, match="current"):
        cls().aggregate_fit(None, [vec([1.0])])
    with pytest.raises(ValueError, match="eta"):
        cls(eta=0.0)
    with pytest.raises(ValueError, match="tau"):
        cls(tau=0.0)
    with pytest.raises(ValueError, match="beta1"):
        cls(beta1=1.0)


def test_fedopt_rejects_a_model_that_changed_between_rounds():
    # Prepare
    adam = FedAdam()
    adam.aggregate_fit({"w": np.zeros(2, np.float32)}, [vec([1.0, 1.0])])
    # Execute / Assert
    with pytest.raises(ValueError, match="shape"):
        adam.aggregate_fit({"w": np.zeros(3, np.float32)}, [vec([1.0, 1.0, 1.0])])


# Median and trimmed mean


def test_median_of_one_two_hundred_is_two():
    # Prepare
    updates = [vec([1.0]), vec([2.0]), vec([100.0], n=1000)]
    # Execute
    out = Median().aggregate_fit(None, updates)
    # Assert: unweighted, so the big count of the outlier changes nothing.
    np.testing.assert_array_equal(out["w"], [2.0])


def test_median_of_an_even_count_is_the_middle_mean():
    out = Median().aggregate_fit(None, [vec([1.0]), vec([2.0]), vec([3.0]), vec([100.0])])
    np.testing.assert_array_equal(out["w"], [2.5])


def test_trimmed_mean_drops_one_extreme_at_each_end_per_coordinate():
    # Prepare: 10 clients; coordinate 0 has outliers -1000 and 1000, coordinate 1 is 1..10.
    values = [[-1000.0, 1.0], [1000.0, 2.0]] + [[float(i), float(i + 2)] for i in range(1, 9)]
    updates = [vec(v) for v in values]
    # Execute
    out = TrimmedMean(beta=0.1).aggregate_fit(None, updates)
    # Assert: coordinate 0 averages 1..8, coordinate 1 averages 2..9.
    np.testing.assert_allclose(out["w"], [4.5, 5.5])


def test_trimmed_mean_with_beta_zero_is_the_plain_mean():
    out = TrimmedMean(beta=0.0).aggregate_fit(None, [vec([1.0]), vec([2.0]), vec([6.0])])
    np.testing.assert_allclose(out["w"], [3.0])


def test_trimmed_mean_counts_the_trim_without_rounding_error():
    # Prepare: 0.29 * 100 is 28.999999999999996 in binary floating point; 29 must go.
    arrays = [{"w": np.array([float(i)])} for i in range(100)]
    # Execute
    out = trimmed_mean(arrays, beta=0.29)
    # Assert: 29..70 remain.
    np.testing.assert_allclose(out["w"], [49.5])
    with pytest.raises(ValueError, match="beta"):
        TrimmedMean(beta=0.5)


# Krum and Multi-Krum

SQUARE = [[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.5, 0.5]]


def test_krum_picks_the_honest_centre():
    # Prepare: four corners, their centre and one far Byzantine update; f = 1, n = 6.
    updates = [vec(p) for p in SQUARE] + [vec([100.0, 100.0], n=1000)]
    # Execute
    out = Krum(f=1).aggregate_fit(None, updates)
    # Assert
    np.testing.assert_array_equal(out["w"], [0.5, 0.5])
    assert out["w"].dtype == np.float32


def test_krum_scores_sum_the_nearest_neighbours():
    # Prepare: n - f - 2 = 3 neighbours. The centre is 0.5 from each corner: 1.5. A corner
    # is 0.5 from the centre and 1 from two other corners: 2.5.
    arrays = [{"w": np.array(p)} for p in SQUARE] + [{"w": np.array([100.0, 100.0])}]
    # Execute
    scores = krum_scores(arrays, f=1)
    # Assert
    np.testing.assert_allclose(scores[:5], [2.5, 2.5, 2.5, 2.5, 1.5])
    assert scores[5] > 1e4


def test_multikrum_averages_the_best_updates_unweighted():
    # Prepare: m = n - f = 5 keeps the honest square; its example counts differ, but the mean
    # is plain, so the result is the square's centre.
    updates = [vec(p, n=i + 1) for i, p in enumerate(SQUARE)] + [vec([100.0, 100.0])]
    # Execute
    out = MultiKrum(f=1).aggregate_fit(None, updates)
    # Assert
    np.testing.assert_allclose(out["w"], [0.5, 0.5])


def test_multikrum_with_m_one_is_krum():
    updates = [vec(p) for p in SQUARE] + [vec([100.0, 100.0])]
    out = MultiKrum(f=1, m=1).aggregate_fit(None, updates)
    np.testing.assert_array_equal(out["w"], Krum(f=1).aggregate_fit(None, updates)["w"])


def test_krum_refuses_too_few_updates():
    # Prepare: f = 2 needs 7 updates.
    updates = [vec(p) for p in SQUARE] + [vec([2.0, 2.0])]
    # Execute / Assert
    with pytest.raises(ValueError, match=r"n >= 2f \+ 3"):
        Krum(f=2).aggregate_fit(None, updates)
    with pytest.raises(ValueError, match=r"n >= 2f \+ 3"):
        MultiKrum(f=2).aggregate_fit(None, updates)
    with pytest.raises(ValueError, match="exceeds"):
        MultiKrum(f=0, m=7).aggregate_fit(None, updates)
    with pytest.raises(ValueError, match="f must"):
        Krum(f=-1)
    with pytest.raises(ValueError, match="m must"):
        MultiKrum(m=0)


def test_pairwise_distances_span_all_arrays():
    # Prepare: updates of two arrays each; distances must add over both.
    rng = np.random.default_rng(1)
    arrays = [{"a": rng.normal(size=(3, 2)) + 1e3, "b": rng.normal(size=4)} for _ in range(5)]
    flat = [np.concatenate([x["a"].ravel(), x["b"]]) for x in arrays]
    expected = np.array([[np.sum((p - q) ** 2) for q in flat] for p in flat])
    # Execute
    dist = pairwise_sq_distances(arrays)
    # Assert
    np.testing.assert_allclose(dist, expected, rtol=1e-9, atol=1e-9)


# Clipping


def test_clipping_scales_a_long_move_exactly_to_the_bound():
    # Prepare: the move from [1, 1] | [0] to [4, 5] | [0] is [3, 4] | [0], norm 5.
    current = {"a": np.array([1.0, 1.0], np.float32), "b": np.zeros(1, np.float32)}
    arrays = {"a": np.array([4.0, 5.0], np.float32), "b": np.zeros(1, np.float32)}
    # Execute
    out = clip_update(arrays, current, max_norm=2.5)
    # Assert
    np.testing.assert_allclose(out["a"], [2.5, 3.0])
    assert delta_norm(out, current) == pytest.approx(2.5, rel=1e-6)
    assert out["a"].dtype == np.float32


def test_clipping_leaves_a_short_move_alone():
    current = {"w": np.zeros(2, np.float32)}
    arrays = {"w": np.array([0.3, 0.4], np.float32)}
    out = clip_update(arrays, current, max_norm=0.5)
    np.testing.assert_array_equal(out["w"], arrays["w"])


def test_clipped_strategy_clips_before_the_inner_rule():
    # Prepare: one move of norm 10 clipped to 1, one of norm 0.5 kept; FedAvg weights 1:1.
    current = {"w": np.zeros(2, np.float32)}
    updates = [vec([6.0, 8.0]), vec([0.0, -0.5])]
    strategy = Clipped(inner=FedProx(proximal_mu=0.5), max_norm=1.0)
    # Execute
    out = strategy.aggregate_fit(current, updates)
    # Assert
    np.testing.assert_allclose(out["w"], [0.3, 0.15], rtol=1e-6)
    assert strategy.configure_fit(1) == {"proximal_mu": 0.5}
    assert strategy.streaming
    assert not Clipped(inner=Median(), max_norm=1.0).streaming
    with pytest.raises(ValueError, match="current"):
        strategy.aggregate_fit(None, updates)
    with pytest.raises(ValueError, match="max_norm"):
        Clipped(inner=FedAvg(), max_norm=0.0)


# Robustness


def test_robust_rules_resist_flipped_and_scaled_updates():
    # Prepare: 8 honest clients near the truth, 2 sending -10x the truth and claiming many
    # examples.
    rng = np.random.default_rng(42)
    truth = rng.normal(size=20)
    honest = [upd(50 + i, w=(truth + 0.01 * rng.normal(size=20)).reshape(4, 5)) for i in range(8)]
    byzantine = [upd(500, w=(-10.0 * truth).reshape(4, 5)) for _ in range(2)]
    updates = honest + byzantine
    robust = [Median(), TrimmedMean(beta=0.2), Krum(f=2), MultiKrum(f=2)]

    def error(strategy):
        out = strategy.aggregate_fit(None, updates)
        return float(np.linalg.norm(out["w"].ravel() - truth))

    # Execute
    errors = {s.name: error(s) for s in robust}
    fedavg_error = error(FedAvg())
    # Assert: the honest noise alone is about 0.01 * sqrt(20) = 0.045.
    assert all(e < 0.1 for e in errors.values()), errors
    assert fedavg_error > 5 * np.linalg.norm(truth)


# Every strategy, through the registry


def model(rng):
    return {
        "conv": rng.normal(size=(2, 3, 3)).astype(np.float32),
        "bias": rng.normal(size=3).astype(np.float32),
        "scale": np.ones((), np.float32),
    }


@pytest.mark.parametrize("clip_norm", [None, 0.5])
@pytest.mark.parametrize("name", STRATEGIES)
def test_every_strategy_returns_float32_arrays_of_the_reference_layout(name, clip_norm):
    # Prepare
    rng = np.random.default_rng(7)
    current = model(rng)
    updates = [
        Update(
            num_examples=10 + i,
            nbytes=0,
            parameters={k: v + 0.1 * rng.normal(size=v.shape) for k, v in current.items()},
        )
        for i in range(7)
    ]
    strategy = make_strategy(name, clip_norm=clip_norm)
    # Execute
    out = strategy.aggregate_fit(current, updates)
    # Assert
    assert out.keys() == current.keys()
    for k, v in current.items():
        assert out[k].shape == v.shape
        assert out[k].dtype == np.float32
        assert np.isfinite(out[k]).all()


@pytest.mark.parametrize("name", STRATEGIES)
def test_timing_only_rounds_aggregate_to_none(name):
    updates = [Update(num_examples=5, nbytes=100) for _ in range(5)]
    assert make_strategy(name, clip_norm=1.0).aggregate_fit(None, updates) is None
    with pytest.raises(ValueError):
        make_strategy(name).aggregate_fit(None, [])


def test_streaming_flags():
    streams = {name: make_strategy(name).streaming for name in STRATEGIES}
    assert streams == {
        "fedavg": True,
        "fedprox": True,
        "fedadam": True,
        "fedyogi": True,
        "fedadagrad": True,
        "median": False,
        "trimmed_mean": False,
        "krum": False,
        "multikrum": False,
    }


def test_make_strategy_passes_parameters_and_wraps_for_clipping():
    # Execute
    plain = make_strategy("fedadam", eta=0.05, tau=1e-4)
    clipped = make_strategy("multikrum", f=1, m=3, clip_norm=2.0)
    # Assert
    assert isinstance(plain, FedAdam)
    assert (plain.eta, plain.tau) == (0.05, 1e-4)
    assert isinstance(clipped, Clipped)
    assert clipped.name == "multikrum+clip"
    assert clipped.max_norm == 2.0
    assert (clipped.inner.f, clipped.inner.m) == (1, 3)


def test_make_strategy_names_what_it_does_not_know():
    with pytest.raises(ValueError, match=r"'fedsgd'.*known: fedavg, fedprox"):
        make_strategy("fedsgd")
    with pytest.raises(ValueError, match=r"eta for strategy 'fedavg'; known: clip_norm"):
        make_strategy("fedavg", eta=0.1)
    with pytest.raises(ValueError, match=r"beta2 .*known: eta, beta1, tau, clip_norm"):
        make_strategy("fedadagrad", beta2=0.9)


# Hydra configs


def test_each_strategy_has_a_config_with_its_defaults():
    # Prepare
    files = {p.stem: yaml.safe_load(p.read_text()) for p in CONF.glob("*.yaml")}
    # Assert
    assert sorted(files) == sorted(STRATEGIES)
    for stem, cfg in files.items():
        params = {k: v for k, v in cfg.items() if k != "name"}
        assert cfg["name"] == stem
        assert params.pop("clip_norm") is None
        assert set(params) | {"clip_norm"} == set(strategy_params(stem))
        strategy = make_strategy(cfg["name"], **params)
        defaults = inspect.signature(type(strategy).__init__).parameters
        assert {k: defaults[k].default for k in params} == params, stem


def test_stacking_rejects_mismatched_updates():
    with pytest.raises(ValueError, match="names"):
        stacked([{"a": np.zeros(2)}, {"b": np.zeros(2)}])
    with pytest.raises(ValueError, match="shape"):
        stacked([{"a": np.zeros(2)}, {"a": np.zeros(3)}])


def test_updates_are_not_modified():
    # Prepare
    current = {"w": np.zeros(2, np.float32)}
    update = vec([3.0, 4.0])
    before = dataclasses.replace(update, parameters=dict(update.parameters))
    # Execute
    make_strategy("fedadam", clip_norm=1.0).aggregate_fit(current, [update])
    # Assert
    np.testing.assert_array_equal(update.parameters["w"], before.parameters["w"])
    np.testing.assert_array_equal(current["w"], [0.0, 0.0])


def test_a_move_of_the_wrong_shape_is_an_error_not_a_broadcast():
    current = {"w": np.zeros(3, np.float32)}
    with pytest.raises(ValueError, match="shape"):
        FedAdam().aggregate_fit(current, [vec([1.0])])
    with pytest.raises(ValueError, match="shape"):
        clip_update({"w": np.ones(1, np.float32)}, current, max_norm=1.0)
