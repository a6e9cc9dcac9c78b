"""Composition of a federated run: config -> data, trainer, strategy, coordinator -> report.

``experiment.kind: federated`` runs multi-round FL through the round coordinator on the
simulated runtime: with ``fl.training: real`` each client's shard trains a PyTorch model for
real while SimPy accounts the time; with ``modelled`` only time is simulated (for scale).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from fedsim import __version__
from fedsim.app import build_workload
from fedsim.config import ConfigError, build_topology, clients_of
from fedsim.core.coordinator import (
    ClientWork,
    Coordinator,
    Evaluation,
    FederatedConfig,
    RoundReport,
)
from fedsim.core.critical_path import critical_path
from fedsim.core.events import Event, EventLog
from fedsim.core.results import FederatedResult, RoundRow
from fedsim.core.runtime import Cost, ModelRef
from fedsim.core.scheduling import Reliability
from fedsim.core.selection import AllSelection, OortSelection, RandomSelection, ResourceAware
from fedsim.core.strategies.registry import make_strategy
from fedsim.core.topology import Topology
from fedsim.core.workload import WorkloadSpec
from fedsim.core.faults import FaultPlan, LinkChange, Outage

log = logging.getLogger(__name__)

SELECTIONS = ("all", "random", "resource", "oort")


def federated_config(c: Any) -> FederatedConfig:
    fields = {k: getattr(c, k) for k in FederatedConfig.__dataclass_fields__ if k in c}
    try:
        return FederatedConfig(**fields)
    except ValueError as e:
        raise ConfigError(f"fl.{e}") from None


def selector(name: str, model_bytes: float):
    if name == "all":
        return AllSelection()
    if name == "random":
        return RandomSelection()
    if name == "resource":
        return ResourceAware(model_bytes=model_bytes)
    if name == "oort":
        return OortSelection(model_bytes=model_bytes)
    raise ConfigError(f"fl.selection: {name!r} is not one of {', '.join(SELECTIONS)}")


def strategy_of(c: Any):
    params = {k: v for k, v in dict(c).items() if k != "name"}
    try:
        return make_strategy(c["name"], **params)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"strategy: {e}") from None


def fault_plan(c: Any, topology: Topology) -> FaultPlan:
    inf = float("inf")
    try:
        outages = []
        for i, o in enumerate(c.outages):
            if o.device not in topology.devices:
                raise ConfigError(f"faults.outages[{i}].device: no device {o.device}")
            outages.append(Outage(device=o.device, start=o.start_s, end=o.end_s or inf))
        names = {p.name for p in topology.link_profiles()}
        changes = []
        for i, ch in enumerate(c.link_changes):
            if ch.network not in names:
                raise ConfigError(f"faults.link_changes[{i}].network: no link uses {ch.network!r}")
            changes.append(
                LinkChange(
                    network=ch.network, start=ch.start_s, end=ch.end_s or inf, factor=ch.factor
                )
            )
        return FaultPlan(dropout=c.dropout, outages=outages, link_changes=changes)
    except ValueError as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"faults: {e}") from None


@contextmanager
def _runtime(
    cfg,
    topology,
    clients,
    run_dir,
    *,
    trainer,
    faults,
    shards,
    seed,
    flops,
    attached=None,
    channel="",
):
    """The transport, the scheduler's resource view and the model store of ``cfg.mode``.

    sim: SimPy over the topology, with the trainer run in-process and faults injected.
    real: a server and one agent process per client on loopback (LocalCluster).
    """
    name = "attached" if attached is not None else cfg.mode.name
    if name != "sim":
        if faults.dropout or faults.outages or faults.link_changes:
            raise ConfigError("faults: fault injection is simulated; in mode=real stop agents")
        if cfg.fl.hierarchical:
            raise ConfigError("fl.hierarchical: hierarchical rounds run in mode=sim only")
    if name == "sim":
        from fedsim.sim.resources import SimResources
        from fedsim.sim.runtime import SimTransport
        from fedsim.store.sqlite import SqliteRepository

        transport = SimTransport(topology, seed=seed, trainer=trainer, faults=faults)
        store = SqliteRepository(run_dir / "repository") if trainer is not None else None
        try:
            yield transport, SimResources(transport, train_flops_per_sample=flops), store
        finally:
            if store is not None:
                store.close()
    elif name == "attached":
        yield _over_server(attached, topology, clients, flops, channel)
    elif name == "real":
        from fedsim.real.jobs import Attached
        from fedsim.real.launch import LocalCluster

        with LocalCluster(
            run_dir=run_dir, topology=topology, clients=clients, shards=shards, mode=cfg.mode
        ) as cluster:
            server = Attached(
                board=cluster.board, repository=cluster.repository, registry=cluster.registry
            )
            yield _over_server(server, topology, clients, flops, channel)
    else:
        raise ConfigError(f"mode: {name!r} is not one of sim, real")


def _over_server(server, topology, clients, flops, channel):
    """Transport, resource view and store over a running server's board and stores."""
    from fedsim.real.resources import RegistryResources
    from fedsim.real.transport import HttpTransport

    transport = HttpTransport(
        board=server.board, repository=server.repository, server=topology.server, channel=channel
    )
    profiles = {d: topology.devices[d].hardware for d in clients}
    resources = RegistryResources(server.registry, train_flops_per_sample=flops, profiles=profiles)
    return transport, resources, server.repository


def _real_data(cfg: Any, clients: list[int], rng: np.random.Generator):
    """Shards of the data set per client, the test split and the label counts."""
    from fedsim.core.partition import dirichlet_partition, iid_partition, label_distribution
    from fedsim.ml.data import load_digits_split

    name = cfg.workload.dataset.name
    if name != "digits":
        raise ConfigError(f"workload.dataset.name: real training knows 'digits', not {name!r}")
    p = cfg.partition
    X, y, X_test, y_test = load_digits_split(test_fraction=p.test_fraction, seed=cfg.seed)
    if p.kind == "dirichlet":
        if not p.alpha > 0:
            raise ConfigError(f"partition.alpha: must be > 0, got {p.alpha}")
        parts = dirichlet_partition(y, len(clients), p.alpha, rng=rng, min_size=cfg.fl.batch_size)
    elif p.kind == "iid":
        parts = iid_partition(len(y), len(clients), rng)
    else:
        raise ConfigError(f"partition.kind: {p.kind!r} is not one of dirichlet, iid")
    shards = {dev: (X[idx], y[idx]) for dev, idx in zip(clients, parts, strict=True)}
    counts = label_distribution(y, parts)
    labels = {dev: [int(v) for v in row] for dev, row in zip(clients, counts, strict=True)}
    return shards, (X_test, y_test), labels


class _RoundRows:
    """Turns each round's report and events into a row as the round ends.

    Rows are made while the events are at hand, so that a long run need keep only the first
    ``max_events`` events for the events table (memory stays bounded at any scale).
    """

    def __init__(self, log: EventLog, max_events: int) -> None:
        self.log, self.max_events = log, max_events
        self.rows: list[RoundRow] = []
        self._mark = 0
        self.dropped = 0

    def __call__(self, r: RoundReport) -> None:
        fresh = self.log.events[self._mark :]
        self.rows.append(_row(r, fresh))
        if len(self.log.events) > self.max_events:
            self.dropped += len(self.log.events) - self.max_events
            del self.log.events[self.max_events :]
        self._mark = len(self.log.events)


def _row(r: RoundReport, events: list[Event]) -> RoundRow:
    inside = [e for e in events if e.start >= r.started - 1e-9 and e.end <= r.finished + 1e-9]
    parts = critical_path(inside, r.started, r.finished)
    return RoundRow(
        round=r.round,
        version=r.version.version if r.version else None,
        started_s=r.started,
        finished_s=r.finished,
        total_s=r.duration,
        transfer_s=parts.transfer,
        compute_s=parts.compute,
        aggregation_s=parts.aggregation,
        waiting_s=parts.waiting,
        bytes_moved=sum(e.nbytes for e in inside),
        selected=len(r.selected),
        completed=len(r.completed),
        failed=len(r.failures),
        rejected=len(r.rejected),
        aggregated=r.aggregated,
        train_loss=r.train_loss,
        accuracy=r.metrics.get("accuracy"),
        eval_loss=r.metrics.get("loss"),
        staleness=r.staleness,
    )


def _to_target(rows: list[RoundRow], target: float | None) -> tuple[int | None, float | None]:
    if target is None:
        return None, None
    for row in rows:
        if row.accuracy is not None and row.accuracy >= target:
            return row.round, row.finished_s
    return None, None


def run_federated(
    cfg: Any,
    run_dir: Path,
    conf_dir: Path | None = None,
    *,
    attached: Any = None,
    on_round: Callable[[dict[str, Any]], None] | None = None,
    task_prefix: str = "",
) -> FederatedResult:
    """Run the configured federated training and write its results to ``run_dir``.

    ``attached`` (a :class:`fedsim.real.jobs.Attached`) runs it over a server that is already
    up, as a job; ``on_round`` gets each round's row as it ends.
    """
    from tqdm import tqdm

    from fedsim.report.console import console_federated
    from fedsim.report.federated import write_federated_run

    topology = build_topology(cfg, conf_dir)
    clients = clients_of(cfg, topology)
    fl = federated_config(cfg.fl)
    if fl.min_fit > len(clients):
        raise ConfigError(f"fl.min_fit: {fl.min_fit} > the {len(clients)} clients")
    strategy = strategy_of(cfg.strategy)
    workload: WorkloadSpec = build_workload(cfg)
    spec = workload.model
    faults = fault_plan(cfg.faults, topology)
    choose = selector(cfg.fl.selection, spec.state_bytes)
    seeds = np.random.SeedSequence(cfg.seed).spawn(3)
    rng = np.random.default_rng(seeds[0])

    trainer = evaluation = params = shards = None
    labels: dict[int, list[int]] = {}
    if cfg.fl.training == "real":
        import torch

        from fedsim.ml.train import Evaluator, TorchTrainer

        torch.set_num_threads(1)  # tiny models: one thread is as fast and leaves a core free
        shards, (X_test, y_test), labels = _real_data(cfg, clients, rng)
        samples = {dev: len(shard[1]) for dev, shard in shards.items()}
        trainer = TorchTrainer(
            model_name=spec.name, num_classes=spec.num_classes, data=shards, seed=cfg.seed
        )
        params = trainer.initial_parameters()
        evaluator = Evaluator(
            model_name=spec.name, num_classes=spec.num_classes, X=X_test, y=y_test
        )
        evaluation = Evaluation(fn=evaluator, cost=Cost(flops=spec.forward_flops * len(y_test)))
    elif cfg.fl.training == "modelled":
        samples = dict.fromkeys(clients, workload.samples_per_device)
    else:
        raise ConfigError(f"fl.training: {cfg.fl.training!r} is not one of real, modelled")

    with _runtime(
        cfg,
        topology,
        clients,
        run_dir,
        trainer=trainer,
        faults=faults,
        shards=shards,
        seed=seeds[1],
        flops=float(spec.train_flops),
        attached=attached,
        channel=task_prefix,
    ) as (
        transport,
        resources,
        store,
    ):
        recorder = _RoundRows(transport.events, cfg.fl.max_events)
        versions = None
        if params is not None:
            from fedsim.store.recorder import RepositoryRecorder

            versions = RepositoryRecorder(
                store,
                name=spec.name,
                architecture=spec.name,
                initial=params,
                metadata={"experiment": cfg.experiment.name},
            )
        with tqdm(total=fl.rounds, desc="rounds", unit="round", file=sys.stderr) as bar:
            coordinator = Coordinator(
                transport=transport,
                strategy=strategy,
                work=ClientWork(
                    samples=samples,
                    train_flops_per_sample=float(spec.train_flops),
                    update_nbytes=spec.state_bytes,
                    state_values=spec.state_values,
                    config={
                        "model": spec.name,
                        "num_classes": spec.num_classes,
                        "input_size": spec.input_size,
                        "seed": cfg.seed,
                    },
                ),
                model=ModelRef(name=spec.name, version=0, nbytes=spec.state_bytes),
                parameters=params,
                config=fl,
                selector=choose,
                resources=resources,
                reliability=Reliability(),
                evaluation=evaluation,
                groups={d: topology.devices[d].group for d in clients},
                on_round=lambda r: (
                    recorder(r),
                    on_round and on_round(asdict(recorder.rows[-1])),
                    versions and versions.record(r, coordinator.parameters),
                    bar.update(1),
                ),
                seed=seeds[2],
            )
            history = coordinator.run(clients)
        simulated_time = transport.now()
        repository = None
        if params is not None:
            stats = store.stats(spec.name)
            repository = {
                "path": "repository",
                "versions": stats.versions,
                "deployments": stats.deployments,
                "total_bytes": stats.total_size,
            }

    events = tuple(transport.events)
    rows = recorder.rows
    accuracies = [r.accuracy for r in rows if r.accuracy is not None]
    round_to_target, time_to_target = _to_target(rows, cfg.fl.target_accuracy)
    failures = [(r.round, d, why) for r in history for d, why in r.failures.items()]
    failures += [(r.round, d, why) for r in history for d, why in r.rejected.items()]
    summary: dict[str, Any] = {
        "experiment": cfg.experiment.name,
        "kind": "federated",
        "mode": "real" if attached is not None else cfg.mode.name,
        "seed": cfg.seed,
        "strategy": dict(cfg.strategy),
        "rounds": fl.rounds,
        "fl_mode": fl.mode,
        "selection": cfg.fl.selection,
        "training": cfg.fl.training,
        "clients": clients,
        "topology": topology.name,
        "final_accuracy": accuracies[-1] if accuracies else None,
        "best_accuracy": max(accuracies) if accuracies else None,
        "target_accuracy": cfg.fl.target_accuracy,
        "round_to_target": round_to_target,
        "time_to_target_s": time_to_target,
        "simulated_time_s": simulated_time,
        "rounds_aggregated": sum(r.aggregated for r in rows),
        "rounds_failed": sum(not r.aggregated for r in rows),
        "updates_lost": sum(len(r.failures) for r in history),
        "updates_rejected": sum(len(r.rejected) for r in history),
        "repository": repository,
        "events_recorded": len(events),
        "events_not_recorded": recorder.dropped,
        "workload": {
            "name": cfg.workload.name,
            "model": {
                **asdict(spec),
                "state_values": spec.state_values,
                "state_bytes": spec.state_bytes,
            },
            "dataset": asdict(workload.dataset),
            "batch_size": fl.batch_size,
            "local_epochs": fl.local_epochs,
            "samples_per_client": samples if len(samples) <= 100 else None,
        },
        "partition": {"kind": cfg.partition.kind, "alpha": cfg.partition.alpha},
        "faults": {
            "dropout": faults.dropout,
            "outages": len(faults.outages),
            "link_changes": len(faults.link_changes),
        },
        "fedsim_version": __version__,
    }
    result = FederatedResult(
        summary=summary,
        rounds=rows,
        events=events,
        label_counts=labels,
        failures=failures,
        assumptions=_assumptions(topology, clients, spec, fl, cfg),
    )
    write_federated_run(run_dir, result)
    print(console_federated(summary))
    return result


def _assumptions(topology: Topology, clients, spec, fl: FederatedConfig, cfg: Any) -> list[str]:
    out = [
        f"Training one sample of {spec.name} costs {spec.train_flops:,} FLOPs (forward + "
        f"backward, counted on the PyTorch module); simulated time uses it with each device's "
        f"profile, whatever the host's own speed.",
        f"Each round sends the {spec.state_bytes / 1e3:.1f} kB float32 state to every selected "
        f"client and back.",
    ]
    for dev in clients:
        d = topology.devices[dev]
        out.append(
            f"Client {dev} ({d.description}): {d.hardware.description}, "
            f"{d.hardware.effective_flops / 1e12:.3g} TFLOP/s effective."
        )
    if cfg.fl.training == "real":
        out.append(
            f"Data: scikit-learn's digits, split {cfg.partition.kind}"
            + (f" (alpha {cfg.partition.alpha:g})" if cfg.partition.kind == "dirichlet" else "")
            + f"; {cfg.partition.test_fraction:.0%} held out for the server's "
            "evaluation."
        )
    if fl.deadline_s is not None:
        out.append(
            f"A round waits at most {fl.deadline_s:g} s for updates; it needs "
            f"{fl.min_fit} to aggregate."
        )
    return out
