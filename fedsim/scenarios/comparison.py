"""The paper's comparison (Table II, formula (1)): cloud-based against client-based training.

Both scenarios run ``spec.repetitions`` times, each on a fresh transport of the runtime. A
runtime that does the work for real runs a scaled job (``workload.scale``) on synthetic
ImageNet-shaped data and says so in the report. The crossover grid is always the simulator's
prediction, over link bandwidth and data per device. With the paper's figures, the simulator
is also fitted to them over the quantities the paper leaves unstated (``fedsim.core.implied``):
the summary's ``implied`` holds what Table II implies, beside, never instead of, the defaults.
"""

from __future__ import annotations

import itertools
import logging
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from fedsim import __version__
from fedsim.core.experiment import TransportFactory, compare, crossover
from fedsim.core.implied import implied
from fedsim.core.results import COMPARISON, RunResult
from fedsim.core.runtime import FitIns, ModelRef, Transport
from fedsim.core.scenarios import MODELLED, RealWork
from fedsim.core.topology import Topology
from fedsim.core.workload import ModelSpec, WorkloadSpec
from fedsim.runtimes import Needs, Runtime, runtime
from fedsim.scenarios import Hooks
from fedsim.spec import ExperimentSpec

log = logging.getLogger(__name__)


def run(spec: ExperimentSpec, rt: Runtime, run_dir: Path, hooks: Hooks) -> RunResult:
    """Run the comparison over ``rt``; the crossover grid over the simulator."""
    from tqdm import tqdm

    clients = list(spec.clients)
    modelled = spec.workload
    scaled = _scaled(spec) if rt.measured else None
    workload = scaled.workload if scaled else modelled
    real = _real_work(spec, workload) if rt.measured else MODELLED
    needs = Needs(
        clients=clients,
        train_flops_per_sample=float(workload.model.train_flops),
        agent_data=f"synthetic:{workload.samples_per_device}",
    )
    bar = tqdm(
        total=spec.repetitions,
        desc="repetitions",
        unit="rep",
        file=sys.stderr,
        disable=not hooks.progress,
    )
    with bar, rt.open(spec, run_dir, needs) as session:
        make_transport: TransportFactory = session.transport
        if rt.measured:
            import torch

            torch.set_num_threads(1)  # the agents use the other cores
            make_transport = _showing_stages(session.transport, bar)
        outcome = compare(
            spec.topology,
            workload,
            clients,
            make_transport,
            repetitions=spec.repetitions,
            seed=spec.seed,
            progress=lambda _: bar.update(1),
            real=real,
        )
    points = []
    fit: dict[str, Any] | None = None
    if spec.crossover is not None or spec.paper is not None:
        sim_needs = replace(needs, train_flops_per_sample=float(modelled.model.train_flops))
        with runtime("sim").open(spec, run_dir, sim_needs) as sim:
            if spec.crossover is not None:
                grid = spec.crossover
                log.info(
                    "crossover grid: %d points",
                    len(grid.bandwidth_mbps) * len(grid.samples_per_device),
                )
                points = crossover(
                    spec.topology, modelled, clients, sim.transport, grid, seed=spec.seed
                )
            if spec.paper is not None:
                found = implied(
                    spec.topology,
                    modelled,
                    clients,
                    sim.transport,
                    t_ref_s=spec.paper.t_ref_s,
                    t_new_s=spec.paper.t_new_s,
                    seed=spec.seed,
                )
                log.info("what Table II implies: %d simulations", found.evaluations)
                fit = found.summary()
    summary = _summary(spec, modelled, outcome.summary(), scaled)
    if fit is not None:
        summary["implied"] = fit
    return RunResult(
        kind=COMPARISON,
        summary=summary,
        rows=outcome.runs,
        events=outcome.events,
        crossover=points,
        crossover_link=spec.crossover.link if spec.crossover else "",
        assumptions=assumptions(spec.topology, modelled, clients)
        + (scaled.notes if scaled else []),
    )


# What a measured repetition is doing, by the transports compare_once asks for: the
# cloud-based scenario's first, then the client-based one's.
STAGES = (
    "cloud-based: clients upload their data, the server trains",
    "client-based: clients train, upload updates, the server aggregates",
)


def _showing_stages(make: TransportFactory, bar: Any) -> TransportFactory:
    """``make``, naming on ``bar`` the scenario each new transport runs: a measured
    repetition of a large model takes minutes, and a bar at 0/1 alone looks stuck."""
    stages = itertools.cycle(STAGES)

    def make_transport(topology: Topology, seed: np.random.SeedSequence) -> Transport:
        bar.set_postfix_str(next(stages), refresh=True)
        return make(topology, seed)

    return make_transport


def _summary(
    spec: ExperimentSpec,
    workload: WorkloadSpec,
    outcome: dict[str, Any],
    scaled: _Scaled | None,
) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "experiment": spec.name,
        "mode": spec.mode.name,
        "network": spec.mode.network,  # how simulated transfers shared links
        "repetitions": spec.repetitions,
        "seed": spec.seed,
        **outcome,
        "topology": spec.topology.name,
        "server": spec.topology.server,
        "clients": list(spec.clients),
        "workload": {
            "name": spec.workload_name,
            "model": model_summary(workload.model),
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
    if spec.crossover is not None:
        swept = [p for p in spec.topology.link_profiles() if p.name == spec.crossover.link]
        summary["crossover_bandwidth_mbps"] = swept[0].bandwidth * 8 / 1e6 if swept else None
    if spec.paper is not None:
        summary["paper"] = {
            "t_ref_s": spec.paper.t_ref_s,
            "t_new_s": spec.paper.t_new_s,
            "time_saving_rate": spec.paper.time_saving_rate,
            "source": spec.paper.source,
        }
    if scaled is not None:
        summary["scaled"] = scaled.summary
    return summary


def model_summary(m: ModelSpec) -> dict[str, Any]:
    """A model's spec for ``summary.json``, with its derived sizes."""
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


def _scaled(spec: ExperimentSpec) -> _Scaled:
    """The smaller job a measured runtime runs (``workload.scale``), and what the report says."""
    from fedsim.ml.spec import model_spec

    workload, sc = spec.workload, spec.scale
    if sc is None:
        return _Scaled(workload, {}, ["The real runtime ran the workload at full size."])
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
        f"mode={spec.mode.name} measured a scaled job on this host (workload.scale): input "
        f"{workload.model.input_size} -> {sc.input_size} pixels, "
        f"{workload.samples_per_device} -> {sc.samples_per_device} images per device, on "
        f"synthetic ImageNet-shaped data; t_ref and t_new are wall-clock seconds of real "
        f"processes on loopback, so they compare with each other, not with the paper's GPUs.",
        "YOLOv4 trains against the image labels with cross-entropy on its pooled class "
        "scores (ImageNet has no boxes): a full forward and backward pass of the detector.",
    ]
    return _Scaled(small, summary, notes)


def measured_workload(spec: ExperimentSpec) -> WorkloadSpec:
    """The workload a measured runtime runs for ``spec``: the scaled job, or the full one."""
    return _scaled(spec).workload


def _real_work(spec: ExperimentSpec, workload: WorkloadSpec) -> RealWork:
    """Training for real: the server's own training and the model the clients start from."""
    from fedsim.ml.data import synthetic_imagenet
    from fedsim.ml.train import TorchTrainer

    model, n, clients = workload.model, workload.samples_per_device, len(spec.clients)
    server_trainer = TorchTrainer(
        model_name=model.name,
        num_classes=model.num_classes,
        seed=spec.seed,
        data=lambda _: synthetic_imagenet(n * clients, model.input_size, 1000, spec.seed),
    )
    initial = server_trainer.initial_parameters()
    server = spec.topology.server

    def server_train(samples: int) -> None:
        server_trainer(
            server,
            FitIns(
                model=ModelRef(name=model.name, version=0, nbytes=model.state_bytes),
                samples=samples,
                epochs=workload.epochs,
                batch_size=workload.batch_size,
                flops=0.0,
                update_nbytes=0,
                parameters=initial,
            ),
        )

    return RealWork(
        server_train=server_train,
        parameters=initial,
        client_config={
            "model": model.name,
            "num_classes": model.num_classes,
            "input_size": model.input_size,
            "seed": spec.seed,
        },
    )
