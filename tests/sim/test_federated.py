"""Multi-round federated training through the coordinator on the simulated runtime."""

import itertools
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
from topologies import grouped, hardware, link, star

from fedsim.core.coordinator import ClientWork, Coordinator, Evaluation, FederatedConfig
from fedsim.core.events import EventKind
from fedsim.core.faults import FaultPlan, LinkChange, Outage
from fedsim.core.runtime import Cost, ModelRef, Update
from fedsim.core.strategies.fedadam import FedAdam
from fedsim.core.strategies.fedavg import FedAvg
from fedsim.core.strategies.krum import Krum
from fedsim.core.strategies.median import Median
from fedsim.sim.runtime import SimTransport

TARGETS = {d: np.full(4, float(d), np.float32) for d in range(1, 21)}


def pull_trainer(dev, ins):
    """Moves the parameters halfway to the device's own target: easy to aggregate by hand."""
    w = ins.parameters["w"]
    return {"w": (w + 0.5 * (TARGETS[dev] - w)).astype(np.float32)}, {"loss": float(dev)}


def two_groups(per_group=2, slow=()):
    """Server in group 0; devices 1..n in groups 1 and 2 behind 10 MB/s uplinks."""
    n = 2 * per_group
    return grouped(
        {i: 1 if i <= per_group else 2 for i in range(1, n + 1)},
        uplink=link("wan", 10.0, latency_s=0.001),
        access=link("lan", 100.0),
        client_hardware=lambda i: hardware("slow", 0.1) if i in slow else hardware("cli", 1.0),
    )


def coordinator(topo, *, config, faults=None, trainer=pull_trainer, samples=100, **kw):
    clients = [d for d in topo.devices if d != 0]
    transport = SimTransport(topo, seed=0, trainer=trainer, faults=faults)
    work = ClientWork(
        samples=dict.fromkeys(clients, samples),
        train_flops_per_sample=1e10,
        update_nbytes=1_000_000,
        state_values=4,
    )
    coord = Coordinator(
        transport=transport,
        strategy=kw.pop("strategy", FedAvg()),
        work=work,
        model=ModelRef(name="m", version=0, nbytes=1_000_000),
        parameters={"w": np.zeros(4, np.float32)},
        config=config,
        groups={d: topo.devices[d].group for d in clients},
        **kw,
    )
    return coord, clients


def test_rounds_aggregate_fedavg_and_publish_versions():
    # Prepare: 4 clients with equal data; each moves w halfway to its own target.
    coord, clients = coordinator(two_groups(), config=FederatedConfig(rounds=3))
    # Execute
    history = coord.run(clients)
    # Assert: w_{r+1} = w_r + 0.5 (mean target - w_r), mean target = 2.5.
    expected = 2.5 * (1 - 0.5**3)
    np.testing.assert_allclose(coord.parameters["w"], expected, rtol=1e-6)
    assert [r.version.version for r in history] == [1, 2, 3]
    assert all(r.aggregated and sorted(r.completed) == clients for r in history)
    assert history[0].train_loss == pytest.approx(2.5)
    assert all(a.finished <= b.started + 1e-9 for a, b in itertools.pairwise(history))


def test_dropouts_do_not_hang_rounds_beyond_their_deadline():
    # Prepare: 30% of devices drop out of every task; rounds have a 5 s deadline.
    cfg = FederatedConfig(rounds=10, deadline_s=5.0, min_fit=1)
    coord, clients = coordinator(two_groups(per_group=5), config=cfg, faults=FaultPlan(dropout=0.3))
    # Execute
    history = coord.run(clients)
    # Assert: every round is done collecting by its deadline and some devices were lost.
    events = coord.transport.events.events
    for r in history:
        agg = [
            e
            for e in events
            if e.kind is EventKind.AGGREGATE and r.started <= e.start <= r.finished
        ]
        assert agg and agg[0].start <= r.started + cfg.deadline_s + 1e-9
        assert r.aggregated
    lost = sum(len(r.failures) for r in history)
    assert 0 < lost < 10 * len(clients)
    assert all(
        reason == "no result before the deadline" for r in history for reason in r.failures.values()
    )


def test_round_below_min_fit_fails_and_the_next_one_goes_on():
    # Prepare: device 1 is offline for the first 10 s; min_fit needs all 4.
    cfg = FederatedConfig(rounds=2, deadline_s=5.0, min_fit=4)
    coord, clients = coordinator(
        two_groups(), config=cfg, faults=FaultPlan(outages=[Outage(device=1, start=0, end=4)])
    )
    # Execute
    history = coord.run(clients)
    # Assert
    assert not history[0].aggregated and history[0].failures == {1: "no result before the deadline"}
    assert history[1].aggregated and coord.model.version == 1
    assert coord.reliability.score(1) < coord.reliability.score(2)


def test_invalid_updates_are_rejected_with_a_reason():
    def nan_trainer(dev, ins):
        params, metrics = pull_trainer(dev, ins)
        if dev == 3:
            params["w"][0] = np.nan
        return params, metrics

    coord, clients = coordinator(
        two_groups(), config=FederatedConfig(rounds=1), trainer=nan_trainer
    )
    history = coord.run(clients)
    assert set(history[0].rejected) == {3} and "finite" in history[0].rejected[3]
    assert sorted(history[0].completed) == [1, 2, 4]
    np.testing.assert_allclose(coord.parameters["w"], 0.5 * np.mean([1, 2, 4]), rtol=1e-6)
    assert coord.reliability.score(3) < 1.0


def test_late_results_do_not_leak_into_the_next_round():
    # Device 4 is 10x slower: it misses round 0's deadline and its result arrives in round 1.
    cfg = FederatedConfig(rounds=2, deadline_s=3.0)
    coord, clients = coordinator(two_groups(slow=(4,)), config=cfg)
    history = coord.run(clients)
    assert 4 in history[0].failures and 4 in history[1].failures
    assert all(sorted(r.completed) == [1, 2, 3] for r in history)


def test_hierarchical_round_matches_flat_fedavg_and_crosses_each_wan_link_once():
    flat, clients = coordinator(two_groups(), config=FederatedConfig(rounds=1))
    flat.run(clients)
    hier, _ = coordinator(two_groups(), config=FederatedConfig(rounds=1, hierarchical=True))
    history = hier.run(clients)
    np.testing.assert_allclose(hier.parameters["w"], flat.parameters["w"], rtol=1e-6)
    assert history[0].aggregated and len(history[0].completed) == 2  # one update per group
    uploads_to_cloud = [
        e
        for e in hier.transport.events
        if e.kind is EventKind.UPDATE_UPLOAD and e.task.startswith("r0-forward")
    ]
    assert len(uploads_to_cloud) == 2
    downloads = [e for e in hier.transport.events if e.kind is EventKind.MODEL_DOWNLOAD]
    assert len(downloads) == 2 + 4  # one relay per group, then within each group


def outlier_trainer(dev, ins):
    """pull_trainer, except that device 3 sends an update far off the others."""
    params, metrics = pull_trainer(dev, ins)
    if dev == 3:
        params["w"] = np.full(4, 1000.0, np.float32)
    return params, metrics


class RecordingFedAvg(FedAvg):
    """FedAvg that keeps the updates it was given, to see what reached the cloud."""

    def __init__(self):
        self.seen = []

    def aggregate_fit(self, current, updates):
        self.seen.append(list(updates))
        return super().aggregate_fit(current, updates)


def test_hierarchical_groups_combine_with_the_configured_robust_rule():
    # Prepare: groups {1, 2, 3} and {4, 5, 6}; from w = 0, device d sends 0.5 d, but device 3
    # sends 1000. The configured rule is the coordinate-wise median.
    coord, clients = coordinator(
        two_groups(per_group=3),
        config=FederatedConfig(rounds=1, hierarchical=True),
        trainer=outlier_trainer,
        strategy=Median(),
    )
    # Execute
    coord.run(clients)
    # Assert: group 1 median(0.5, 1, 1000) = 1 and group 2 median(2, 2.5, 3) = 2.5, then the
    # cloud's median of the two = 1.75. Groups averaging as before would give group 1
    # (0.5 + 1 + 1000) / 3 = 333.83 and the cloud median(333.83, 2.5) = 168.17.
    np.testing.assert_allclose(coord.parameters["w"], 1.75, rtol=1e-6)


def test_group_strategy_combines_groups_and_the_strategy_the_cloud():
    # Prepare: the same outlier; groups use the median, the cloud a FedAvg that records.
    cloud = RecordingFedAvg()
    coord, clients = coordinator(
        two_groups(per_group=3),
        config=FederatedConfig(rounds=1, hierarchical=True),
        trainer=outlier_trainer,
        strategy=cloud,
        group_strategy=Median(),
    )
    # Execute
    coord.run(clients)
    # Assert: the cloud got the two group medians, each weighing its 3 x 100 examples.
    [updates] = cloud.seen
    assert sorted(float(u.parameters["w"][0]) for u in updates) == [1.0, 2.5]
    assert [u.num_examples for u in updates] == [300, 300]
    np.testing.assert_allclose(coord.parameters["w"], (1.0 + 2.5) / 2, rtol=1e-6)


def test_a_group_whose_rule_cannot_combine_sends_nothing_and_the_round_goes_on():
    # Prepare: Krum needs n >= 2f + 3 updates; each group has 3 members, so with f = 1 no
    # group can combine.
    coord, clients = coordinator(
        two_groups(per_group=3),
        config=FederatedConfig(rounds=1, hierarchical=True),
        group_strategy=Krum(f=1),
    )
    # Execute
    [report] = coord.run(clients)
    # Assert: nothing reached the cloud; every device says why.
    assert not report.aggregated and report.completed == ()
    assert set(report.failures) == set(clients)
    assert all("could not combine" in why for why in report.failures.values())


def test_stateful_group_rules_keep_their_own_state():
    # Prepare: FedAdam keeps momentum and second moments from round to round. By hand: one
    # fresh FedAdam per group and one for the cloud, over two rounds of pull_trainer updates.
    members = {1: [1, 2, 3], 2: [4, 5, 6]}
    groups, cloud = {g: FedAdam() for g in members}, FedAdam()
    w = {"w": np.zeros(4, np.float32)}
    for _ in range(2):
        combined, sent = [], SimpleNamespace(parameters=w)
        for g, devs in members.items():
            trained = [
                Update(num_examples=100, nbytes=1, parameters=pull_trainer(d, sent)[0])
                for d in devs
            ]
            combined.append(
                Update(num_examples=300, nbytes=1, parameters=groups[g].aggregate_fit(w, trained))
            )
        w = cloud.aggregate_fit(w, combined)
    coord, clients = coordinator(
        two_groups(per_group=3),
        config=FederatedConfig(rounds=2, hierarchical=True),
        strategy=FedAdam(),
    )
    # Execute
    coord.run(clients)
    # Assert
    np.testing.assert_allclose(coord.parameters["w"], w["w"], rtol=1e-6)


def test_configured_aggregator_relays_and_combines_for_its_group():
    # Prepare: group 1 names device 2 its aggregator; group 2 keeps its lowest id, 4.
    cfg = FederatedConfig(rounds=1, hierarchical=True, aggregators={1: 2})
    coord, clients = coordinator(two_groups(per_group=3), config=cfg)
    # Execute
    coord.run(clients)
    # Assert
    hops = {
        (e.kind, e.task): e.device
        for e in coord.transport.events
        if "relay" in e.task or "forward" in e.task
    }
    assert hops[(EventKind.MODEL_DOWNLOAD, "r0-relay-g1")] == 2
    assert hops[(EventKind.AGGREGATE, "r0-forward-g1")] == 2
    assert hops[(EventKind.UPDATE_UPLOAD, "r0-forward-g2")] == 4


def test_group_strategy_needs_hierarchical_rounds():
    with pytest.raises(ValueError, match="group_strategy"):
        coordinator(two_groups(), config=FederatedConfig(rounds=1), group_strategy=Median())


def test_load_balancing_keeps_the_slowest_from_holding_the_round():
    topo = two_groups(slow=(4,))
    times = {}
    for balance in (False, True):
        coord, clients = coordinator(
            topo, config=FederatedConfig(rounds=1, balance=balance), resources=None
        )
        from fedsim.sim.resources import SimResources

        coord.resources = SimResources(coord.transport, train_flops_per_sample=1e10)
        coord.run(clients)
        times[balance] = coord.history[0].duration
    assert times[True] < 0.5 * times[False]


def test_async_buffers_k_updates_and_weights_staleness():
    cfg = FederatedConfig(rounds=4, mode="async", buffer_size=2, concurrency=3, max_staleness=3)
    coord, clients = coordinator(two_groups(per_group=3, slow=(6,)), config=cfg)
    history = coord.run(clients)
    assert len(history) == 4 and all(r.aggregated and len(r.completed) == 2 for r in history)
    assert [r.version.version for r in history] == [1, 2, 3, 4]
    assert any(r.staleness and r.staleness > 0 for r in history)
    assert np.all(np.isfinite(coord.parameters["w"]))


def test_evaluation_every_k_rounds_costs_server_time():
    ev = Evaluation(fn=lambda p: {"accuracy": float(p["w"].mean())}, cost=Cost(flops=1e13))
    coord, clients = coordinator(
        two_groups(), config=FederatedConfig(rounds=4, eval_every=2), evaluation=ev
    )
    history = coord.run(clients)
    assert [bool(r.metrics) for r in history] == [False, True, False, True]
    evals = [e for e in coord.transport.events if e.kind is EventKind.EVALUATE]
    assert len(evals) == 2 and evals[0].duration == pytest.approx(1.0)


def test_link_degradation_slows_transfers_while_it_lasts():
    base, clients = coordinator(two_groups(), config=FederatedConfig(rounds=1))
    base.run(clients)
    slow, _ = coordinator(
        two_groups(),
        config=FederatedConfig(rounds=1),
        faults=FaultPlan(link_changes=[LinkChange(network="wan", start=0.0, factor=0.1)]),
    )
    slow.run(clients)
    # 2 x 1 MB per group through 10 MB/s, then through 1 MB/s: transfers take 10x longer;
    # 1 ms of latency per transfer, 1 s of training, 1.5 ms of aggregation and publishing.
    assert base.history[0].duration == pytest.approx(0.201 + 1 + 0.201 + 0.0015)
    assert slow.history[0].duration == pytest.approx(2.001 + 1 + 2.001 + 0.0015)


def test_star_fixture_still_builds():
    assert star(2).server == 0 and replace


def hostile(coord, device, **changes):
    """Make ``device``'s updates arrive with ``changes`` (a device sending what it likes)."""
    wait = coord.transport.wait

    def tampered(**kw):
        return [
            replace(r, update=replace(r.update, **changes))
            if r.device == device and r.update is not None
            else r
            for r in wait(**kw)
        ]

    coord.transport.wait = tampered


def test_finite_huge_weights_with_an_inflated_count_are_refused_and_the_run_goes_on():
    # Prepare: issue 13's reproduction, device 3 sends finite 3e38 weights claiming 1e18
    # examples; the others' tasks ask for 100 samples x 1 epoch.
    evaluated = []
    coord, clients = coordinator(
        two_groups(),
        config=FederatedConfig(rounds=2),
        evaluation=Evaluation(fn=lambda p: evaluated.append(p) or {"loss": float(p["w"][0])}),
    )
    hostile(coord, 3, num_examples=10**18, parameters={"w": np.full(4, 3e38, np.float32)})
    # Execute
    history = coord.run(clients)
    # Assert: refused on its count, each round aggregates the other three, and the model
    # follows their mean target (1 + 2 + 4) / 3.
    for r in history:
        assert r.aggregated and sorted(r.completed) == [1, 2, 4]
        assert r.rejected == {3: "num_examples 1000000000000000000 > the 100 its task asked for"}
    np.testing.assert_allclose(coord.parameters["w"], 7 / 3 * (1 - 0.5**2), rtol=1e-6)
    assert all(np.isfinite(p["w"]).all() for p in evaluated)


def test_huge_weights_with_an_honest_count_are_refused_on_their_magnitude():
    # Prepare
    coord, clients = coordinator(two_groups(), config=FederatedConfig(rounds=1))
    hostile(coord, 2, parameters={"w": np.full(4, 3e38, np.float32)})
    # Execute
    [report] = coord.run(clients)
    # Assert
    assert report.aggregated and sorted(report.completed) == [1, 3, 4]
    assert report.rejected[2].startswith("w: a value of magnitude 3e+38 >")


@pytest.mark.parametrize("count", [0, 101])
def test_an_example_count_outside_one_to_what_was_asked_is_refused(count):
    # Prepare: the task asks for 50 samples x 2 epochs = 100 examples.
    cfg = FederatedConfig(rounds=1, local_epochs=2)
    coord, clients = coordinator(two_groups(), config=cfg, samples=50)
    hostile(coord, 4, num_examples=count)
    # Execute
    [report] = coord.run(clients)
    # Assert
    assert set(report.rejected) == {4} and "num_examples" in report.rejected[4]
    assert report.aggregated and sorted(report.completed) == [1, 2, 3]


def test_a_non_finite_training_metric_is_refused_and_the_train_loss_stays_finite():
    # Prepare
    coord, clients = coordinator(two_groups(), config=FederatedConfig(rounds=1))
    hostile(coord, 1, metrics={"loss": float("nan")})
    # Execute
    [report] = coord.run(clients)
    # Assert
    assert report.rejected == {1: "metric 'loss': non-finite value nan"}
    assert report.train_loss == pytest.approx((2 + 3 + 4) / 3)


def test_a_rule_that_gives_non_finite_values_fails_the_round_and_keeps_the_version():
    # Prepare: a user's rule that breaks in round 0 only.
    class Fragile(FedAvg):
        name = "fragile"
        calls = 0

        def aggregate_fit(self, current, updates):
            self.calls += 1
            new = super().aggregate_fit(current, updates)
            return {"w": np.full(4, np.nan, np.float32)} if self.calls == 1 else new

    published = []
    coord, clients = coordinator(
        two_groups(),
        config=FederatedConfig(rounds=2),
        strategy=Fragile(),
        publish=lambda version, p, rnd, m: published.append(version.version),
    )
    # Execute
    first, second = coord.run(clients)
    # Assert
    assert not first.aggregated and "non-finite values in w" in first.failures[-1]
    assert second.aggregated and coord.model.version == 1 and published == [1]
    assert np.isfinite(coord.parameters["w"]).all()


def test_non_finite_evaluation_metrics_are_left_out_and_the_run_goes_on():
    # Prepare: the server's evaluation of every version gives a NaN loss.
    coord, clients = coordinator(
        two_groups(),
        config=FederatedConfig(rounds=2),
        evaluation=Evaluation(fn=lambda p: {"loss": float("nan"), "accuracy": 0.5}),
    )
    # Execute
    history = coord.run(clients)
    # Assert
    assert [r.metrics for r in history] == [{"accuracy": 0.5}, {"accuracy": 0.5}]
    assert all(r.aggregated for r in history)
