import pytest

from fedsim.core.metrics import describe, time_saving_rate


def test_formula_1_on_the_papers_means():
    # Table II: t_ref 6.02 s, t_new 6.72 s -> (6.02 - 6.72) / 6.02 = -0.1163
    assert time_saving_rate([6.02], [6.72]) == pytest.approx(-0.11628, abs=1e-5)


def test_formula_1_averages_per_repetition_ratios():
    # (10-5)/10 = 0.5 and (4-6)/4 = -0.5: mean 0, while the ratio of means would be -1/14.
    assert time_saving_rate([10.0, 4.0], [5.0, 6.0]) == pytest.approx(0.0)


def test_formula_1_rejects_bad_input():
    with pytest.raises(ValueError):
        time_saving_rate([], [])
    with pytest.raises(ValueError):
        time_saving_rate([1.0, 2.0], [1.0])
    with pytest.raises(ValueError):
        time_saving_rate([0.0], [1.0])


def test_describe():
    d = describe([1.0, 2.0, 3.0])
    assert d == {"mean": 2.0, "std": 1.0, "min": 1.0, "max": 3.0}
    assert describe([5.0])["std"] == 0.0
