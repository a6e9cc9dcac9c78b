"""Federated training: data, trainer, strategy and coordinator over a runtime's session.

With ``fl.training: real`` each client's shard trains a PyTorch model for real (in this process
under the simulator, in the agents' processes under a real runtime); with ``modelled`` only
time is accounted for (for scale). Each round becomes a :class:`RoundRow` as it ends.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from itertools import accumulate
from pathlib import Path
from typing import Any

import numpy as np

from fedsim import __version__
from fedsim.core.attacks import ByzantineTransport, attackers, flip_labels
from fedsim.core.coordinator import ClientWork, Coordinator, Evaluation, RoundReport
from fedsim.core.events import Event, EventColumns, EventKind
from fedsim.core.privacy import local_participations, with_privacy
from fedsim.core.results import (
    FEDERATED,
    SIMULATED_TIME_KEY,
    WALL_TIME_KEY,
    RoundRow,
    RunResult,
    time_fields,
    to_target,
)
from fedsim.core.runtime import Cost, ModelRef
from fedsim.core.scheduling import Reliability
from fedsim.core.secagg import SecureAggregation
from fedsim.core.selection import selection_from
from fedsim.core.strategies.base import Strategy
from fedsim.core.strategies.registry import strategy_from
from fedsim.core.topology import HardwareProfile, Topology
from fedsim.core.workload import DatasetSpec, ModelSpec
from fedsim.real.secagg_crypto import X25519Crypto
from fedsim.report.write import EVENTS_FILE, EventsWriter
from fedsim.runtimes import Needs, Runtime, Shards
from fedsim.scenarios import Hooks
from fedsim.scenarios.comparison import model_summary
from fedsim.spec import ExperimentSpec

log = logging.getLogger(__name__)


def run(spec: ExperimentSpec, rt: Runtime, run_dir: Path, hooks: Hooks) -> RunResult:
    """Run ``spec.fl.rounds`` rounds over ``rt``; rows, events and the report's facts."""
    from tqdm import tqdm

    fl, model = spec.fl, spec.workload.model
    clients = list(spec.clients)
    seeds = np.random.SeedSequence(spec.seed).spawn(3)
    rng = np.random.default_rng(seeds[0])
    byzantine = attackers(clients, fl.attack) if fl.attack.kind is not None else ()

    trainer = evaluation = params = shards = None
    labels: dict[int, list[int]] = {}
    if fl.training == "real":
        import torch

        from fedsim.ml.train import EVAL_BATCH_SIZE, Evaluator, TorchTrainer

        torch.set_num_threads(1)  # tiny models: one thread is as fast and leaves a core free
        shards, (X_test, y_test), labels = real_data(spec, rng)
        if fl.attack.kind == "label_flip":
            # The attackers train on poisoned shards, wherever the shards are handed to
            # (this process's trainer, or the agents a real runtime starts).
            flipped = {
                d: (shards[d][0], flip_labels(shards[d][1], model.num_classes)) for d in byzantine
            }
            shards = {**shards, **flipped}
        samples = {dev: len(shard[1]) for dev, shard in shards.items()}
        trainer = TorchTrainer(
            model_name=model.name, num_classes=model.num_classes, data=shards, seed=spec.seed
        )
        params = trainer.initial_parameters()
        evaluator = Evaluator(
            model_name=model.name, num_classes=model.num_classes, X=X_test, y=y_test
        )
        # Timed by the server's measured evaluation step model where its profile has one,
        # else by the FLOPs.
        evaluation = Evaluation(
            fn=evaluator,
            cost=Cost(
                flops=model.forward_flops * len(y_test),
                model=model.name,
                samples=len(y_test),
                batch_size=EVAL_BATCH_SIZE,
                evaluation=True,
            ),
        )
    else:
        samples = dict.fromkeys(clients, spec.workload.samples_per_device)

    needs = Needs(
        clients=clients,
        train_flops_per_sample=float(model.train_flops),
        trainer=trainer,
        shards=shards,
        store=params is not None,
    )
    bar = tqdm(
        total=fl.rounds, desc="rounds", unit="round", file=sys.stderr, disable=not hooks.progress
    )
    run_dir.mkdir(parents=True, exist_ok=True)
    # Events go to disk as they are recorded; the current round's stay in columns only until
    # its row is made.
    written = EventsWriter(run_dir / EVENTS_FILE, scenario=FEDERATED, limit=fl.max_events)
    with bar, written, rt.open(spec, run_dir, needs) as session:
        transport = session.transport(spec.topology, seeds[1])
        shown = _RoundProgress(bar) if hooks.progress else None
        rows = _RoundRows(written, shown)
        transport.events.attach(rows.sink)
        resources = session.resources(transport)
        attacked = None
        if byzantine:
            attacked = ByzantineTransport(inner=transport, attack=fl.attack, attackers=byzantine)
            transport = attacked
        versions = None
        if params is not None:
            from fedsim.store.recorder import RepositoryRecorder

            assert session.store is not None
            versions = RepositoryRecorder(
                session.store,
                name=model.name,
                architecture=model.name,
                initial=params,
                metadata={"experiment": spec.name},
            )

        def on_round(r: RoundReport) -> None:
            rows(r)
            if hooks.on_round is not None:
                hooks.on_round(asdict(rows.rows[-1]))
            if versions is not None:
                versions.record(r, coordinator.parameters)
            if shown is not None:
                shown.clear()
            bar.update(1)

        coordinator = Coordinator(
            transport=transport,
            strategy=private_strategy(spec, strategy_from(spec.strategy), seeds[2]),
            group_strategy=None
            if spec.group_strategy is None
            else strategy_from(spec.group_strategy),
            work=ClientWork(
                samples=samples,
                train_flops_per_sample=float(model.train_flops),
                update_nbytes=model.state_bytes,
                state_values=model.state_values,
                config={
                    "model": model.name,
                    "num_classes": model.num_classes,
                    "input_size": model.input_size,
                    "seed": spec.seed,
                },
            ),
            model=ModelRef(name=model.name, version=0, nbytes=model.state_bytes),
            parameters=params,
            config=fl,
            selector=selection_from(fl.selection, model_bytes=model.state_bytes),
            resources=resources,
            reliability=Reliability(),
            evaluation=evaluation,
            groups={d: spec.topology.devices[d].group for d in clients},
            on_round=on_round,
            seed=seeds[2],
            secagg=None
            if spec.secagg is None
            else SecureAggregation(params=spec.secagg, crypto=X25519Crypto()),
        )
        history = coordinator.run(clients)
        elapsed = transport.now()
        repository = None
        if params is not None:
            assert session.store is not None
            stats = session.store.stats(model.name)
            repository = {
                "path": "repository",
                "versions": stats.versions,
                "deployments": stats.deployments,
                "total_bytes": stats.total_size,
            }

    failures = [(r.round, d, why) for r in history for d, why in r.failures.items()]
    failures += [(r.round, d, why) for r in history for d, why in r.rejected.items()]
    summary = _summary(
        spec, rows, history, samples, elapsed, repository, written, measured=rt.measured
    )
    if attacked is not None:
        summary["attack"] = _attack_summary(spec, byzantine, history, attacked.sent)
    if spec.privacy.kind is not None:
        summary["privacy"] = privacy_summary(spec, history)
    if spec.secagg is not None:
        summary["secagg"] = asdict(spec.secagg)  # its cost is in the events and time split
    return RunResult(
        kind=FEDERATED,
        summary=summary,
        rows=rows.rows,
        events=[],
        events_file=written.path,
        label_counts=labels,
        failures=failures,
        assumptions=_assumptions(spec, model),
    )


def _attack_summary(
    spec: ExperimentSpec, byzantine: tuple[int, ...], history: list[RoundReport], sent: int
) -> dict[str, Any]:
    """What the attackers did and how far they got: the updates they sent, and of those, how
    many the coordinator refused."""
    attack, bad = spec.fl.attack, set(byzantine)
    return {
        "kind": attack.kind,
        "fraction": attack.fraction,
        "scale": attack.strength,
        "seed": attack.seed,
        "attackers": list(byzantine),
        "clients": len(spec.clients),
        "updates_sent": sent,
        "updates_rejected": sum(len(bad & r.rejected.keys()) for r in history),
    }


def private_strategy(
    spec: ExperimentSpec, strategy: Strategy, seed: np.random.SeedSequence
) -> Strategy:
    """``strategy`` with the run's differential privacy (``privacy``), if any; central DP's
    noise is seeded from the run's seed."""
    privacy = spec.privacy
    if privacy.kind is None:
        return strategy
    assert privacy.noise_multiplier is not None  # build_spec resolved target_epsilon
    return with_privacy(
        strategy,
        privacy,
        noise_multiplier=privacy.noise_multiplier,
        expected_clients=spec.fl.per_round(len(spec.clients)),
        seed=int(seed.generate_state(1)[0]),
    )


def privacy_summary(spec: ExperimentSpec, history: list[RoundReport]) -> dict[str, Any]:
    """What the run's DP spent: epsilon at ``delta`` after each round and at the end.

    Central: one release per aggregated round, at sampling rate clients per round / clients.
    Local: the releases of the client selected most often (an upper bound for every client).
    """
    from fedsim.ml.accounting import epsilons

    privacy, fl = spec.privacy, spec.fl
    assert privacy.noise_multiplier is not None
    if privacy.kind == "central":
        releases = list(accumulate(int(r.aggregated) for r in history))
    else:
        releases = local_participations([r.selected for r in history])
    m = fl.per_round(len(spec.clients))
    rate = privacy.sample_rate(m, len(spec.clients))
    by_round = epsilons(
        noise_multiplier=privacy.noise_multiplier,
        sample_rate=rate,
        steps=releases,
        delta=privacy.delta,
    )
    std = privacy.noise_multiplier * privacy.clip_norm
    return {
        "kind": privacy.kind,
        "noise_multiplier": privacy.noise_multiplier,
        "target_epsilon": privacy.target_epsilon,
        "clip_norm": privacy.clip_norm,
        "noise_std": std / m if privacy.kind == "central" else std,
        "clients_per_round": m,
        "delta": privacy.delta,
        "sample_rate": rate,
        "releases": releases[-1] if releases else 0,
        "epsilon": by_round[-1] if by_round else 0.0,
        "epsilon_by_round": by_round,
        "accountant": "RDP (Opacus), sampled Gaussian mechanism",
    }


def real_data(
    spec: ExperimentSpec, rng: np.random.Generator
) -> tuple[Shards, tuple[np.ndarray, np.ndarray], dict[int, list[int]]]:
    """Shards per client of the data set the workload names (``build_spec`` checked that real
    training reads it and that it has enough samples), the test split and the label counts."""
    from fedsim.config import ConfigError
    from fedsim.core.partition import dirichlet_partition, iid_partition, label_distribution
    from fedsim.core.plugins import PluginError
    from fedsim.ml.data import factory_shards, load_split
    from fedsim.ml.models import in_channels

    p, clients, model = spec.partition, list(spec.clients), spec.workload.model
    if spec.workload.dataset.factory is not None:
        # The user's factory partitions its data itself; fedsim's partition settings are unused.
        try:
            made, test = factory_shards(
                spec.workload.dataset,
                num_clients=len(clients),
                num_classes=model.num_classes,
                input_size=model.input_size,
                channels=in_channels(model.name),
                seed=spec.seed,
            )
        except PluginError as e:
            raise ConfigError(str(e)) from None
        shards = dict(zip(clients, made, strict=True))
        labels = {
            dev: np.bincount(y, minlength=model.num_classes).tolist()
            for dev, (_, y) in shards.items()
        }
        return shards, test, labels
    try:
        X, y, X_test, y_test = load_split(
            spec.workload.dataset,
            input_size=model.input_size,
            channels=in_channels(model.name),
            num_classes=model.num_classes,
            test_fraction=p.test_fraction,
            seed=spec.seed,
        )
    except (OSError, ValueError) as e:  # the user's files: build_spec did not decode them
        raise ConfigError(f"workload.dataset: {e}") from None
    if p.kind == "dirichlet":
        try:
            parts = dirichlet_partition(
                y, len(clients), p.alpha, rng=rng, min_size=spec.fl.batch_size
            )
        except ValueError as e:  # build_spec checked the counts; the draws can still fail
            raise ConfigError(f"partition.alpha: {e}") from None
    else:
        parts = iid_partition(len(y), len(clients), rng)
    shards = {dev: (X[idx], y[idx]) for dev, idx in zip(clients, parts, strict=True)}
    counts = label_distribution(y, parts)
    labels = {dev: [int(v) for v in row] for dev, row in zip(clients, counts, strict=True)}
    return shards, (X_test, y_test), labels


# How many steps (models sent, trainings, updates received) a round counts between two looks at
# the clock for its progress line.
SHOW_EVERY = 1000


class _RoundProgress:
    """Puts on the rounds bar how many models the round under way has sent to devices, how many
    devices have trained and how many updates it has received, at most every ``every_s``
    seconds: a round of a million devices takes a minute or more, during which the bar itself
    (a step a round) does not move."""

    def __init__(
        self, bar: Any, *, every_s: float = 0.5, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.bar, self.every_s, self.clock = bar, every_s, clock
        self.last = -math.inf  # when the line was last shown; -inf: not shown this round

    def __call__(self, models: int, trained: int, updates: int) -> None:
        now = self.clock()
        if now - self.last >= self.every_s:
            self.last = now
            self.bar.set_postfix_str(
                f"{models:,} models out, {trained:,} trained, {updates:,} updates in"
            )

    def clear(self) -> None:
        """The round is over: its line goes, with the bar's next step."""
        if self.last > -math.inf:
            self.last = -math.inf
            self.bar.set_postfix_str("", refresh=False)


class _Tee:
    """An event log's sink: each event to the run's events file and to the current round's
    columns; as fields too (``row``), so that the runtime makes no Event for them. It counts
    the round's models sent, trainings and updates received (the ends of those steps) and
    hands the counts to ``show`` every :data:`SHOW_EVERY` of them."""

    __slots__ = ("_columns", "_file", "_show", "models", "trained", "updates")

    def __init__(
        self,
        file: EventsWriter,
        columns: EventColumns,
        show: Callable[[int, int, int], None] | None = None,
    ) -> None:
        self._file, self._columns, self._show = file, columns, show
        self.models = self.trained = self.updates = 0

    def __call__(self, event: Event) -> None:
        self.row(event.device, event.kind, event.start, event.end, event.nbytes, event.task)

    def row(
        self, device: int, kind: EventKind, start: float, end: float, nbytes: int, task: str
    ) -> None:
        self._file.row(device, kind, start, end, nbytes, task)
        self._columns.add_row(device, kind, start, end, nbytes)
        if kind is EventKind.MODEL_DOWNLOAD:
            self.models += 1
        elif kind is EventKind.TRAIN:
            self.trained += 1
        elif kind is EventKind.UPDATE_UPLOAD:
            self.updates += 1
        else:
            return
        if self._show is not None and not (self.models + self.trained + self.updates) % SHOW_EVERY:
            self._show(self.models, self.trained, self.updates)

    def new_round(self) -> None:
        """The round's row is made: its columns and counts start again."""
        self._columns.clear()
        self.models = self.trained = self.updates = 0


class _RoundRows:
    """Turns each round's report and events into a row as the round ends.

    It holds the events of the round under way only, as columns of numbers: rows are made
    while they are at hand, and the events themselves go to disk as they are recorded.
    """

    def __init__(
        self, file: EventsWriter, show: Callable[[int, int, int], None] | None = None
    ) -> None:
        self.rows: list[RoundRow] = []
        self._fresh = EventColumns()
        # The event log's sink: each event to ``file`` and into the round's columns; ``show``
        # is told the round's counts of models sent, trainings and updates received as they
        # grow (see _Tee).
        self.sink = _Tee(file, self._fresh, show)

    def __call__(self, r: RoundReport) -> None:
        fresh = self._fresh
        self.rows.append(
            RoundRow(
                round=r.round,
                version=r.version.version if r.version else None,
                started_s=r.started,
                finished_s=r.finished,
                **time_fields(fresh, r.started, r.finished, unanswered=r.unanswered),
                selected=len(r.selected),
                completed=len(r.completed),
                failed=len(r.failures),
                rejected=len(r.rejected),
                aggregated=r.aggregated,
                train_loss=r.train_loss,
                accuracy=r.metrics.get("accuracy"),
                eval_loss=r.metrics.get("loss"),
                staleness=r.staleness,
                device_cpu_s=r.device_cpu_s,
                device_train_cpu_s=r.device_train_cpu_s,
            )
        )
        self.sink.new_round()


def _summary(
    spec: ExperimentSpec,
    made: _RoundRows,
    history: list[RoundReport],
    samples: dict[int, int],
    elapsed: float,
    repository: dict[str, Any] | None,
    events: EventsWriter,
    *,
    measured: bool,
) -> dict[str, Any]:
    fl, workload, rows = spec.fl, spec.workload, made.rows
    accuracies = [r.accuracy for r in rows if r.accuracy is not None]
    round_to_target, time_to_target = to_target(rows, fl.target_accuracy)
    return {
        "experiment": spec.name,
        "kind": FEDERATED,
        "mode": spec.mode.name,
        "network": spec.mode.network,  # how simulated transfers shared links
        "seed": spec.seed,
        "strategy": dict(spec.strategy),
        "rounds": fl.rounds,
        "fl_mode": fl.mode,
        "selection": fl.selection
        if isinstance(fl.selection, str)
        else fl.selection.get("_target_", "?"),
        "training": fl.training,
        "clients": list(spec.clients),
        "topology": spec.topology.name,
        "server": spec.topology.server,
        "final_accuracy": accuracies[-1] if accuracies else None,
        "best_accuracy": max(accuracies) if accuracies else None,
        "target_accuracy": fl.target_accuracy,
        "round_to_target": round_to_target,
        "time_to_target_s": time_to_target,
        WALL_TIME_KEY if measured else SIMULATED_TIME_KEY: elapsed,
        "rounds_aggregated": sum(r.aggregated for r in rows),
        "rounds_failed": sum(not r.aggregated for r in rows),
        "updates_lost": sum(len(r.failures) for r in history),
        "updates_rejected": sum(len(r.rejected) for r in history),
        "repository": repository,
        "events_recorded": events.written,
        "events_not_recorded": events.dropped,
        "workload": {
            "name": spec.workload_name,
            "model": model_summary(workload.model),
            "dataset": asdict(workload.dataset),
            "batch_size": fl.batch_size,
            "local_epochs": fl.local_epochs,
            "samples_per_client": samples if len(samples) <= 100 else None,
        },
        # A user's data set factory splits its data itself: the split is named by its path.
        "partition": {"kind": spec.partition.kind, "alpha": spec.partition.alpha}
        if workload.dataset.factory is None
        else {"kind": workload.dataset.factory, "alpha": None},
        "faults": {
            "dropout": spec.faults.dropout,
            "outages": len(spec.faults.outages),
            "link_changes": len(spec.faults.link_changes),
        },
        "fedsim_version": __version__,
    }


def _assumptions(spec: ExperimentSpec, model: ModelSpec) -> list[str]:
    fl, topology = spec.fl, spec.topology
    out = [
        f"Training one sample of {model.name} costs {model.train_flops:,} FLOPs (forward + "
        f"backward, counted on the PyTorch module); simulated time uses it with each device's "
        f"profile, whatever the host's own speed.",
        f"Each round sends the {model.state_bytes / 1e3:.1f} kB float32 state to every selected "
        f"client and back.",
    ]
    out += _client_lines(topology, list(spec.clients))
    if fl.training == "real":
        p = spec.partition
        if spec.workload.dataset.factory is not None:
            out.append(f"Data: {_data_description(spec.workload.dataset)}.")
        else:
            out.append(
                f"Data: {_data_description(spec.workload.dataset)}, split {p.kind}"
                + (f" (alpha {p.alpha:g})" if p.kind == "dirichlet" else "")
                + f"; {p.test_fraction:.0%} held out for the server's evaluation."
            )
    if fl.deadline_s is not None:
        out.append(
            f"A round waits at most {fl.deadline_s:g} s for updates; it needs "
            f"{fl.min_fit} to aggregate."
        )
    return out


def _data_description(dataset: DatasetSpec) -> str:
    if dataset.factory is not None:
        return f"{dataset.name}, made and split by {dataset.factory}"
    if dataset.name == "npz":
        return f"the arrays X and y in {dataset.path}"
    if dataset.name == "synthetic":
        return (
            f"{dataset.samples:,} synthetic images (each class a random prototype plus Gaussian "
            "noise)"
        )
    if dataset.name == "image_folder":
        return f"the images under {dataset.path}"
    return "scikit-learn's digits"


# Up to this many clients the report names each one; a larger fleet gets a line per profile.
CLIENT_LINES_MAX = 50


def _client_lines(topology: Topology, clients: list[int]) -> list[str]:
    if len(clients) <= CLIENT_LINES_MAX:
        return [
            f"Client {dev} ({topology.devices[dev].description}): "
            f"{topology.devices[dev].hardware.description}, "
            f"{topology.devices[dev].hardware.effective_flops / 1e12:.3g} TFLOP/s effective."
            for dev in clients
        ]
    # A line per client made the report (and its HTML conversion) grow with the fleet: at
    # 100,000 clients it took longer to write than the round took to run.
    speeds: dict[str, list[float]] = {}
    profiles: dict[str, HardwareProfile] = {}
    for dev in clients:
        device = topology.devices[dev]
        profiles.setdefault(device.hardware.name, device.hardware)
        speeds.setdefault(device.hardware.name, []).append(device.speed)
    lines = []
    for name, hw in profiles.items():
        low, high = min(speeds[name]), max(speeds[name])
        spread = (
            f"at {low:.3g}x that speed"
            if low == high
            else f"each at its own speed, {low:.3g}x to {high:.3g}x that"
        )
        lines.append(
            f"{len(speeds[name]):,} clients on {hw.description} ({name}), "
            f"{hw.effective_flops / 1e12:.3g} TFLOP/s effective, {spread}."
        )
    return lines
