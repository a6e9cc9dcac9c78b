"""The paper's experiment: cloud-based vs client-based training time over repetitions.

Each repetition runs both scenarios on a fresh transport seeded from the run's seed, so the same
seed gives the same numbers. The crossover grid reruns both scenarios without jitter over link
bandwidth and data per device, to show where client-based training starts to win.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from fedsim.core.metrics import describe, time_saving_rate
from fedsim.core.results import (
    CLIENT,
    CLOUD,
    CrossoverPoint,
    RepetitionEvents,
    ScenarioRun,
    time_fields,
)
from fedsim.core.runtime import Transport
from fedsim.core.scenarios import MODELLED, RealWork, client_based, cloud_based
from fedsim.core.topology import LinkProfile, Topology, TopologyError, map_profiles, without_jitter
from fedsim.core.workload import WorkloadSpec

log = logging.getLogger(__name__)

# Builds a fresh transport over a topology, seeded for one scenario run.
TransportFactory = Callable[[Topology, np.random.SeedSequence], Transport]


@dataclass(frozen=True, kw_only=True)
class CrossoverGrid:
    """Which link profile to sweep, and the grid of bandwidths and shard sizes."""

    link: str
    bandwidth_mbps: tuple[float, ...]
    samples_per_device: tuple[int, ...]


@dataclass(frozen=True, kw_only=True)
class ComparisonOutcome:
    runs: list[ScenarioRun]
    events: list[RepetitionEvents]
    t_ref: list[float]
    t_new: list[float]

    def summary(self) -> dict[str, object]:
        return {
            "t_ref_s": describe(self.t_ref),
            "t_new_s": describe(self.t_new),
            "time_saving_rate": time_saving_rate(self.t_ref, self.t_new),
        }


def _scenario_run(rep: int, name: str, transport: Transport, total: float) -> ScenarioRun:
    return ScenarioRun(
        repetition=rep, scenario=name, **time_fields(list(transport.events), 0.0, total)
    )


def compare_once(
    topology: Topology,
    workload: WorkloadSpec,
    clients: Sequence[int],
    make_transport: TransportFactory,
    seed: np.random.SeedSequence,
    rep: int = 0,
    real: RealWork = MODELLED,
) -> tuple[list[ScenarioRun], list[RepetitionEvents]]:
    """Run both scenarios once, each on its own fresh transport."""
    cloud_seed, client_seed = seed.spawn(2)
    runs, events = [], []
    cloud = make_transport(topology, cloud_seed)
    t_ref = cloud_based(cloud, clients=clients, workload=workload, real=real)
    client = make_transport(topology, client_seed)
    t_new, _ = client_based(client, clients=clients, workload=workload, real=real)
    for name, tr, total in ((CLOUD, cloud, t_ref), (CLIENT, client, t_new)):
        runs.append(_scenario_run(rep, name, tr, total))
        events.append(RepetitionEvents(repetition=rep, scenario=name, events=tuple(tr.events)))
    return runs, events


def compare(
    topology: Topology,
    workload: WorkloadSpec,
    clients: Sequence[int],
    make_transport: TransportFactory,
    *,
    repetitions: int,
    seed: int,
    progress: Callable[[int], object] = lambda rep: None,
    real: RealWork = MODELLED,
) -> ComparisonOutcome:
    """``repetitions`` runs of both scenarios; formula (1) over them."""
    if repetitions < 1:
        raise ValueError("repetitions must be >= 1")
    runs: list[ScenarioRun] = []
    events: list[RepetitionEvents] = []
    for rep, child in enumerate(np.random.SeedSequence(seed).spawn(repetitions)):
        r, e = compare_once(topology, workload, clients, make_transport, child, rep, real)
        runs += r
        events += e
        progress(rep)
    t_ref = [r.total_s for r in runs if r.scenario == CLOUD]
    t_new = [r.total_s for r in runs if r.scenario == CLIENT]
    return ComparisonOutcome(runs=runs, events=events, t_ref=t_ref, t_new=t_new)


def with_bandwidth(topology: Topology, link: str, mbps: float) -> Topology:
    """``topology`` with every link of profile ``link`` set to ``mbps`` megabits per second."""
    if link not in {p.name for p in topology.link_profiles()}:
        raise TopologyError(f"crossover.link: no link uses network profile {link!r}")

    def swap(p: LinkProfile) -> LinkProfile:
        return replace(p, bandwidth=mbps * 1e6 / 8) if p.name == link else p

    return map_profiles(topology, link=swap)


def crossover(
    topology: Topology,
    workload: WorkloadSpec,
    clients: Sequence[int],
    make_transport: TransportFactory,
    grid: CrossoverGrid,
    *,
    seed: int,
) -> list[CrossoverPoint]:
    """Expected t_ref and t_new (no jitter) at every grid point."""
    calm = without_jitter(topology)
    points = []
    for mbps in grid.bandwidth_mbps:
        topo = with_bandwidth(calm, grid.link, mbps)
        for n in grid.samples_per_device:
            wl = replace(workload, samples_per_device=int(n))
            runs, _ = compare_once(topo, wl, clients, make_transport, np.random.SeedSequence(seed))
            t = {r.scenario: r.total_s for r in runs}
            points.append(
                CrossoverPoint(
                    bandwidth_mbps=float(mbps),
                    samples_per_device=int(n),
                    t_ref_s=t[CLOUD],
                    t_new_s=t[CLIENT],
                )
            )
    return points
