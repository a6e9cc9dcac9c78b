"""FlowNetwork: max-min sharing of directed links, latency, caps, and scale."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import simpy

from fedsim.sim.maxmin import NaiveFlowNetwork, max_min_rates
from fedsim.sim.network import FlowNetwork, FlowRecord

MB = 1e6


def _ends(events: list[simpy.Event]) -> list[float]:
    return [event.value.end for event in events]


def test_two_flows_on_one_link_end_together() -> None:
    # Prepare
    env = simpy.Environment()
    net = FlowNetwork(env, capacity={"l": 100 * MB}, latency={"l": 0.01})

    # Execute
    events = [net.transfer(["l"], 100 * MB), net.transfer(["l"], 100 * MB)]
    env.run()

    # Assert
    assert events[0].value == events[1].value == FlowRecord(0, 2.01, 100 * MB)


def test_flow_limited_by_its_access_link_leaves_the_rest_to_others() -> None:
    # Prepare
    env = simpy.Environment()
    capacity = {"shared": 100 * MB, "slow": 10 * MB, "a": 1e9, "b": 1e9, "c": 1e9}
    net = FlowNetwork(env, capacity=capacity)

    # Execute
    slow = net.transfer(["slow", "shared"], 100 * MB)
    others = [net.transfer([access, "shared"], 60 * MB) for access in "abc"]
    env.run(until=1)
    rates = net.rates()
    env.run()

    # Assert: the others get (100 - 10) / 3 MB/s each, the slow flow keeps 10 MB/s.
    assert rates[slow] == 10 * MB
    assert [rates[event] for event in others] == [30 * MB] * 3
    assert _ends(others) == [2.0] * 3
    assert slow.value.end == 10.0


@pytest.mark.parametrize("network", [FlowNetwork, NaiveFlowNetwork], ids=["flow", "naive"])
def test_send_calls_back_when_transfer_would_end_in_the_same_order(network: type) -> None:
    # Prepare: the same transfers twice, once as events and once as callbacks: two of 60 MB
    # end at one instant, a third 2 ms later (its access link's latency), the slow one last;
    # plus a transfer within one host and a zero-byte one.
    capacity = {"shared": 100 * MB, "slow": 10 * MB, "a": 1e9, "b": 1e9, "c": 1e9}
    latency = {"shared": 0.01, "a": 0.002}
    paths = [["slow", "shared"], ["a", "shared"], ["b", "shared"], ["c", "shared"]]
    sizes = [100 * MB, 60 * MB, 60 * MB, 60 * MB]

    def run(as_callbacks: bool) -> tuple[list[tuple[object, float]], dict[object, float]]:
        env = simpy.Environment()
        net = network(env, capacity=capacity, latency=latency)
        ended: list[tuple[object, float]] = []
        keys: list[object] = []
        for i, (path, size) in enumerate(zip(paths, sizes, strict=True)):
            if as_callbacks:

                def then(value: None, i: int = i) -> None:
                    assert value is None
                    ended.append((i, env.now))

                net.send(path, size, then)
                keys.append(then)
            else:
                event = net.transfer(path, size)
                event.callbacks.append(lambda e, i=i: ended.append((i, e.value.end)))
                keys.append(event)
        env.run(until=1)
        rates = {i: net.rates()[key] for i, key in enumerate(keys)}
        env.run()
        return ended, rates

    # Execute
    events, event_rates = run(as_callbacks=False)
    callbacks, callback_rates = run(as_callbacks=True)
    env = simpy.Environment()
    net = network(env, capacity=capacity)
    local: list[float] = []
    net.send([], 5 * MB, lambda _: local.append(env.now))
    net.send(["a"], 0, lambda _: local.append(env.now))
    env.run()

    # Assert: the same ends, to the bit and in the same order; the same rates, by callback;
    # within one host at once, zero bytes at the path's latency (none here); bad input refused.
    assert callbacks == events
    assert [i for i, _ in callbacks] == [2, 3, 1, 0] and callbacks[0][1] == callbacks[1][1]
    assert callback_rates == event_rates
    assert local == [0.0, 0.0]
    with pytest.raises(ValueError, match="unknown links"):
        net.send(["nowhere"], MB, lambda _: None)
    with pytest.raises(ValueError, match="nbytes"):
        net.send(["a"], -1, lambda _: None)


@pytest.mark.parametrize("same_path", [True, False], ids=["one-bundle", "own-access"])
def test_ending_flow_frees_bandwidth_for_the_others(same_path: bool) -> None:
    # Prepare: 300 MB over 100 MB/s; 100 MB left each at 3 s, then 100 MB at 50 MB/s each.
    env = simpy.Environment()
    net = FlowNetwork(env, capacity={"l": 100 * MB, 0: 1e9, 1: 1e9, 2: 1e9})
    paths = [["l"]] * 3 if same_path else [[i, "l"] for i in range(3)]

    # Execute
    events = [
        net.transfer(path, size * MB) for path, size in zip(paths, [100, 200, 300], strict=True)
    ]
    env.run()

    # Assert
    assert _ends(events) == pytest.approx([3.0, 5.0, 6.0], rel=1e-12)


def test_latency_adds_once_per_transfer() -> None:
    # Prepare
    env = simpy.Environment()
    links = {"a": 0.1, "b": 0.2, "c": 0.3}
    net = FlowNetwork(env, capacity=dict.fromkeys(links, 100 * MB), latency=links)

    # Execute
    full = net.transfer(["a", "b", "c"], 100 * MB)
    empty = net.transfer(["a", "b", "c"], 0)
    local = net.transfer([], 100 * MB)
    env.run()

    # Assert
    assert full.value.end == pytest.approx(1.6, rel=1e-12)
    assert empty.value.end == pytest.approx(0.6, rel=1e-12)
    assert local.value == FlowRecord(0, 0, 100 * MB)


def test_per_flow_cap_leaves_the_rest_to_uncapped_flows() -> None:
    # Prepare
    env = simpy.Environment()
    net = FlowNetwork(env, capacity={"l": 100 * MB})

    # Execute
    capped = net.transfer(["l"], 40 * MB, cap=20 * MB)
    free = net.transfer(["l"], 80 * MB)
    env.run(until=0.5)
    rates = net.rates()
    env.run()

    # Assert
    assert rates == {capped: 20 * MB, free: 80 * MB}
    assert _ends([capped, free]) == [2.0, 1.0]


def test_download_and_upload_over_one_physical_link_do_not_share() -> None:
    # Prepare
    env = simpy.Environment()
    net = FlowNetwork(env, capacity={("s", "d"): 100 * MB, ("d", "s"): 100 * MB})

    # Execute
    down = net.transfer([("s", "d")], 100 * MB)
    up = net.transfer([("d", "s")], 100 * MB)
    env.run()

    # Assert
    assert _ends([down, up]) == [1.0, 1.0]


def test_counters_follow_active_and_delivered_flows() -> None:
    # Prepare
    env = simpy.Environment()
    net = FlowNetwork(env, capacity={"l": 100 * MB}, latency={"l": 0.5})
    net.transfer(["l"], 100 * MB)
    net.transfer(["l"], 50 * MB)

    # Execute
    env.run(until=1)
    during = (net.active_flows, net.bytes_delivered)
    env.run()

    # Assert
    assert during == (2, 0.0)
    assert (net.active_flows, net.bytes_delivered) == (0, 150 * MB)


@pytest.mark.parametrize(
    ("path", "nbytes", "cap"),
    [(["l"], -1, math.inf), (["x"], 1, math.inf), (["l", "l"], 1, math.inf), (["l"], 1, 0)],
    ids=["negative-bytes", "unknown-link", "repeated-link", "zero-cap"],
)
def test_transfer_rejects_invalid_requests(path: list[str], nbytes: float, cap: float) -> None:
    # Prepare
    net = FlowNetwork(simpy.Environment(), capacity={"l": 1.0})

    # Execute / Assert
    with pytest.raises(ValueError):
        net.transfer(path, nbytes, cap=cap)


def test_network_rejects_non_positive_capacity() -> None:
    with pytest.raises(ValueError):
        FlowNetwork(simpy.Environment(), capacity={"l": 0.0})


def test_reference_rates_on_a_textbook_example() -> None:
    # Prepare: flow 0 crosses both links; link b is also used by two one-hop flows.
    paths = [("a", "b"), ("a",), ("b",), ("b",)]

    # Execute
    rates = max_min_rates(paths, {"a": 10.0, "b": 9.0}, [math.inf, math.inf, math.inf, 1.0])

    # Assert: flow 3 is capped at 1, the other b-users split 8, flow 1 takes what is left on a.
    assert rates == pytest.approx([4.0, 6.0, 4.0, 1.0])


def _star(devices: int, server: float, down: float, up: float) -> dict:
    capacity = {("srv", "sw"): server, ("sw", "srv"): server}
    for i in range(devices):
        capacity[("sw", i)] = down
        capacity[(i, "sw")] = up
    return capacity


@pytest.mark.parametrize("own_access", [True, False], ids=["own-access", "one-bundle"])
def test_ten_thousand_identical_flows_end_together(own_access: bool) -> None:
    # Prepare
    devices, size, server = 10_000, 1 * MB, 1e9
    env = simpy.Environment()
    net = FlowNetwork(env, capacity=_star(devices, server, 2e9, 2e9))

    # Execute
    events = [
        net.transfer([("srv", "sw"), ("sw", i if own_access else 0)], size) for i in range(devices)
    ]
    env.run()

    # Assert
    ends = set(_ends(events))
    assert len(ends) == 1
    assert ends.pop() == pytest.approx(devices * size / server, rel=1e-9)


def test_ten_thousand_device_round_matches_the_analytic_answer() -> None:
    # Prepare: downloads share the server link; the uploads' own 1 MB/s links bind, because
    # the server's 20 GB/s exceed 10,000 x 1 MB/s.
    devices, size, server, up = 10_000, 1 * MB, 20e9, 1 * MB
    env = simpy.Environment()
    net = FlowNetwork(env, capacity=_star(devices, server, 1e9, up))
    compute = np.random.default_rng(0).uniform(0.1, 2.0, devices)
    uploads: list[simpy.Event] = []

    def device(i: int):
        yield net.transfer([("srv", "sw"), ("sw", i)], size)
        yield env.timeout(compute[i])
        upload = net.transfer([(i, "sw"), ("sw", "srv")], size)
        uploads.append(upload)
        yield upload

    # Execute
    for i in range(devices):
        env.process(device(i))
    env.run()

    # Assert
    download_end = devices * size / server
    starts = np.array([u.value.start for u in uploads])
    ends = np.array(_ends(uploads))
    assert starts == pytest.approx(download_end + np.sort(compute), rel=1e-9)
    assert ends == pytest.approx(starts + size / up, rel=1e-9)


def _tree_scenario(seed: int) -> tuple[dict, dict, list[tuple[float, tuple, float, float]]]:
    """A random tree of hosts and random transfers between them, with ties on purpose."""
    rng = np.random.default_rng(seed)
    hosts = int(rng.integers(3, 10))
    parent = {i: int(rng.integers(0, i)) for i in range(1, hosts)}
    capacity, latency = {}, {}
    for child, up in parent.items():
        for link in ((child, up), (up, child)):
            capacity[link] = float(rng.choice([1, 2, 5])) * MB
            latency[link] = float(rng.choice([0.0, 0.01]))

    def to_root(host: int) -> list[int]:
        chain = [host]
        while chain[-1]:
            chain.append(parent[chain[-1]])
        return chain

    def path(src: int, dst: int) -> tuple:
        a, b = to_root(src), to_root(dst)
        while len(a) > 1 and len(b) > 1 and a[-2] == b[-2]:
            a.pop()
            b.pop()
        if a[-1] != b[-1]:
            raise AssertionError("chains end at the root")
        hops = a + b[-2::-1]
        return tuple(itertools.pairwise(hops))

    pairs = [tuple(rng.choice(hosts, 2, replace=False)) for _ in range(4)]
    flows = []
    for _ in range(int(rng.integers(5, 40))):
        src, dst = pairs[rng.integers(len(pairs))] if rng.random() < 0.5 else (0, 0)
        if src == dst:
            src, dst = rng.choice(hosts, 2, replace=False)
        start = float(rng.integers(0, 8)) * 0.5
        nbytes = float(rng.choice([0, 1 * MB, 2 * MB, rng.uniform(0.1, 3) * MB]))
        cap = float(rng.choice([math.inf, math.inf, 0.5 * MB, 1 * MB]))
        flows.append((start, path(int(src), int(dst)), nbytes, cap))
    return capacity, latency, flows


def _simulate(
    network_type: type,
    scenario: tuple,
    check_rates: bool,
    changes: tuple[tuple[float, tuple, float], ...] = (),
) -> list[float]:
    """End times of the scenario's flows; ``changes`` are (time, link, new capacity)."""
    capacity, latency, flows = scenario
    env = simpy.Environment()
    net = network_type(env, capacity=capacity, latency=latency)
    for when, link, new in changes:
        env.timeout(when).callbacks.append(
            lambda _, link=link, new=new: net.set_capacity(link, new)
        )
    events: list[simpy.Event | None] = [None] * len(flows)
    spec: dict[simpy.Event, tuple] = {}

    def launch(i: int, start: float, path: tuple, nbytes: float, cap: float):
        yield env.timeout(start)
        events[i] = net.transfer(path, nbytes, cap=cap)
        spec[events[i]] = (path, cap)

    for i, flow in enumerate(flows):
        env.process(launch(i, *flow))
    while env.peek() < math.inf:
        env.step()
        if check_rates:
            rates = net.rates()
            paths, caps = zip(*(spec[e] for e in rates), strict=True) if rates else ((), ())
            now = {link: net.capacity(link) for link in capacity}
            expected = max_min_rates(list(paths), now, list(caps))
            assert list(rates.values()) == pytest.approx(expected, rel=1e-9)
    return _ends(events)


@pytest.mark.parametrize("seed", range(30))
def test_rates_and_end_times_match_the_reference_on_random_trees(seed: int) -> None:
    # Execute: rates are checked against max_min_rates after every simulation step.
    fast = _simulate(FlowNetwork, _tree_scenario(seed), check_rates=True)
    naive = _simulate(NaiveFlowNetwork, _tree_scenario(seed), check_rates=False)

    # Assert
    assert fast == pytest.approx(naive, rel=1e-9, abs=1e-12)


def test_jittered_round_matches_the_naive_simulator() -> None:
    # Prepare: a congested server link in both directions, uploads at distinct times.
    devices, size = 300, 5 * MB
    compute = np.random.default_rng(1).lognormal(0.0, 0.5, devices)

    def run(network_type: type) -> list[float]:
        env = simpy.Environment()
        net = network_type(env, capacity=_star(devices, 100 * MB, 2 * MB, 1 * MB))
        ends = [0.0] * devices

        def device(i: int):
            yield net.transfer([("srv", "sw"), ("sw", i)], size)
            yield env.timeout(compute[i])
            ends[i] = (yield net.transfer([(i, "sw"), ("sw", "srv")], size)).end

        for i in range(devices):
            env.process(device(i))
        env.run()
        return ends

    # Execute
    fast, naive = run(FlowNetwork), run(NaiveFlowNetwork)

    # Assert
    assert fast == pytest.approx(naive, rel=1e-9)


@pytest.mark.parametrize("network_type", [FlowNetwork, NaiveFlowNetwork])
def test_capacity_change_midway_reshapes_end_times(network_type):
    # Prepare: one 100 MB flow on a 100 MB/s link; at t=0.5 s the link drops to 25 MB/s.
    env = simpy.Environment()
    net = network_type(env, capacity={"l": 100 * MB})
    done = net.transfer(["l"], 100 * MB)
    env.timeout(0.5).callbacks.append(lambda _: net.set_capacity("l", 25 * MB))
    # Execute
    env.run()
    # Assert: 50 MB in the first 0.5 s, the other 50 MB at 25 MB/s take 2 s.
    assert done.value.end == pytest.approx(2.5)


@pytest.mark.parametrize("network_type", [FlowNetwork, NaiveFlowNetwork])
def test_capacity_change_on_a_shared_link(network_type):
    # Two 100 MB flows share 100 MB/s; at t=1 s the link doubles: 50 MB left each at 100 MB/s.
    env = simpy.Environment()
    net = network_type(env, capacity={"a": 1e12, "b": 1e12, "s": 100 * MB})
    ends = [net.transfer([x, "s"], 100 * MB) for x in ("a", "b")]
    env.timeout(1.0).callbacks.append(lambda _: net.set_capacity("s", 200 * MB))
    env.run()
    assert [e.value.end for e in ends] == pytest.approx([1.5, 1.5])
    with pytest.raises(ValueError):
        net.set_capacity("s", 0)
    with pytest.raises(ValueError):
        net.set_capacity("nope", 1.0)


def _fleet_scenario(
    seed: int, groups: int
) -> tuple[dict, dict, list[tuple[float, tuple, float, float]]]:
    """Devices with their own access-link capacities, downloading from and uploading to a server.

    ``groups=0`` is a star (device -> switch -> server link); otherwise a tree (device -> group
    uplink -> backbone -> server link). Every link has its own random capacity.
    """
    rng = np.random.default_rng(seed)

    def both(a: object, b: object, median: float) -> None:
        capacity[(a, b)] = float(median * rng.lognormal(0.0, 0.7)) * MB
        capacity[(b, a)] = float(median * rng.lognormal(0.0, 0.7)) * MB / 2
        latency[(a, b)] = float(rng.choice([0.0, 0.005]))

    capacity: dict[tuple, float] = {}
    latency: dict[tuple, float] = {}
    both("srv", "core", 40)
    trunks: list[list[tuple]] = []
    if groups:
        both("core", "bb", 40)
        for group in range(groups):
            both("bb", ("g", group), 15)
            trunks.append([("srv", "core"), ("core", "bb"), ("bb", ("g", group))])
    else:
        trunks.append([("srv", "core")])
    downs = []
    for trunk in trunks:
        for _ in range(int(rng.integers(1, 12))):
            device = len(downs)
            both(trunk[-1][1], device, 5)
            downs.append((*trunk, (trunk[-1][1], device)))
    flows = []
    for _ in range(int(rng.integers(5, 60))):
        down = downs[int(rng.integers(len(downs)))]
        path = down if rng.random() < 0.6 else tuple((b, a) for a, b in reversed(down))
        start = float(rng.integers(0, 10)) * 0.25
        nbytes = float(rng.choice([0, 1 * MB, 2 * MB, rng.uniform(0.1, 4) * MB]))
        cap = float(rng.choice([math.inf, math.inf, math.inf, rng.uniform(0.5, 3) * MB]))
        flows.append((start, path, nbytes, cap))
    return capacity, latency, flows


@pytest.mark.parametrize("groups", [0, 1, 3], ids=["star", "tree-1-group", "tree-3-groups"])
@pytest.mark.parametrize("seed", range(20))
def test_own_access_capacities_match_the_reference(seed: int, groups: int) -> None:
    # Prepare: every device has its own link speeds, so nearly every flow has its own cap.
    scenario = _fleet_scenario(seed, groups)

    # Execute: rates are checked against max_min_rates after every simulation step.
    fast = _simulate(FlowNetwork, scenario, check_rates=True)
    naive = _simulate(NaiveFlowNetwork, scenario, check_rates=False)

    # Assert
    assert fast == pytest.approx(naive, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("groups", [0, 3], ids=["star", "tree-3-groups"])
@pytest.mark.parametrize("seed", range(10))
def test_own_access_capacities_follow_capacity_changes(seed: int, groups: int) -> None:
    # Prepare: links chosen at random halve or triple while flows run, which moves levels
    # across many caps at once.
    scenario = _fleet_scenario(seed, groups)
    rng = np.random.default_rng(seed)
    links = sorted(scenario[0], key=str)
    changes = []
    for _ in range(6):
        link = links[int(rng.integers(len(links)))]
        when = float(rng.integers(1, 12)) * 0.25 + 0.1
        changes.append((when, link, scenario[0][link] * float(rng.choice([0.5, 3.0]))))

    # Execute
    fast = _simulate(FlowNetwork, scenario, check_rates=True, changes=tuple(changes))
    naive = _simulate(NaiveFlowNetwork, scenario, check_rates=False, changes=tuple(changes))

    # Assert
    assert fast == pytest.approx(naive, rel=1e-9, abs=1e-12)


def test_a_link_that_becomes_its_routes_narrowest_again_is_solved_again() -> None:
    # Prepare: group A's route crosses two uplinks in series, a1 and a2; capacity changes make
    # each in turn the narrower, while a new flow on the route changes its load in between, so
    # a level kept from a2's last turn would be out of date when its turn comes back.
    capacity = {"s": 30 * MB, "a1": 20 * MB, "a2": 5 * MB, "b": 12 * MB}
    capacity.update({("d", i): (3 + i) * MB for i in range(6)})
    flows = [
        (0.0, ("s", "a1", "a2", ("d", 0)), 40 * MB, math.inf),
        (0.0, ("s", "a1", "a2", ("d", 1)), 40 * MB, math.inf),
        (0.0, ("s", "b", ("d", 2)), 40 * MB, math.inf),
        (1.5, ("s", "a1", "a2", ("d", 3)), 40 * MB, math.inf),
        (2.5, ("s", "a1", "a2", ("d", 4)), 40 * MB, 2 * MB),
        (0.5, ("s", "b", ("d", 5)), 40 * MB, math.inf),
    ]
    scenario = (capacity, {}, flows)
    changes = ((1.0, "a2", 50 * MB), (2.0, "a1", 60 * MB), (3.0, "a1", 6 * MB))

    # Execute: rates are checked against max_min_rates after every simulation step.
    fast = _simulate(FlowNetwork, scenario, check_rates=True, changes=changes)
    naive = _simulate(NaiveFlowNetwork, scenario, check_rates=False, changes=changes)

    # Assert
    assert fast == pytest.approx(naive, rel=1e-9, abs=1e-12)


def _regions_scenario(seed: int) -> tuple[dict, dict, list[tuple[float, tuple, float, float]]]:
    """Devices behind group uplinks, groups behind region uplinks, regions behind the server's.

    Each group's route has a link of its own (its uplink), each region's link carries several
    routes, and the server's carries them all: shared links at two depths, every one with its
    own random capacity, so levels are set by group uplinks, region links and the server's.
    """
    rng = np.random.default_rng(seed)
    capacity: dict[tuple, float] = {("srv", "top"): float(rng.uniform(10, 60)) * MB}
    trunks = []
    for region in range(2):
        capacity[("top", ("r", region))] = float(rng.uniform(5, 30)) * MB
        for group in range(3):
            uplink = (("r", region), ("g", region, group))
            capacity[uplink] = float(rng.uniform(2, 15)) * MB
            trunks.append((("srv", "top"), ("top", ("r", region)), uplink))
    flows = []
    for device in range(int(rng.integers(10, 50))):
        trunk = trunks[int(rng.integers(len(trunks)))]
        access = (trunk[-1][1], ("d", device))
        capacity[access] = float(rng.lognormal(0.0, 0.7)) * 3 * MB
        start = float(rng.integers(0, 10)) * 0.25
        nbytes = float(rng.choice([1 * MB, 2 * MB, rng.uniform(0.1, 4) * MB]))
        cap = float(rng.choice([math.inf, math.inf, rng.uniform(0.5, 3) * MB]))
        flows.append((start, (*trunk, access), nbytes, cap))
    return capacity, {}, flows


@pytest.mark.parametrize("seed", range(15))
def test_shared_links_at_two_depths_match_the_reference(seed: int) -> None:
    # Prepare: region links and the server's link both carry several routes, so a fill stops
    # routes at either while others stay at their group uplink's level.
    scenario = _regions_scenario(seed)
    links = sorted(scenario[0], key=str)
    rng = np.random.default_rng(seed)
    changes = tuple(
        (0.3 + 0.5 * k, links[int(rng.integers(len(links)))], float(rng.uniform(2, 40)) * MB)
        for k in range(4)
    )

    # Execute: rates are checked against max_min_rates after every simulation step.
    fast = _simulate(FlowNetwork, scenario, check_rates=True, changes=changes)
    naive = _simulate(NaiveFlowNetwork, scenario, check_rates=False, changes=changes)

    # Assert
    assert fast == pytest.approx(naive, rel=1e-9, abs=1e-12)
