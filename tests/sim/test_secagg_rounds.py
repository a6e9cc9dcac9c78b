"""Secure aggregation in simulated synchronous rounds: same model as FedAvg, its cost charged."""

import numpy as np
import pytest
from topologies import grouped, hardware, link

from fedsim.core.coordinator import ClientWork, Coordinator, FederatedConfig
from fedsim.core.events import EventKind
from fedsim.core.faults import FaultPlan
from fedsim.core.runtime import ModelRef
from fedsim.core.secagg import SecAggDevices, SecAggParams, SecureAggregation
from fedsim.core.strategies.fedavg import FedAvg
from fedsim.core.strategies.median import Median
from fedsim.real.secagg_crypto import X25519Crypto
from fedsim.sim.runtime import SimTransport

TARGETS = {d: np.linspace(-1.0, 1.0, 64).astype(np.float32) * d for d in range(1, 21)}
SECAGG_KINDS = {EventKind.SECAGG, EventKind.SECAGG_DOWNLOAD, EventKind.SECAGG_UPLOAD}


def pull_trainer(dev, ins):
    """Moves the parameters halfway to the device's own target."""
    w = ins.parameters["w"]
    return {"w": (w + 0.5 * (TARGETS[dev] - w)).astype(np.float32)}, {"loss": float(dev)}


def coordinator(n, *, secagg, faults=None, rounds=2, strategy=None, **kw):
    topo = grouped(
        dict.fromkeys(range(1, n + 1), 1),
        uplink=link("wan", 10.0, latency_s=0.001),
        access=link("lan", 100.0),
        client_hardware=lambda i: hardware("cli", 1.0),
    )
    clients = list(range(1, n + 1))
    coord = Coordinator(
        transport=SimTransport(
            topo,
            seed=0,
            trainer=pull_trainer,
            faults=faults,
            secagg=SecAggDevices(crypto=X25519Crypto()),
        ),
        strategy=strategy or FedAvg(),
        work=ClientWork(
            samples={d: 10 * d for d in clients},
            train_flops_per_sample=1e9,
            update_nbytes=256,
            state_values=64,
        ),
        model=ModelRef(name="m", version=0, nbytes=256),
        parameters={"w": np.zeros(64, np.float32)},
        config=FederatedConfig(rounds=rounds, **kw),
        secagg=secagg,
    )
    return coord, clients


def secure(**params):
    return SecureAggregation(params=SecAggParams(**params), crypto=X25519Crypto())


def test_secure_rounds_reach_the_fedavg_model():
    # Prepare
    plain, clients = coordinator(6, secagg=None)
    masked, _ = coordinator(6, secagg=secure(bits=32, clip=10.0, neighbours=4))
    # Execute
    plain_history = plain.run(clients)
    masked_history = masked.run(clients)
    # Assert: the same model within quantization, the same loss, every client in
    np.testing.assert_allclose(masked.parameters["w"], plain.parameters["w"], atol=1e-5)
    assert all(r.aggregated and sorted(r.completed) == clients for r in masked_history)
    assert masked_history[0].train_loss == pytest.approx(plain_history[0].train_loss)


def test_secure_rounds_charge_their_messages_and_compute():
    # Prepare
    plain, clients = coordinator(4, secagg=None, rounds=1)
    masked, _ = coordinator(4, secagg=secure(), rounds=1)
    # Execute
    plain_round = plain.run(clients)[0]
    masked_round = masked.run(clients)[0]
    # Assert: each client's four protocol stages are events with bytes, the server unmasks,
    # and the round takes longer than without
    events = masked.transport.events.events
    kinds = {e.kind for e in events}
    assert kinds >= SECAGG_KINDS
    stages = {e.task.split("-")[2] for e in events if e.kind is EventKind.SECAGG and e.device}
    assert stages == {"advertise", "share", "mask", "unmask"}
    assert all(e.nbytes > 0 for e in events if e.kind is EventKind.SECAGG_UPLOAD)
    assert any(e.kind is EventKind.SECAGG and e.device == 0 for e in events)
    assert masked_round.duration > plain_round.duration
    # the masked input replaces the update: 64 values x 4 bytes
    uploads = [e for e in events if e.kind is EventKind.UPDATE_UPLOAD]
    assert {e.nbytes for e in uploads} == {64 * 4}


def test_secure_round_completes_when_clients_drop_before_their_input():
    # Prepare: about a third of the fit tasks drop out, after keys were shared
    coord, clients = coordinator(
        10, secagg=secure(threshold=0.3), faults=FaultPlan(dropout=0.3), rounds=3
    )
    # Execute
    history = coord.run(clients)
    # Assert: rounds with dropouts still aggregate, from their survivors only
    dropped = [r for r in history if len(r.completed) < len(clients)]
    assert dropped and all(r.aggregated for r in history)
    assert all(f == "no result before the deadline" for r in dropped for f in r.failures.values())


def test_secure_round_below_the_threshold_is_not_aggregated():
    # Prepare: most fit tasks drop; 90% of each neighbourhood must stay
    coord, clients = coordinator(
        8, secagg=secure(threshold=0.9), faults=FaultPlan(dropout=0.6), rounds=1
    )
    # Execute
    report = coord.run(clients)[0]
    # Assert: reported as failed, the version stays
    assert not report.aggregated and report.version is None
    assert "below the threshold" in report.failures[-1]
    assert coord.model.version == 0


def test_secure_aggregation_refuses_a_rule_that_needs_each_update():
    with pytest.raises(ValueError, match="needs strategy fedavg"):
        coordinator(4, secagg=secure(), strategy=Median())
