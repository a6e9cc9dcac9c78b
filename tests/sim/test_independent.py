"""IndependentNetwork: each transfer alone at its path's narrowest capacity (mode.network)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import simpy
from side_by_side import FLEET_ROUND

from fedsim.config import NETWORKS, ConfigError, build_spec, compose
from fedsim.pipeline import run
from fedsim.report.write import write_run
from fedsim.runtimes import runtime
from fedsim.runtimes import sim as sim_runtime
from fedsim.scenarios import Hooks
from fedsim.sim.independent import IndependentNetwork
from fedsim.sim.network import FlowNetwork, FlowRecord
from fedsim.spec import ExperimentSpec

MB = 1e6


def test_transfers_over_one_link_do_not_share_it() -> None:
    # Prepare: three transfers over the same server link, each behind its own access link.
    env = simpy.Environment()
    capacity = {"server": 100 * MB, "a": 50 * MB, "b": 200 * MB, "c": 1e9}
    net = IndependentNetwork(env, capacity=capacity, latency={"server": 0.01, "a": 0.002})

    # Execute
    events = [net.transfer([access, "server"], 100 * MB) for access in "abc"]
    env.run(until=0.5)
    rates = net.rates()
    active = net.active_flows
    env.run()

    # Assert: latency, then size / min(access, server), whatever the others do.
    assert [rates[e] for e in events] == [50 * MB, 100 * MB, 100 * MB]
    assert active == 3  # in flight, the one still within its latency included
    assert [e.value for e in events] == [
        FlowRecord(0, 0.012 + 2.0, 100 * MB),
        FlowRecord(0, 0.01 + 1.0, 100 * MB),
        FlowRecord(0, 0.01 + 1.0, 100 * MB),
    ]
    assert net.active_flows == 0 and net.bytes_delivered == 300 * MB


def test_shared_links_take_longer_than_independent_ones() -> None:
    # Prepare: four equal uploads into one server link, under each model.
    def ends(network: type) -> list[float]:
        env = simpy.Environment()
        net = network(env, capacity={"server": 100 * MB, **{d: 1e9 for d in "abcd"}})
        events = [net.transfer([d, "server"], 100 * MB) for d in "abcd"]
        env.run()
        return [e.value.end for e in events]

    # Execute
    shared, independent = ends(FlowNetwork), ends(IndependentNetwork)

    # Assert: sharing the link, each gets a quarter of it.
    assert independent == [1.0] * 4
    assert shared == [pytest.approx(4.0)] * 4


def test_per_flow_cap_and_empty_and_zero_byte_transfers() -> None:
    # Prepare
    env = simpy.Environment()
    net = IndependentNetwork(env, capacity={"l": 100 * MB}, latency={"l": 0.5})

    # Execute
    capped = net.transfer(["l"], 10 * MB, cap=1 * MB)
    local = net.transfer([], 10 * MB)
    empty = net.transfer(["l"], 0)
    env.run()

    # Assert: the cap rules where it is narrower; no link, no time; no bytes, the latency.
    assert capped.value.end == pytest.approx(10.5)
    assert local.value == FlowRecord(0, 0, 10 * MB)
    assert empty.value == FlowRecord(0, 0.5, 0)


def test_capacity_change_re_times_the_flows_in_flight_over_the_link() -> None:
    # Prepare: 100 MB over link l at 10 MB/s, another over link m; l halves at t=4, then
    # doubles at t=6.
    env = simpy.Environment()
    net = IndependentNetwork(env, capacity={"l": 10 * MB, "m": 10 * MB})
    over_l = net.transfer(["l"], 100 * MB)
    over_m = net.transfer(["m"], 100 * MB)

    def change() -> simpy.events.ProcessGenerator:
        yield env.timeout(4)
        net.set_capacity("l", 5 * MB)
        yield env.timeout(2)
        net.set_capacity("l", 20 * MB)

    # Execute
    env.process(change())
    env.run()

    # Assert: 40 MB by t=4, 10 MB more by t=6, the last 50 MB at 20 MB/s: t=8.5. The other
    # flow never changes.
    assert over_l.value.end == pytest.approx(8.5)
    assert over_m.value.end == 10.0
    assert net.active_flows == 0


def test_send_calls_back_in_the_order_transfers_end() -> None:
    # Prepare: callbacks of three sends, two of which end at one instant.
    env = simpy.Environment()
    net = IndependentNetwork(env, capacity={"a": 10 * MB, "b": 20 * MB, "c": 10 * MB})
    ended: list[tuple[str, float]] = []

    # Execute
    for link, size in (("a", 20 * MB), ("b", 20 * MB), ("c", 10 * MB)):
        net.send([link], size, lambda _, k=link: ended.append((k, env.now)))
    env.run()

    # Assert: the order of their ends, and of admission between equal ends.
    assert ended == [("b", 1.0), ("c", 1.0), ("a", 2.0)]


def test_bad_transfers_are_refused_as_by_the_shared_model() -> None:
    # Prepare
    net = IndependentNetwork(simpy.Environment(), capacity={"l": MB})

    # Execute / Assert
    with pytest.raises(ValueError, match="unknown links"):
        net.transfer(["x"], MB)
    with pytest.raises(ValueError, match="cap must be positive"):
        net.transfer(["l"], MB, cap=0)
    with pytest.raises(ValueError, match="link capacities must be positive"):
        net.set_capacity("l", -1.0)


def test_mode_network_names_the_models_the_runtime_has() -> None:
    # Prepare / Execute / Assert: the config's names are the runtime's, in the same order.
    assert tuple(sim_runtime.NETWORKS) == NETWORKS


def test_unknown_or_non_sim_network_is_refused() -> None:
    # Prepare
    bad = compose(["+experiment=fl_digits", "mode.network=ideal"])
    real = compose(["+experiment=fl_digits", "mode=real", "mode.network=independent"])

    # Execute / Assert
    with pytest.raises(ConfigError, match=r"mode.network: 'ideal' is not one of shared, indep"):
        build_spec(bad)
    with pytest.raises(ConfigError, match=r"mode.network: 'independent' is a model of the sim"):
        build_spec(real)


def test_a_fleet_round_on_independent_links_pays_no_contention_and_says_so(tmp_path: Path) -> None:
    # Prepare: one round of 1,000 devices with their own link speeds, under each model.
    def round_of(network: str) -> tuple[pd.DataFrame, ExperimentSpec]:
        spec = build_spec(compose([*FLEET_ROUND, f"mode.network={network}"]))
        out = tmp_path / network
        write_run(out, run(spec, runtime("sim"), out, Hooks(progress=False)))
        return pd.read_csv(out / "events.csv"), spec

    # Execute
    shared, _ = round_of("shared")
    events, spec = round_of("independent")

    # Assert: each download took its path's latency and its size at the path's narrowest
    # link, as if alone; sharing the group and server links makes downloads far longer.
    topology = spec.topology
    capacity = {link: profile.bandwidth for link, profile in topology.links().items()}
    downloads = events[events.kind == "model_download"]
    assert len(downloads) == 1000
    for row in downloads.itertuples():
        path = topology.path(topology.server, row.device)
        alone = topology.latency(path) + row.bytes / min(capacity[link] for link in path)
        assert row.duration_s == pytest.approx(alone, rel=1e-9)
    mean = {
        name: e[e.kind == "model_download"].duration_s.mean()
        for name, e in (("shared", shared), ("independent", events))
    }
    assert mean["shared"] > 3 * mean["independent"]
    # The run says which model timed it, so that its times are not taken for the default's.
    summaries = {n: json.loads((tmp_path / n / "summary.json").read_text()) for n in mean}
    assert {n: v["network"] for n, v in summaries.items()} == {n: n for n in mean}
    report = (tmp_path / "independent" / "report.md").read_text()
    assert "in sim mode with no link shared (`mode.network=independent`" in report
    assert "no link shared" not in (tmp_path / "shared" / "report.md").read_text()


def test_capacity_change_during_the_latency_sets_the_whole_rate() -> None:
    # Prepare: 10 MB over a link of 10 MB/s with 1 s of latency, under each model; the link
    # halves at t=0.5, before the first byte goes.
    def end(network: type) -> float:
        env = simpy.Environment()
        net = network(env, capacity={"l": 10 * MB}, latency={"l": 1.0})
        event = net.transfer(["l"], 10 * MB)

        def halve() -> simpy.events.ProcessGenerator:
            yield env.timeout(0.5)
            net.set_capacity("l", 5 * MB)

        env.process(halve())
        env.run()
        return event.value.end

    # Execute / Assert: the whole transfer at the new rate, as the shared model times it.
    assert end(IndependentNetwork) == end(FlowNetwork) == 3.0
