"""Secure aggregation in real mode: the protocol's stages over HTTP, the devices' side in the
agents, on a server and four agent processes on loopback.

What the server receives is inspected where it files it (the task board's outcomes): masked
inputs, never an update in the clear. An agent killed after key sharing leaves the round above
the threshold, which completes, and below it, which fails with the reason and does not hang.
"""

from __future__ import annotations

import numpy as np
import pytest
from clusters import digits_cluster
from topologies import grouped

from fedsim.core.coordinator import ClientWork, Coordinator, FederatedConfig
from fedsim.core.events import EventKind
from fedsim.core.runtime import ModelRef, SecAggIns, Task
from fedsim.core.secagg import SecAggParams, SecureAggregation
from fedsim.core.strategies.fedavg import FedAvg
from fedsim.ml.spec import model_spec
from fedsim.ml.train import TorchTrainer
from fedsim.real.board import Outcome
from fedsim.real.launch import LocalCluster
from fedsim.real.protocol import FitTask, SecAggTask
from fedsim.real.secagg_crypto import X25519Crypto
from fedsim.real.transport import HttpTransport

pytestmark = pytest.mark.slow

CLIENTS = [1, 2, 3, 4]
MODEL = "digits_cnn"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with digits_cluster(
        tmp_path_factory.mktemp("cluster"), grouped(dict.fromkeys(CLIENTS, 1)), CLIENTS
    ) as running:
        yield running


class KillAfterSharing(HttpTransport):
    """Kills ``victim``'s agent process once key sharing is over, before the mask stage."""

    def __init__(self, cluster: LocalCluster, victim: int, **kw) -> None:
        super().__init__(**kw)
        self.cluster, self.victim = cluster, victim

    def submit(self, tasks: list[Task]) -> None:
        if any(isinstance(t.ins, SecAggIns) and t.ins.stage == "mask" for t in tasks):
            self.cluster.stop_agent(self.victim, kill=True)
        super().submit(tasks)


def coordinator(
    cluster: LocalCluster,
    channel: str,
    *,
    threshold: float = 0.5,
    deadline_s: float = 30,
    victim: int | None = None,
) -> Coordinator:
    spec = model_spec(MODEL, input_size=8, num_classes=10)
    args = dict(board=cluster.board, repository=cluster.repository, server=0, channel=channel)
    transport = (
        HttpTransport(**args) if victim is None else KillAfterSharing(cluster, victim, **args)  # type: ignore[arg-type]
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
        config=FederatedConfig(rounds=1, deadline_s=deadline_s),
        secagg=SecureAggregation(
            params=SecAggParams(bits=32, clip=10.0, threshold=threshold, stage_timeout_s=5.0),
            crypto=X25519Crypto(),
        ),
    )


def recording(cluster: LocalCluster, monkeypatch) -> list[tuple[str, Outcome]]:
    """Every outcome the server files on its board from now on, with its task's kind."""
    filed: list[tuple[str, Outcome]] = []
    board = cluster.board
    finish = board.finish

    def record(outcome: Outcome) -> bool:
        task = board.get(outcome.task_id)
        message = task.message if task else None
        kind = "masked fit" if isinstance(message, FitTask) and message.secagg else "other"
        if isinstance(message, SecAggTask):
            kind = f"secagg {message.stage}"
        filed.append((kind, outcome))
        return finish(outcome)

    monkeypatch.setattr(board, "finish", record)
    return filed


def test_a_secure_round_over_http_gives_the_server_masked_inputs_only(cluster, monkeypatch):
    # Prepare
    filed = recording(cluster, monkeypatch)
    coord = coordinator(cluster, "secure:")
    initial = dict(coord.parameters)
    values = sum(np.asarray(a).size for a in initial.values())

    # Execute
    [report] = coord.run(CLIENTS)

    # Assert: the round aggregated all four, and the model moved.
    assert report.aggregated and report.failures == {}, report.failures
    assert sorted(report.completed) == CLIENTS
    assert any(not np.array_equal(initial[k], coord.parameters[k]) for k in initial)
    kinds = [k for k, _ in filed]
    for stage in ("advertise", "share", "mask", "unmask"):
        assert kinds.count(f"secagg {stage}") == 4
    masked = [o for k, o in filed if k == "masked fit"]
    assert len(masked) == 4
    for o in masked:
        # No arrays were decoded: the body is the masked input, 4 bytes a value.
        assert o.parameters is None and o.payload is not None
        assert len(o.payload) == 4 * values
        assert not o.payload.startswith(b"{") and b"__metadata__" not in o.payload[:4096]
        # A plain update in fixed point sits within 2^24 of 0 (weights below 1, clip 10,
        # a quarter of the round's weight each); a masked one is spread over [0, 2^32).
        v = np.frombuffer(o.payload, dtype="<u4").astype(np.int64)
        near_zero = np.mean((v < 2**24) | (v > 2**32 - 2**24))
        middle = np.mean((v >= 2**30) & (v < 3 * 2**30))
        assert near_zero < 0.02 and 0.45 < middle < 0.55
    # Secure aggregation's stages are events of the run, measured.
    kinds_seen = {e.kind for e in coord.transport.events}
    assert {EventKind.SECAGG, EventKind.SECAGG_UPLOAD, EventKind.SECAGG_DOWNLOAD} <= kinds_seen


def restart(cluster: LocalCluster, victim: int) -> None:
    cluster.start_agent(victim)
    cluster.wait_online([victim], timeout=120)


@pytest.mark.parametrize(
    ("threshold", "completes"),
    [(0.5, True), (1.0, False)],
    ids=["above-threshold", "below-threshold"],
)
def test_an_agent_killed_after_key_sharing(cluster, threshold, completes):
    # Prepare: threshold 0.5 needs 2 of a 4-client neighbourhood, 1.0 all 4.
    victim = 2
    coord = coordinator(
        cluster, f"kill{int(threshold * 10)}:", threshold=threshold, deadline_s=60, victim=victim
    )
    initial = dict(coord.parameters)

    # Execute
    try:
        [report] = coord.run(CLIENTS)
    finally:
        restart(cluster, victim)

    # Assert
    assert "mask stage" in report.failures[victim]
    if completes:
        # The three survivors' sum is unmasked: the victim's mask key rebuilt from its shares.
        assert report.aggregated and sorted(report.completed) == [1, 3, 4]
        assert any(not np.array_equal(initial[k], coord.parameters[k]) for k in initial)
    else:
        # Three survivors are below the threshold of four: no sum, the model stays, and why.
        assert not report.aggregated
        assert "below the threshold 4" in report.failures[-1]
        assert all(np.array_equal(initial[k], coord.parameters[k]) for k in initial)
    # It waited for the victim the mask stage's 5 s, not the round's 60 s deadline.
    assert 5 <= report.duration < 40
