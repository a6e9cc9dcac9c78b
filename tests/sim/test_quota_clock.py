"""A device's processor under a CFS quota (``QuotaClock``): times derived by hand."""

import pytest

from fedsim.core.topology import CpuQuota, TopologyError
from fedsim.sim.compute import QuotaClock

# A tenth of a core in 100 ms periods: 10 ms of processor a period.
TENTH = CpuQuota(cores=0.1, period_s=0.1)


def test_a_burst_within_the_periods_quota_runs_at_a_whole_cores_speed():
    # Prepare
    clock = QuotaClock(TENTH)

    # Execute
    end = clock.run(0.0, 0.005)

    # Assert: 5 ms of work in 5 ms, not the 50 ms its average speed would take.
    assert end == pytest.approx(0.005)


def test_a_burst_beyond_the_quota_waits_for_the_next_periods():
    # Prepare
    clock = QuotaClock(TENTH)

    # Execute: 25 ms of work from the start of a period.
    end = clock.run(0.0, 0.025)

    # Assert: 10 ms, throttled to 100 ms, 10 ms, throttled to 200 ms, the last 5 ms.
    assert end == pytest.approx(0.205)


def test_quota_used_earlier_in_the_period_is_gone_for_the_next_burst():
    # Prepare: 8 ms of the period's 10 ms used by a first burst.
    clock = QuotaClock(TENTH)
    clock.run(0.0, 0.008)

    # Execute: 5 ms more at 50 ms.
    end = clock.run(0.05, 0.005)

    # Assert: 2 ms run, then the wait for the period at 100 ms, then the other 3 ms.
    assert end == pytest.approx(0.103)


def test_a_period_boundary_refills_the_quota_before_it_is_spent():
    # Prepare: half a core (50 ms a period).
    clock = QuotaClock(CpuQuota(cores=0.5, period_s=0.1))

    # Execute: 30 ms of work from 90 ms on.
    end = clock.run(0.09, 0.03)

    # Assert: 10 ms to the boundary, a fresh quota, 20 ms more: never throttled.
    assert end == pytest.approx(0.12)


def test_bursts_asked_for_at_once_run_one_after_the_other():
    # Prepare
    clock = QuotaClock(TENTH)

    # Execute: two 10 ms bursts, both asked for at time 0.
    first, second = clock.run(0.0, 0.01), clock.run(0.0, 0.01)

    # Assert: the first spends the period's quota; the second runs in the next period.
    assert (first, second) == pytest.approx((0.01, 0.11))


def test_long_work_runs_at_the_quotas_average_speed_and_a_core_at_most():
    # Prepare: a quarter of a core, and a quota larger than a period (one thread uses one core).
    quarter = QuotaClock(CpuQuota(cores=0.25, period_s=0.1))
    whole = QuotaClock(CpuQuota(cores=2.0, period_s=0.1))

    # Execute
    slow = quarter.run(0.0, 10.0)
    fast = whole.run(0.0, 0.35)

    # Assert: 400 periods of 25 ms, the last one ending 25 ms into it; a whole core as is.
    assert slow == pytest.approx(399 * 0.1 + 0.025)
    assert fast == pytest.approx(0.35)


def test_a_quota_must_be_positive_and_finite():
    with pytest.raises(TopologyError, match="cores"):
        CpuQuota(cores=0.0, period_s=0.1)
    with pytest.raises(TopologyError, match="period_s"):
        CpuQuota(cores=0.5, period_s=float("inf"))
    with pytest.raises(ValueError, match="work"):
        QuotaClock(TENTH).run(0.0, -1.0)


def test_step_by_step_the_clock_says_how_much_may_run_and_when_the_quota_returns():
    # Prepare
    clock = QuotaClock(TENTH)

    # Execute: 6 ms run at 20 ms, then the rest of the period's quota asked for at 30 ms.
    clock.spend(0.02, 0.006)
    left = clock.room(0.03)
    clock.spend(0.03, left)

    # Assert: 4 ms were left; then none until the period at 100 ms, which has all 10 ms, and
    # near its end only what remains of it.
    assert left == pytest.approx(0.004)
    assert clock.room(0.05) == 0.0 and clock.next_period(0.05) == pytest.approx(0.1)
    assert clock.room(0.1) == pytest.approx(0.01)
    assert clock.room(0.197) == pytest.approx(0.003)
