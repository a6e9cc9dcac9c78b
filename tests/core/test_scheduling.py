"""Selection policies, reliability scores, work balancing and the static resource view."""

from __future__ import annotations

import numpy as np
import pytest

from fedsim.core.balance import balance_work
from fedsim.core.scheduling import (
    DeviceView,
    Reliability,
    StaticResourceView,
    estimated_round_time,
)
from fedsim.core.selection import (
    AllSelection,
    OortSelection,
    RandomSelection,
    ResourceAware,
)


def view(id, **fields):
    """A device that trains 10 samples/s over a 1 MB/s link unless told otherwise."""
    defaults = {"group": 0, "throughput": 10.0, "bandwidth": 1e6}
    return DeviceView(id=id, **{**defaults, **fields})


def rng(seed=0):
    return np.random.default_rng(seed)


# --- estimated round time and the static view ------------------------------------------------


def test_round_time_adds_compute_and_both_transfers():
    # Prepare: 100 samples at 10/s, 1 MB down and 1 MB up at 1 MB/s.
    v = view(1)
    # Execute
    t = estimated_round_time(v, 100, 1e6)
    # Assert
    assert t == pytest.approx(10 + 2)


def test_round_time_is_infinite_without_throughput_for_work():
    assert estimated_round_time(view(1, throughput=0.0), 5, 0) == float("inf")
    assert estimated_round_time(view(1, throughput=0.0), 0, 0) == 0.0


def test_static_view_updates_return_new_frozen_views():
    # Prepare
    res = StaticResourceView(views=[view(1), view(2)])
    before = res.snapshot([1])[1]
    # Execute
    after = res.update(1, online=False, cpu_busy=0.5)
    # Assert
    assert res.snapshot([1, 2]) == {1: after, 2: view(2)}
    assert (after.online, after.cpu_busy, before.online) == (False, 0.5, True)
    assert res.devices == [1, 2]


# --- selection policies ----------------------------------------------------------------------


def test_all_selection_returns_every_online_device_whatever_k():
    views = [view(3), view(1, online=False), view(2)]
    assert AllSelection().select(views, 1, rnd=1, rng=rng()) == [2, 3]


def test_random_selection_is_reproducible_under_a_seed_and_varies_with_it():
    # Prepare: 20 online devices and one offline device.
    views = [view(i) for i in range(20)] + [view(99, online=False)]
    policy = RandomSelection()
    # Execute
    a = policy.select(views, 5, rnd=1, rng=rng(1))
    b = policy.select(views, 5, rnd=1, rng=rng(1))
    draws = {tuple(policy.select(views, 5, rnd=1, rng=rng(s))) for s in range(2, 8)}
    # Assert
    assert a == b == sorted(a) and len(set(a)) == 5
    assert 99 not in a
    assert len(draws) > 1


def test_random_selection_takes_all_when_k_exceeds_online():
    views = [view(1), view(2, online=False), view(3)]
    assert RandomSelection().select(views, 10, rnd=1, rng=rng()) == [1, 3]


def test_resource_aware_skips_offline_overloaded_short_and_unreliable_devices():
    # Prepare: only device 5 passes every filter.
    views = [
        view(1, online=False),
        view(2, cpu_busy=0.95),
        view(3, memory_available=1e8),
        view(4, reliability=0.4),
        view(5),
    ]
    policy = ResourceAware(max_cpu_busy=0.9, min_memory=1e9, min_reliability=0.5)
    # Execute
    chosen = policy.select(views, 5, rnd=1, rng=rng())
    # Assert
    assert chosen == [5]


def test_resource_aware_prefers_fast_compute_fast_links_and_reliability():
    # Prepare: 100 samples and 1 MB each way. Round times: 1: 10+2, 2: 5+2, 3: 10+0.2,
    # 4: 5+2 but only half reliable, 5 equals 2 (tie broken by id).
    views = [
        view(1),
        view(2, throughput=20.0),
        view(3, bandwidth=1e7),
        view(4, throughput=20.0, reliability=0.5),
        view(5, throughput=20.0),
    ]
    policy = ResourceAware(samples=100, model_bytes=1e6)
    # Execute
    top2 = policy.select(views, 2, rnd=1, rng=rng())
    top3 = policy.select(views, 3, rnd=1, rng=rng())
    # Assert: 1/7 (2, 5) > 1/10.2 (3) > 1/12 (1) > 0.5/7 (4).
    assert top2 == [2, 5]
    assert top3 == [2, 3, 5]


def test_resource_aware_uses_each_devices_own_samples_by_default():
    # Prepare: same speed, but device 1 holds ten times the data, so its round is longer.
    views = [view(1, samples=1000), view(2, samples=100)]
    # Execute / Assert
    assert ResourceAware().select(views, 1, rnd=1, rng=rng()) == [2]


def tried(id, utility, duration=10.0, **fields):
    return view(id, utility=utility, last_duration=duration, **fields)


def test_oort_exploits_the_highest_utilities_when_not_exploring():
    # Prepare: no exploration, all devices tried with equal durations.
    views = [tried(i, utility=u) for i, u in enumerate([1.0, 9.0, 2.0, 8.0, 3.0])]
    views.append(tried(9, utility=100.0, online=False))
    policy = OortSelection(epsilon=0.0, min_epsilon=0.0)
    # Execute
    chosen = policy.select(views, 2, rnd=1, rng=rng())
    # Assert
    assert chosen == [1, 3]


def test_oort_penalises_devices_slower_than_the_preferred_duration():
    # Prepare: device 1 is the most useful but takes 4x the preferred 10 s; device 2 is close.
    views = [tried(1, utility=10.0, duration=40.0), tried(2, utility=9.0), tried(3, utility=0.0)]
    policy = OortSelection(epsilon=0.0, min_epsilon=0.0, preferred_duration=10.0, alpha=2.0)
    # Execute
    scores = policy.utilities(views, rnd=1)
    chosen = policy.select(views, 1, rnd=1, rng=rng())
    # Assert: normalised utilities 1.0 and 0.9; device 1 scaled by (10/40)^2.
    assert scores == pytest.approx({1: 1.0 / 16, 2: 0.9, 3: 0.0})
    assert chosen == [2]


def test_oort_takes_the_preferred_duration_from_a_quantile_of_known_durations():
    views = [tried(i, utility=1.0, duration=d) for i, d in enumerate([10.0, 20.0, 30.0])]
    views.append(view(9))
    policy = OortSelection(duration_quantile=0.5)
    assert policy.preferred(views) == pytest.approx(20.0)
    assert OortSelection().preferred([view(1)]) == float("inf")


def test_oort_explores_untried_devices_fastest_first():
    # Prepare: k=4 with epsilon 0.5, so 2 exploiting and 2 exploring slots. Untried devices
    # 10..13 differ in speed; 12 is offline.
    views = [tried(i, utility=float(i)) for i in range(4)]
    views += [
        view(10, throughput=5.0, samples=100),
        view(11, throughput=50.0, samples=100),
        view(12, throughput=500.0, samples=100, online=False),
        view(13, throughput=20.0, samples=100),
    ]
    policy = OortSelection(epsilon=0.5, min_epsilon=0.5, cutoff=1.0)
    # Execute
    chosen = policy.select(views, 4, rnd=1, rng=rng())
    # Assert: the two best tried devices and the two fastest online untried ones.
    assert chosen == [2, 3, 11, 13]


def test_oort_gives_spare_exploration_slots_to_exploitation():
    views = [tried(1, utility=1.0), tried(2, utility=2.0), tried(3, utility=3.0), view(10)]
    policy = OortSelection(epsilon=0.9)
    assert policy.select(views, 3, rnd=1, rng=rng()) == [2, 3, 10]


def test_oort_staleness_bonus_favours_devices_not_selected_lately():
    # Prepare: equal utility; device 1 was last selected in round 1, device 2 in round 4.
    views = [tried(1, utility=5.0), tried(2, utility=5.0)]
    policy = OortSelection(epsilon=0.0, min_epsilon=0.0)
    policy.select(views[:1], 1, rnd=1, rng=rng())
    policy.select(views[1:], 1, rnd=4, rng=rng())
    # Execute
    scores = policy.utilities(views, rnd=5)
    # Assert: 1 + sqrt(0.1 ln 5 / L).
    assert scores[1] == pytest.approx(1 + np.sqrt(0.1 * np.log(5) / 1))
    assert scores[2] == pytest.approx(1 + np.sqrt(0.1 * np.log(5) / 4))


def test_oort_marks_selected_devices_as_tried():
    # Prepare: one untried device, selected by exploration in round 1.
    views = [view(1)]
    policy = OortSelection()
    # Execute
    policy.select(views, 1, rnd=1, rng=rng())
    # Assert: it now has a utility (equal utilities normalise to 1, plus no bonus at round 1).
    assert policy.utilities(views, rnd=1) == {1: 1.0}


def test_oort_epsilon_decays_to_its_floor():
    # Prepare
    policy = OortSelection(epsilon=0.5, decay=0.5, min_epsilon=0.2)
    views = [view(1)]
    # Execute
    seen = []
    for r in range(1, 4):
        policy.select(views, 1, rnd=r, rng=rng())
        seen.append(policy.epsilon)
    # Assert
    assert seen == pytest.approx([0.25, 0.2, 0.2])


def test_policies_return_nothing_for_k_zero():
    views = [view(1), tried(2, utility=1.0)]
    for policy in (RandomSelection(), ResourceAware(), OortSelection()):
        assert policy.select(views, 0, rnd=1, rng=rng()) == []


# --- reliability -----------------------------------------------------------------------------


def test_reliability_is_an_exponential_moving_average_of_outcomes():
    # Prepare
    rel = Reliability(decay=0.8)
    # Execute / Assert: 0.8*1 + 0.2*0 = 0.8, then 0.8*0.8 = 0.64, then 0.64*0.8 + 0.2 = 0.712.
    assert rel.score(7) == 1.0
    assert rel.reject(7) == pytest.approx(0.8)
    assert rel.lost(7) == pytest.approx(0.64)
    assert rel.accept(7) == pytest.approx(0.712)
    assert rel.scores() == pytest.approx({7: 0.712})


def test_reliability_starts_at_the_prior_and_validates_parameters():
    rel = Reliability(decay=0.5, prior=0.5)
    assert rel.accept(1) == pytest.approx(0.75)
    assert rel.score(2) == 0.5
    with pytest.raises(ValueError):
        Reliability(decay=1.0)
    with pytest.raises(ValueError):
        Reliability(prior=1.5)


# --- work balancing --------------------------------------------------------------------------


def test_balance_work_is_proportional_to_throughput():
    views = [view(1, throughput=1.0), view(2, throughput=3.0)]
    assert balance_work(views, 8) == {1: 2, 2: 6}


def test_balance_work_accepts_a_mapping():
    views = {2: view(2, throughput=3.0), 1: view(1, throughput=1.0)}
    assert balance_work(views, 8) == {1: 2, 2: 6}


def test_balance_work_rounds_by_largest_remainder():
    # Prepare: quotas 10 * (1, 2, 2) / 5 = 2, 4, 4 exact; 11 * (...) = 2.2, 4.4, 4.4.
    views = [view(1, throughput=1.0), view(2, throughput=2.0), view(3, throughput=2.0)]
    # Execute
    shares = balance_work(views, 11)
    # Assert: floors 2, 4, 4 leave 1 unit, to the largest remainder, ties to the lower id.
    assert shares == {1: 2, 2: 5, 3: 4}


def test_balance_work_gives_every_device_its_minimum():
    # Prepare: by proportion device 1 would get 10 * 1/100 = 0.1 units.
    views = [view(1, throughput=1.0), view(2, throughput=99.0), view(3, throughput=0.0)]
    # Execute
    shares = balance_work(views, 10, minimum=2)
    # Assert: devices 1 and 3 are pinned at 2, device 2 takes the other 6.
    assert shares == {1: 2, 2: 6, 3: 2}


def test_balance_work_splits_evenly_when_no_throughput_is_known():
    views = [view(i, throughput=0.0) for i in (1, 2, 3)]
    assert balance_work(views, 7) == {1: 3, 2: 2, 3: 2}


def test_balance_work_rejects_impossible_requests():
    views = [view(1), view(2)]
    with pytest.raises(ValueError):
        balance_work(views, 1, minimum=1)
    with pytest.raises(ValueError):
        balance_work([view(1), view(1)], 4)
    with pytest.raises(ValueError):
        balance_work([view(1, throughput=-1.0)], 4)
    with pytest.raises(ValueError):
        balance_work([], 4)
    assert balance_work([], 0) == {}


@pytest.mark.parametrize("seed", range(20))
def test_balanced_round_is_never_slower_than_an_unbalanced_one(seed):
    # Prepare: random throughputs, base steps each, and a minimum no larger than base.
    g = rng(seed)
    n = int(g.integers(2, 9))
    base = int(g.integers(1, 20))
    minimum = int(g.integers(0, base + 1))
    views = [view(i, throughput=float(g.uniform(0.5, 50.0))) for i in range(n)]
    # Execute
    shares = balance_work(views, base * n, minimum=minimum)
    # Assert: the same total work, and the slowest finisher is no later than with equal shares.
    assert sum(shares.values()) == base * n
    assert min(shares.values()) >= minimum
    balanced = max(shares[v.id] / v.throughput for v in views)
    unbalanced = max(base / v.throughput for v in views)
    assert balanced <= unbalanced + 1e-12


def test_observed_view_carries_every_other_field():
    # Prepare: a view whose every field differs from its default, and an overlay of history
    # Execute: the overlay made by observed() and by dataclasses.replace
    # Assert: the same view, so a field added to DeviceView cannot be dropped by observed()
    from dataclasses import fields, replace

    values = {"id": 7, "group": 3, "online": False, "cpu_busy": 0.5, "memory_available": 2e9}
    values |= {"throughput": 11.0, "bandwidth": 2e6, "reliability": 0.3, "utility": 4.0}
    values |= {"last_duration": 9.5, "samples": 12}
    assert set(values) == {f.name for f in fields(DeviceView)}
    v = DeviceView(**values)
    overlay = {
        "reliability": 0.9,
        "utility": 1.5,
        "throughput": 20.0,
        "last_duration": 3.0,
        "samples": 40,
    }
    assert v.observed(**overlay) == replace(v, **overlay)
