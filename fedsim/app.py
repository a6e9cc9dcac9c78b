"""The composition root: config -> typed objects -> runtime -> run -> report files.

Everything that knows about Hydra, the runtimes, torch and the report layer meets here; the
core sees only its own dataclasses.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from fedsim import __version__
from fedsim.config import (
    ConfigError,
    build_dataset,
    build_topology,
    check_workload,
    clients_of,
    crossover_grid,
)
from fedsim.core.experiment import compare, crossover
from fedsim.core.results import ExperimentResult
from fedsim.core.runtime import FitIns, ModelRef
from fedsim.core.topology import Topology
from fedsim.core.workload import ModelSpec, WorkloadSpec

log = logging.getLogger(__name__)


def build_workload(cfg: Any) -> WorkloadSpec:
    from fedsim.ml.spec import model_spec

    c = cfg.workload
    check_workload(c)
    try:
        model = model_spec(c.model, input_size=c.input_size, num_classes=c.num_classes)
    except KeyError as e:
        raise ConfigError(f"workload.model: {e.args[0]}") from None
    return WorkloadSpec(
        model=model,
        dataset=build_dataset(c.dataset),
        samples_per_device=c.samples_per_device,
        batch_size=c.batch_size,
        epochs=c.epochs,
    )


def make_transport_factory(mode: str):
    """The simulator's transports; real mode uses them for the crossover prediction only."""
    if mode not in ("sim", "real"):
        raise ConfigError(f"mode: {mode!r} is not one of sim, real")
    from fedsim.sim.runtime import SimTransport

    def factory(topology: Topology, seed: np.random.SeedSequence) -> SimTransport:
        return SimTransport(topology, seed=seed)

    return factory


def _model_summary(m: ModelSpec) -> dict[str, Any]:
    return {**asdict(m), "state_values": m.state_values, "state_bytes": m.state_bytes}


def assumptions(topology: Topology, workload: WorkloadSpec, clients: list[int]) -> list[str]:
    """The defaults behind the numbers, in sentences for the report."""
    server = topology.devices[topology.server]
    out = [
        f"Training one sample of {workload.model.name} at {workload.model.input_size}x"
        f"{workload.model.input_size} costs {workload.model.train_flops / 1e9:.1f} GFLOPs "
        f"(forward + backward, counted on the PyTorch module).",
        f"Each client holds {workload.samples_per_device} samples of {workload.dataset.name} "
        f"({workload.dataset.bytes_per_sample / 1e3:.1f} kB each: "
        f"{workload.dataset.total_bytes / 1e9:.0f} GB / {workload.dataset.samples:,} samples), "
        f"trained for {workload.epochs} epoch(s); the cloud server trains on all "
        f"{workload.samples_per_device * len(clients)} samples.",
        f"The server ({server.hardware.description}) reaches "
        f"{server.hardware.effective_flops / 1e12:.1f} TFLOP/s in training "
        f"(peak x efficiency {server.hardware.efficiency:g}"
        + (
            f" x multi-GPU scaling {server.hardware.scaling_efficiency:g})."
            if server.hardware.units > 1
            else ")."
        ),
    ]
    for dev in clients:
        d = topology.devices[dev]
        path = topology.path(dev, topology.server)
        bottleneck = min(topology.link_profile(n).bandwidth for n, _ in path)
        out.append(
            f"Client {dev} ({d.description}; {d.hardware.description}) reaches "
            f"{d.hardware.effective_flops / 1e12:.2f} TFLOP/s; its path to the server has "
            f"{len(path)} links, bottleneck {bottleneck * 8 / 1e6:g} Mb/s, "
            f"{topology.latency(path) * 1e3:g} ms one way."
        )
    out += [
        "A model version and an update each travel as the float32 state "
        f"({workload.model.state_bytes / 1e6:.1f} MB); aggregation is bound by the server's "
        "memory bandwidth, publishing by its disk.",
        "Links share bandwidth max-min fairly between concurrent transfers; compute steps vary "
        "with a log-normal jitter of the profile's coefficient of variation.",
    ]
    return out


@dataclass(frozen=True)
class _Scaled:
    workload: WorkloadSpec
    summary: dict[str, Any]
    notes: list[str]


def _scaled(cfg: Any, workload: WorkloadSpec) -> _Scaled:
    """The smaller job mode=real runs (``workload.scale``), and what the report says of it."""
    from fedsim.ml.spec import model_spec

    sc = cfg.workload.scale
    if sc is None:
        return _Scaled(workload, {}, ["mode=real ran the workload at full size."])
    model = model_spec(
        workload.model.name, input_size=sc.input_size, num_classes=workload.model.num_classes
    )
    small = replace(workload, model=model, samples_per_device=sc.samples_per_device)
    summary = {
        "input_size": [workload.model.input_size, sc.input_size],
        "samples_per_device": [workload.samples_per_device, sc.samples_per_device],
        "train_flops_per_sample": [workload.model.train_flops, model.train_flops],
    }
    notes = [
        f"mode=real measured a scaled job on this host (workload.scale): input "
        f"{workload.model.input_size} -> {sc.input_size} pixels, "
        f"{workload.samples_per_device} -> {sc.samples_per_device} images per device, on "
        f"synthetic ImageNet-shaped data; t_ref and t_new are wall-clock seconds of real "
        f"processes on loopback, so they compare with each other, not with the paper's GPUs.",
        "YOLOv4 trains against the image labels with cross-entropy on its pooled class "
        "scores (ImageNet has no boxes): a full forward and backward pass of the detector.",
    ]
    return _Scaled(small, summary, notes)


def _compare_real(cfg, run_dir, topology, clients, workload, bar):
    """Both scenarios on a server and agent processes on loopback, training for real."""
    import itertools

    import torch

    from fedsim.core.scenarios import RealWork
    from fedsim.ml.data import synthetic_imagenet
    from fedsim.ml.train import TorchTrainer
    from fedsim.real.launch import LocalCluster
    from fedsim.real.transport import HttpTransport

    spec = workload.model
    n = workload.samples_per_device
    server_trainer = TorchTrainer(
        model_name=spec.name,
        num_classes=spec.num_classes,
        seed=cfg.seed,
        data=lambda _: synthetic_imagenet(n * len(clients), spec.input_size, 1000, cfg.seed),
    )
    initial = server_trainer.initial_parameters()

    def server_train(samples: int) -> None:
        ins = FitIns(
            model=ModelRef(name=spec.name, version=0, nbytes=spec.state_bytes),
            samples=samples,
            epochs=workload.epochs,
            batch_size=workload.batch_size,
            flops=0.0,
            update_nbytes=0,
            parameters=initial,
        )
        server_trainer(topology.server, ins)

    real = RealWork(
        server_train=server_train,
        parameters=initial,
        client_config={
            "model": spec.name,
            "num_classes": spec.num_classes,
            "input_size": spec.input_size,
            "seed": cfg.seed,
        },
    )
    channels = (f"s{i}:" for i in itertools.count())
    torch.set_num_threads(1)  # the agents use the other cores
    with LocalCluster(
        run_dir=run_dir,
        topology=topology,
        clients=clients,
        shards=None,
        mode=cfg.mode,
        data=f"synthetic:{n}",
    ) as cluster:

        def factory(topo: Topology, seed: np.random.SeedSequence) -> HttpTransport:
            return HttpTransport(
                board=cluster.board,
                repository=cluster.repository,
                server=topo.server,
                channel=next(channels),
            )

        return compare(
            topology,
            workload,
            clients,
            factory,
            repetitions=cfg.repetitions,
            seed=cfg.seed,
            progress=lambda _: bar.update(1),
            real=real,
        )


def run_experiment(cfg: Any, run_dir: Path, conf_dir: Path | None = None) -> ExperimentResult:
    """Run the configured comparison and write its results to ``run_dir``."""
    from tqdm import tqdm

    from fedsim.report.console import console_table
    from fedsim.report.write import write_run

    topology = build_topology(cfg, conf_dir)
    clients = clients_of(cfg, topology)
    workload = build_workload(cfg)
    grid = crossover_grid(cfg.crossover) if cfg.crossover is not None else None
    factory = make_transport_factory(cfg.mode.name)
    if cfg.repetitions < 1:
        raise ConfigError(f"repetitions: must be >= 1, got {cfg.repetitions}")

    scaled = None
    with tqdm(total=cfg.repetitions, desc="repetitions", unit="rep", file=sys.stderr) as bar:
        if cfg.mode.name == "real":
            modelled, scaled = workload, _scaled(cfg, workload)
            workload = scaled.workload
            outcome = _compare_real(cfg, run_dir, topology, clients, workload, bar)
            workload = modelled
        else:
            outcome = compare(
                topology,
                workload,
                clients,
                factory,
                repetitions=cfg.repetitions,
                seed=cfg.seed,
                progress=lambda _: bar.update(1),
            )
    points = []
    if grid is not None:
        log.info(
            "crossover grid: %d points", len(grid.bandwidth_mbps) * len(grid.samples_per_device)
        )
        points = crossover(topology, workload, clients, factory, grid, seed=cfg.seed)

    summary: dict[str, Any] = {
        "experiment": cfg.experiment.name,
        "mode": cfg.mode.name,
        "repetitions": cfg.repetitions,
        "seed": cfg.seed,
        **outcome.summary(),
        "topology": topology.name,
        "server": topology.server,
        "clients": clients,
        "workload": {
            "name": cfg.workload.name,
            "model": _model_summary(workload.model),
            "dataset": {
                **asdict(workload.dataset),
                "bytes_per_sample": workload.dataset.bytes_per_sample,
            },
            "samples_per_device": workload.samples_per_device,
            "batch_size": workload.batch_size,
            "epochs": workload.epochs,
            "input_size": workload.model.input_size,
        },
        "fedsim_version": __version__,
    }
    if grid is not None:
        swept = [p for p in topology.link_profiles() if p.name == grid.link]
        summary["crossover_bandwidth_mbps"] = swept[0].bandwidth * 8 / 1e6 if swept else None
    if cfg.paper is not None:
        summary["paper"] = {
            "t_ref_s": cfg.paper.t_ref_s,
            "t_new_s": cfg.paper.t_new_s,
            "time_saving_rate": cfg.paper.time_saving_rate,
            "source": cfg.paper.source,
        }
    if scaled is not None:
        summary["scaled"] = scaled.summary
    result = ExperimentResult(
        summary=summary,
        runs=outcome.runs,
        events=outcome.events,
        crossover=points,
        crossover_link=grid.link if grid else "",
        assumptions=assumptions(topology, workload, clients) + (scaled.notes if scaled else []),
    )
    write_run(run_dir, result)
    print(console_table(summary))
    return result
