"""Benchmark: one client-based FL round of N trainers through the whole simulated stack.

The round goes through the round coordinator and the SimPy transport, as the main job's does:
N trainers behind one group uplink (1 Gbit/s) deploy a 100 MB model, train for a jittered time,
upload their updates, and the server aggregates. It is run with the flow-level network
(``FlowNetwork``) and, as the baseline in the same run, with ``NaiveFlowNetwork``, which
recomputes every rate at every event; both must give the same simulated round time.

    python benchmarks/bench_round.py [--devices 10000] [--naive-max 2000]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

from fedsim.core.scenarios import client_based
from fedsim.core.topology import Device, Group, HardwareProfile, LinkProfile, Topology
from fedsim.core.workload import DatasetSpec, ModelSpec, WorkloadSpec
from fedsim.sim.maxmin import NaiveFlowNetwork
from fedsim.sim.network import FlowNetwork
from fedsim.sim.runtime import SimTransport

SEED = 0


def topology(n: int) -> Topology:
    hw = HardwareProfile(
        name="gpu",
        peak_flops=10e12,
        efficiency=0.4,
        memory_bytes=16e9,
        memory_bandwidth=300e9,
        disk_bandwidth=1e9,
        jitter=0.1,
    )
    lan = LinkProfile(name="lan", bandwidth=12.5e6, latency=0.0005)
    wan = LinkProfile(name="wan", bandwidth=125e6, latency=0.005)
    groups = {
        0: Group(id=0, description="cloud", uplink=wan),
        1: Group(id=1, description="edge", uplink=wan),
    }
    server = Device(
        id=0,
        description="server",
        group=0,
        id_in_group=0,
        role="server",
        hardware=replace(hw, peak_flops=100e12),
        link=wan,
    )
    devices = {0: server}
    for i in range(1, n + 1):
        devices[i] = Device(
            id=i,
            description="trainer",
            group=1,
            id_in_group=i,
            role="trainer",
            hardware=hw,
            link=lan,
        )
    return Topology("bench", groups, devices)


def workload() -> WorkloadSpec:
    model = ModelSpec(
        name="m",
        input_size=224,
        num_classes=10,
        parameters=25_000_000,
        buffers=0,
        forward_flops=4 * 10**9,
        train_flops=12 * 10**9,
    )
    data = DatasetSpec(name="d", samples=10**6, total_bytes=10**11)
    return WorkloadSpec(model=model, dataset=data, samples_per_device=100, batch_size=32, epochs=1)


def round_time(n: int, network: type) -> tuple[float, float]:
    """(wall seconds, simulated seconds) of one round of ``n`` trainers."""
    topo, wl = topology(n), workload()
    start = time.perf_counter()
    transport = SimTransport(topo, seed=SEED, network=network)
    simulated, _ = client_based(transport, clients=list(range(1, n + 1)), workload=wl)
    return time.perf_counter() - start, simulated


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=10_000)
    ap.add_argument("--naive-max", type=int, default=2_000)
    args = ap.parse_args()
    sizes = sorted({s for s in (250, 1_000, 2_000, args.devices) if s <= args.devices})
    print(f"{'trainers':>9} {'flow [s]':>9} {'naive [s]':>10} {'ratio':>7} {'round [s]':>12}")
    for n in sizes:
        wall, sim = round_time(n, FlowNetwork)
        if n <= args.naive_max:
            base, base_sim = round_time(n, NaiveFlowNetwork)
            assert abs(base_sim - sim) <= 1e-6 * sim, (base_sim, sim)
            print(f"{n:>9,} {wall:>9.3f} {base:>10.3f} {base / wall:>6.1f}x {sim:>12.3f}")
        else:
            print(f"{n:>9,} {wall:>9.3f} {'-':>10} {'-':>7} {sim:>12.3f}")


if __name__ == "__main__":
    main()
