"""The step model and its fit: known parameters come back from synthetic timings."""

import math

import numpy as np
import pytest

from fedsim.core.calibration import StepModel, fit_step_model

# Figures of the order `fedsim calibrate` measures for the digits CNN on one CPU core.
TRUE = StepModel(overhead_s=1.2e-3, per_sample_s=2.0e-5)
SIZES = [8, 16, 32, 64]


def test_exact_timings_give_back_the_parameters_and_no_residual():
    # Prepare
    times = [TRUE.seconds(b) for b in SIZES]

    # Execute
    fit = fit_step_model(SIZES, times)

    # Assert
    assert fit.model.overhead_s == pytest.approx(TRUE.overhead_s, rel=1e-9)
    assert fit.model.per_sample_s == pytest.approx(TRUE.per_sample_s, rel=1e-9)
    assert fit.residual_s == pytest.approx(0.0, abs=1e-12)
    assert fit.relative_residual == pytest.approx(0.0, abs=1e-9)
    assert fit.batch_sizes == (8, 16, 32, 64)
    assert fit.timings == 4


def test_noisy_timings_give_back_the_parameters_within_four_standard_errors():
    # Prepare: five repeats per size, additive Gaussian noise of 50 us (a few % of a step).
    sigma, repeats = 5e-5, 5
    sizes = np.repeat(SIZES, repeats).astype(float)
    rng = np.random.default_rng(12)
    times = TRUE.overhead_s + TRUE.per_sample_s * sizes + rng.normal(0.0, sigma, sizes.size)
    # The tolerance: ordinary least squares' standard errors for this design and noise,
    # se(slope) = sigma / sqrt(Sxx), se(intercept) = sigma * sqrt(1/N + mean^2 / Sxx). Four of
    # them is far outside what noise explains (p < 1e-4), and still tight: the slope's is ~2 %
    # of the true value, so a fit that confused the two terms would fail.
    sxx = float(((sizes - sizes.mean()) ** 2).sum())
    se_slope = sigma / math.sqrt(sxx)
    se_intercept = sigma * math.sqrt(1 / sizes.size + sizes.mean() ** 2 / sxx)

    # Execute
    fit = fit_step_model(sizes.astype(int).tolist(), times.tolist())

    # Assert
    assert abs(fit.model.per_sample_s - TRUE.per_sample_s) <= 4 * se_slope
    assert abs(fit.model.overhead_s - TRUE.overhead_s) <= 4 * se_intercept
    # The reported residual estimates the noise: with 20 timings its spread is ~16 % of sigma.
    assert fit.residual_s == pytest.approx(sigma, rel=0.4)
    # Relative to the step's own time, it lies between the residual over the slowest and over
    # the fastest step.
    assert fit.residual_s / times.max() <= fit.relative_residual <= fit.residual_s / times.min()


def test_a_fit_never_reports_a_negative_overhead():
    # Prepare: timings whose unconstrained line crosses zero below the smallest batch.
    sizes = [10, 20, 40]
    times = [0.9e-3, 2.0e-3, 4.0e-3]

    # Execute
    fit = fit_step_model(sizes, times)

    # Assert: the best line through the origin, sum(n t) / sum(n^2).
    assert fit.model.overhead_s == 0.0
    expected = sum(n * t for n, t in zip(sizes, times, strict=True)) / sum(n * n for n in sizes)
    assert fit.model.per_sample_s == pytest.approx(expected)


def test_an_epoch_charges_each_batch_its_overhead_and_each_sample_its_cost():
    # Prepare: 100 samples in batches of 32 are four steps, the last of 4 samples.
    step = StepModel(overhead_s=0.01, per_sample_s=0.001)

    # Execute / Assert
    assert step.epoch_seconds(100, 32) == pytest.approx(4 * 0.01 + 100 * 0.001)
    assert step.epoch_seconds(0, 32) == 0.0


@pytest.mark.parametrize(
    ("sizes", "times", "message"),
    [
        ([8, 16], [0.1, 0.2], r"3 distinct batch sizes, got \[8, 16\]"),
        ([8, 8, 16, 16], [0.1, 0.1, 0.2, 0.2], "3 distinct batch sizes"),
        ([8, 16, 32], [0.1, -0.2, 0.3], r"finite and >= 0 seconds, got \[-0.2\]"),
        ([8, 16, 32], [0.1, float("nan"), 0.3], "finite and >= 0 seconds"),
        ([0, 16, 32], [0.1, 0.2, 0.3], r"integers >= 1, got \[0\]"),
        ([8, 16, 32], [0.1, 0.2], "differ in length: 3 != 2"),
        ([], [], "3 distinct batch sizes, got none"),
    ],
)
def test_bad_timings_are_refused_with_what_is_wrong(sizes, times, message):
    # Execute / Assert
    with pytest.raises(ValueError, match=message):
        fit_step_model(sizes, times)


def test_a_step_model_refuses_negative_figures():
    # Execute / Assert
    with pytest.raises(ValueError, match="overhead_s: must be finite and >= 0, got -1"):
        StepModel(overhead_s=-1.0, per_sample_s=0.0)
    with pytest.raises(ValueError, match="batch_size >= 1"):
        StepModel(overhead_s=0.0, per_sample_s=1.0).epoch_seconds(10, 0)
