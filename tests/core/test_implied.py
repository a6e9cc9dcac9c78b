"""What Table II implies: the fit recovers settings that produced the 'paper' figures itself."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from topologies import hardware, link, server

from fedsim.core.experiment import compare_once
from fedsim.core.implied import (
    BANDWIDTH,
    EFFICIENCY,
    GPUS,
    SAMPLES,
    configure,
    edge_links,
    efficiency_cap,
    implied,
    stated_setting,
)
from fedsim.core.results import CLIENT, CLOUD
from fedsim.core.topology import Device, Group, Topology, without_jitter
from fedsim.core.workload import DatasetSpec, ModelSpec, WorkloadSpec
from fedsim.sim.runtime import SimTransport

CLIENTS = [2, 3]


def make_transport(topology, seed):
    return SimTransport(topology, seed=seed)


def gpu_testbed() -> Topology:
    """A server with 8 GPUs of 10 TFLOP/s at 0.4, two 8 TFLOP/s clients in their own groups.

    Each client reaches the backbone over a 1 Gb/s access link and a 1 Gb/s group uplink; the
    cloud side is 10 Gb/s. Jitter is on, as in a configured topology: the fit switches it off.
    """
    gpus = replace(hardware("srv", 80.0, jitter=0.05), units=8, efficiency=0.4)
    gpus = replace(gpus, scaling_efficiency=0.9)
    gpu_client = replace(hardware("cli", 8.0, jitter=0.05), efficiency=0.4)
    gigabit = link("gigabit", 125.0, latency_s=0.001)
    uplink = link("uplink", 125.0, latency_s=0.005)
    cloud = link("cloud", 1250.0, latency_s=0.0005)
    groups = {
        0: Group(id=0, description="cloud", uplink=cloud),
        1: Group(id=1, description="edge 1", uplink=uplink),
        2: Group(id=2, description="edge 2", uplink=uplink),
    }
    devices = {
        0: server(gpus, cloud),
        **{
            c: Device(
                id=c,
                description=f"client {c}",
                group=c - 1,
                id_in_group=0,
                role="trainer",
                hardware=gpu_client,
                link=gigabit,
            )
            for c in CLIENTS
        },
    }
    return Topology("testbed", groups, devices)


def workload(samples: int = 64) -> WorkloadSpec:
    """A YOLOv4-sized job: 400 GFLOPs per sample, a 256 MB model, 100 kB per sample."""
    model = ModelSpec(
        name="m",
        input_size=608,
        num_classes=80,
        parameters=64_000_000,
        buffers=0,
        forward_flops=int(133e9),
        train_flops=int(400e9),
    )
    data = DatasetSpec(name="d", samples=1_000_000, total_bytes=int(100e9))
    return WorkloadSpec(
        model=model, dataset=data, samples_per_device=samples, batch_size=64, epochs=1
    )


def simulated(topology: Topology, wl: WorkloadSpec) -> tuple[float, float]:
    """fedsim's own t_ref and t_new without jitter: the 'paper' figures of a known setting."""
    runs, _ = compare_once(
        without_jitter(topology), wl, CLIENTS, make_transport, np.random.SeedSequence(0)
    )
    t = {r.scenario: r.total_s for r in runs}
    return t[CLOUD], t[CLIENT]


@pytest.fixture(scope="module")
def known():
    """Figures made with 2 server GPUs and 256 samples per device, the rest as stated."""
    topo = gpu_testbed()
    truth = configure(topo, CLIENTS, gpus=2, efficiency=0.4, mbps=1000.0)
    t_ref, t_new = simulated(truth, workload(256))
    fit = implied(topo, workload(), CLIENTS, make_transport, t_ref_s=t_ref, t_new_s=t_new)
    return fit, (t_ref, t_new)


def test_the_stated_setting_is_read_from_the_topology_and_workload():
    # Prepare
    topo = gpu_testbed()

    # Execute
    stated = stated_setting(topo, workload(), CLIENTS)

    # Assert: the clients' own links and uplinks are the path; the cloud link is the server's.
    assert edge_links(topo, CLIENTS) == ("gigabit", "uplink")
    assert stated.samples_per_device == 64
    assert stated.path_bandwidth_mbps == pytest.approx(1000.0)
    assert stated.server_gpus == 8
    assert stated.efficiency == 0.4


def test_configure_sets_gpus_efficiency_and_path_bandwidth():
    # Prepare
    topo = gpu_testbed()

    # Execute
    out = configure(topo, CLIENTS, gpus=2, efficiency=0.6, mbps=500.0)

    # Assert: the peak follows the GPU count, the clients keep their ratio (1:1 here)
    server = out.devices[0].hardware
    assert server.units == 2 and server.peak_flops == pytest.approx(20e12)
    assert server.efficiency == 0.6 and out.devices[2].hardware.efficiency == pytest.approx(0.6)
    speeds = {p.name: p.bandwidth * 8 / 1e6 for p in out.link_profiles()}
    assert speeds["gigabit"] == pytest.approx(500.0) and speeds["uplink"] == pytest.approx(500.0)
    assert speeds["cloud"] == pytest.approx(10000.0)


def test_no_client_is_pushed_past_full_efficiency():
    # Prepare: clients stated at twice the server's efficiency.
    topo = gpu_testbed()
    eager = replace(topo.devices[2].hardware, efficiency=0.8)
    topo = Topology(
        topo.name,
        topo.groups,
        {i: replace(d, hardware=eager) if i in CLIENTS else d for i, d in topo.devices.items()},
    )

    # Execute / Assert: the shared efficiency stops at 0.5, and beyond it configure refuses.
    assert efficiency_cap(topo, CLIENTS, 1.0) == pytest.approx(0.5)
    with pytest.raises(ValueError, match=r"device 2 at 1\.2"):
        configure(topo, CLIENTS, gpus=8, efficiency=0.6, mbps=1000.0)
    fit = implied(topo, workload(), CLIENTS, make_transport, t_ref_s=6.0, t_new_s=6.7)
    assert max(fit.bounds.efficiency) == pytest.approx(0.5)
    assert all(f.setting.efficiency <= 0.5 + 1e-12 for f in (*fit.per_gpus, *fit.holding))


def test_holding_bandwidth_and_efficiency_recovers_gpus_and_samples(known):
    # Prepare / Execute: the module fixture fits figures made with 2 GPUs and 256 samples.
    fit, _ = known

    # Execute
    held = fit.holding_fit([BANDWIDTH, EFFICIENCY])

    # Assert: with bandwidth and efficiency known, the two times pin the other two down.
    assert held.within()
    assert held.setting.server_gpus == 2
    assert held.setting.samples_per_device == 256
    assert held.contradicts(fit.stated) == (SAMPLES, GPUS)


def test_holding_samples_and_efficiency_recovers_gpus_and_bandwidth():
    # Prepare: figures made with 2 GPUs on 500 Mb/s paths, the stated shard and efficiency.
    topo = gpu_testbed()
    truth = configure(topo, CLIENTS, gpus=2, efficiency=0.4, mbps=500.0)
    t_ref, t_new = simulated(truth, workload())

    # Execute
    fit = implied(topo, workload(), CLIENTS, make_transport, t_ref_s=t_ref, t_new_s=t_new)
    held = fit.holding_fit([SAMPLES, EFFICIENCY])

    # Assert
    assert held.within()
    assert held.setting.server_gpus == 2
    assert held.setting.path_bandwidth_mbps == pytest.approx(500.0, rel=0.02)
    assert held.contradicts(fit.stated) == (BANDWIDTH, GPUS)


def test_the_best_fit_with_two_gpus_lies_on_the_truth_family(known):
    # Prepare
    fit, _ = known

    # Execute
    two = fit.per_gpus[1]

    # Assert: the bandwidth is pinned to the truth within the grid's resolution; only
    # samples / efficiency is (256 / 0.4 = 640), not each of them.
    assert two.setting.server_gpus == 2 and two.within()
    assert two.setting.path_bandwidth_mbps == pytest.approx(1000.0, rel=0.05)
    ratio = two.setting.samples_per_device / two.setting.efficiency
    assert ratio == pytest.approx(640.0, rel=0.05)


def test_every_fit_says_which_stated_values_it_keeps_and_contradicts(known):
    fit, _ = known

    # Execute
    summary = fit.summary()

    # Assert: the stated prediction is reported as such, and differs from the targets.
    assert summary["stated_fit"]["held"] == [SAMPLES, BANDWIDTH, GPUS, EFFICIENCY]
    assert summary["stated_fit"]["contradicts"] == []
    assert not summary["stated_fit"]["within_tolerance"]
    assert len(summary["holding"]) == 15 and len(summary["per_gpus"]) == 8
    assert all(f["within_tolerance"] for f in summary["within"])
    assert summary["label"].startswith("implied values")


def test_the_stated_figures_are_reproduced_by_the_stated_setting():
    # Prepare: 'paper' figures that are fedsim's own prediction at the stated values.
    topo = gpu_testbed()
    t_ref, t_new = simulated(topo, workload())

    # Execute
    fit = implied(topo, workload(), CLIENTS, make_transport, t_ref_s=t_ref, t_new_s=t_new)

    # Assert
    assert fit.stated_fit.worst < 1e-9
    assert fit.stated_fit.contradicts(fit.stated) == ()
    assert fit.within()[0].contradicts(fit.stated) == ()


def test_unreachable_figures_leave_only_a_closest_fit():
    # Prepare: a t_new far below what even the fastest setting can give (the model alone
    # takes seconds to travel both ways at the highest bandwidth searched).
    topo = gpu_testbed()

    # Execute
    fit = implied(topo, workload(), CLIENTS, make_transport, t_ref_s=6.0, t_new_s=0.05)

    # Assert
    assert fit.within() == []
    best = fit.best()
    assert not best.within() and best.error_new > 0.5


def test_bad_targets_are_refused():
    with pytest.raises(ValueError, match="targets must be > 0"):
        implied(gpu_testbed(), workload(), CLIENTS, make_transport, t_ref_s=0.0, t_new_s=1.0)
