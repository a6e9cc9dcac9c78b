"""Benchmark: simulate one FL round over a star network with FlowNetwork and the naive model.

N devices hang off one switch; the server's link to it is 1 Gbit/s each way, each device's is
100 Mbit/s down and 20 Mbit/s up. At t=0 every device downloads a 25 MB model (all share the
server link), computes for a jittered time (lognormal, seed pinned), then uploads 25 MB, so
the uploads start and end at N distinct times. The script measures the wall time of the whole
simulation with FlowNetwork (cost per event independent of N here) and with NaiveFlowNetwork
(every event recomputes every rate: O(N) per event, O(N^2) per round), reports the speedup at
equal sizes, and prints the simulated round time of both, which must agree.

Run from the repository root of an installed checkout (or with PYTHONPATH=.):
    python benchmarks/bench_network.py [--devices 10000] [--naive-max 2000]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import simpy

from fedsim.sim.maxmin import NaiveFlowNetwork
from fedsim.sim.network import FlowNetwork

MODEL_BYTES = 25e6
SERVER = 125e6  # bytes/s, 1 Gbit/s
DEVICE_DOWN, DEVICE_UP = 12.5e6, 2.5e6
COMPUTE_S = 60.0
SEED = 0


def simulate(network_type: type, devices: int) -> tuple[float, float]:
    """Run one round; return (wall seconds, simulated round seconds)."""
    capacity = {("srv", "sw"): SERVER, ("sw", "srv"): SERVER}
    for i in range(devices):
        capacity[("sw", i)] = DEVICE_DOWN
        capacity[(i, "sw")] = DEVICE_UP
    latency = dict.fromkeys(capacity, 0.001)
    compute = COMPUTE_S * np.random.default_rng(SEED).lognormal(0.0, 0.3, devices)
    env = simpy.Environment()
    net = network_type(env, capacity=capacity, latency=latency)

    def device(i: int):
        yield net.transfer([("srv", "sw"), ("sw", i)], MODEL_BYTES)
        yield env.timeout(compute[i])
        yield net.transfer([(i, "sw"), ("sw", "srv")], MODEL_BYTES)

    for i in range(devices):
        env.process(device(i))
    began = time.perf_counter()
    env.run()
    return time.perf_counter() - began, env.now


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--naive-max", type=int, default=2_000, help="largest naive run")
    args = parser.parse_args(argv)
    sizes = {n for n in (250, 500, 1000, 2000, 4000) if n <= min(args.naive_max, args.devices)}
    row = "{:>8} {:>9} {:>9} {:>8} {:>12} {:>12}"
    print(row.format("devices", "flow s", "naive s", "speedup", "round s", "naive round"))
    for n in sorted(sizes | {args.devices}):
        wall, simulated = simulate(FlowNetwork, n)
        naive = ["-"] * 3
        if n <= args.naive_max:
            naive_wall, naive_simulated = simulate(NaiveFlowNetwork, n)
            naive = [f"{naive_wall:.3f}", f"{naive_wall / wall:.1f}x", f"{naive_simulated:.6f}"]
        print(row.format(n, f"{wall:.3f}", naive[0], naive[1], f"{simulated:.6f}", naive[2]))


if __name__ == "__main__":
    main()
