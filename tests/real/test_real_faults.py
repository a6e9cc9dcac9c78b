"""Real mode runs what the simulator runs: hierarchical rounds (relay and forward over HTTP),
dropouts and outages, on a server and four agent processes on loopback.

One cluster serves the module's tests (starting four agents is most of the cost); each test
runs its own coordinator and transport on its own task channel.
"""

from __future__ import annotations

import threading
import time
import urllib.request

import numpy as np
import pytest
from clusters import digits_cluster
from prometheus_client.parser import text_string_to_metric_families
from topologies import grouped

from fedsim.core.coordinator import ClientWork, Coordinator, FederatedConfig
from fedsim.core.events import EventKind
from fedsim.core.faults import FaultPlan, Outage
from fedsim.core.registry import DeviceState
from fedsim.core.runtime import ModelRef
from fedsim.core.strategies.fedavg import FedAvg
from fedsim.core.topology import Topology
from fedsim.ml.spec import model_spec
from fedsim.ml.train import TorchTrainer
from fedsim.real.faults import OutageDriver
from fedsim.real.launch import LocalCluster
from fedsim.real.transport import HttpTransport

pytestmark = pytest.mark.slow

CLIENTS = [1, 2, 3, 4]
GROUPS = {1: 1, 2: 1, 3: 2, 4: 2}  # device -> group; aggregators: 1 and 3
MODEL = "digits_cnn"


def topology() -> Topology:
    return grouped(GROUPS)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with digits_cluster(tmp_path_factory.mktemp("cluster"), topology(), CLIENTS) as running:
        yield running


def coordinator(
    cluster: LocalCluster, channel: str, config: FederatedConfig, **transport_args
) -> Coordinator:
    spec = model_spec(MODEL, input_size=8, num_classes=10)
    transport = HttpTransport(
        board=cluster.board,
        repository=cluster.repository,
        server=0,
        channel=channel,
        **transport_args,
    )
    trainer = TorchTrainer(model_name=MODEL, num_classes=10, data={}, seed=0)
    return Coordinator(
        transport=transport,
        strategy=FedAvg(),
        work=ClientWork(
            samples=dict.fromkeys(CLIENTS, 120),
            train_flops_per_sample=float(spec.train_flops),
            update_nbytes=spec.state_bytes,
            state_values=spec.state_values,
            config={"model": MODEL, "num_classes": 10, "input_size": 8, "seed": 0},
        ),
        model=ModelRef(name=MODEL, version=0, nbytes=spec.state_bytes),
        parameters=trainer.initial_parameters(),
        config=config,
        groups=GROUPS,
    )


def model_bytes_served(cluster: LocalCluster) -> float:
    """What the server's ``fedsim_bytes_sent_total{kind="model"}`` says it has sent."""
    with urllib.request.urlopen(cluster.server.url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    # The counter has no sample before the first model download.
    return next(
        (
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == "fedsim_bytes_sent_total" and sample.labels == {"kind": "model"}
        ),
        0.0,
    )


def changed(before: dict[str, np.ndarray], after: dict[str, np.ndarray]) -> bool:
    return any(not np.array_equal(before[k], after[k]) for k in before)


def test_a_hierarchical_round_relays_and_forwards_through_the_aggregators(cluster):
    # Prepare
    coord = coordinator(
        cluster, "hier:", FederatedConfig(rounds=1, hierarchical=True, deadline_s=60)
    )
    initial = dict(coord.parameters)
    served_before = model_bytes_served(cluster)

    # Execute
    [report] = coord.run(CLIENTS)

    # Assert: both groups reached the cloud, and the model moved.
    assert report.aggregated and report.failures == {} and report.rejected == {}
    assert sorted(report.completed) == [1, 3]  # one update per group, from its aggregator
    assert changed(initial, coord.parameters)
    events = list(coord.transport.events)
    relays = [e for e in events if e.task.startswith("r0-relay")]
    forwards = [e for e in events if e.task.startswith("r0-forward")]
    assert {(e.device, e.kind) for e in relays} == {
        (1, EventKind.MODEL_DOWNLOAD),
        (3, EventKind.MODEL_DOWNLOAD),
    }
    assert all(e.nbytes > 0 for e in relays)
    assert {(e.device, e.kind) for e in forwards} == {
        (1, EventKind.UPDATE_UPLOAD),
        (3, EventKind.UPDATE_UPLOAD),
    }
    # A group's forwarded update is as large as its members' updates.
    members_up = {
        e.device: e.nbytes for e in events if e.kind is EventKind.UPDATE_UPLOAD and "-d" in e.task
    }
    assert {e.device: e.nbytes for e in forwards} == {1: members_up[1], 3: members_up[3]}
    # Every member trained on the model its aggregator relayed: downloads after the relays.
    relayed_at = {e.device: e.end for e in relays}
    for d in CLIENTS:
        [fetch] = [e for e in events if e.task == f"r0-d{d}" and e.kind is EventKind.MODEL_DOWNLOAD]
        assert fetch.start >= relayed_at[1 if GROUPS[d] == 1 else 3] - 1e-6
    # The server sent the model twice, once to each aggregator: the members fetched it from
    # their aggregator's agent.
    assert model_bytes_served(cluster) - served_before == sum(e.nbytes for e in relays)


def test_dropped_devices_miss_the_deadline_the_others_aggregate_and_rounds_go_on(cluster):
    # Prepare: find a seed whose draws (one per fit task, in submit order: devices 1..4 in
    # round 0, then round 1) drop some but not all of round 0 and none of round 1.
    dropout = 0.5
    seed = next(
        s
        for s in range(1000)
        if (draws := FaultPlan.dropout_draws(s).random(8) < dropout)[:4].any()
        and not draws[:4].all()
        and not draws[4:].any()
    )
    draws = FaultPlan.dropout_draws(seed).random(4) < dropout
    dropped = {d for d, gone in zip(CLIENTS, draws, strict=True) if gone}
    coord = coordinator(
        cluster,
        "drop:",
        FederatedConfig(rounds=2, deadline_s=8),
        faults=FaultPlan(dropout=dropout),
        seed=seed,
    )
    initial = dict(coord.parameters)

    # Execute
    first, second = coord.run(CLIENTS)

    # Assert
    assert set(first.failures) == dropped
    assert sorted(first.completed) == sorted(set(CLIENTS) - dropped)
    assert first.aggregated and changed(initial, coord.parameters)
    assert first.duration >= 8 - 0.5  # the round waited for the dropped devices until its deadline
    assert second.aggregated and sorted(second.completed) == CLIENTS
    assert cluster.board.pending() == []  # nothing dropped is left behind on the board


def test_an_outage_stops_the_agent_and_it_comes_back_for_a_later_round(cluster):
    # Prepare: device 4 is down for the first 3 s of the transport's clock, as round 0 starts.
    victim, start, end = 4, 0.0, 3.0
    coord = coordinator(cluster, "outage:", FederatedConfig(rounds=3, deadline_s=10))
    transport = coord.transport
    process = cluster.agents[victim]
    seen: dict[str, bool] = {}

    def watch() -> None:
        # Look at the agent process in the middle of the outage.
        while transport.now() < (start + end) / 2:
            time.sleep(0.05)
        seen["old_alive"] = process.poll() is None
        seen["running"] = victim in cluster.agents

    watcher = threading.Thread(target=watch, daemon=True)

    # Execute
    with OutageDriver(cluster, [Outage(device=victim, start=start, end=end)], transport.now):
        watcher.start()
        reports = coord.run(CLIENTS)
    watcher.join()

    # Assert: gone in the window (killed, no process); round 0 went on without it; a new
    # process registered again and the device trained in a later round.
    assert seen == {"old_alive": False, "running": False}
    assert cluster.agents[victim].pid != process.pid
    first, *later = reports
    assert first.aggregated and victim in first.failures
    assert sorted(first.completed) == [d for d in CLIENTS if d != victim]
    assert victim in later[-1].completed and all(r.aggregated for r in later)
    assert cluster.registry.get(victim).state in (DeviceState.ONLINE, DeviceState.BUSY)
