"""Benchmark: one FL round at the flow level, FlowNetwork against the naive model, by fleet kind.

N devices download a 25 MB model at t=0, compute for a jittered time (lognormal, seed pinned),
then upload 25 MB, so the uploads start and end at N distinct times. Four fleets:

- ``star``: the devices hang off one switch; the server's link to it is 1 Gbit/s each way;
- ``tree``: 10 groups, each behind a 1 Gbit/s uplink to a 10 Gbit/s backbone, which reaches
  the server over a 10 Gbit/s link (device -> group uplink -> backbone -> server);

each with ``same`` access links (100 Mbit/s down, 20 Mbit/s up for every device) or ``own``
ones (every device its own speeds, lognormal around those, sigma 0.5, seed pinned). The script
measures the wall time of the whole simulation with FlowNetwork and, up to ``--naive-max``
devices, with NaiveFlowNetwork (every event recomputes every rate: O(N) per event) as the
baseline in the same run; both must give the same simulated round time. The cost exponent of
each fleet is the slope of log(wall time) against log(devices) over the FlowNetwork runs from
1,000 devices up (1 for O(1) work per event, 2 for O(N)). The last line is one JSON object.

Run from the repository root of an installed checkout (or with PYTHONPATH=.):
    python benchmarks/bench_network.py [--devices 16000] [--naive-max 2000] [--fleets star/own]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import simpy

from fedsim.sim.maxmin import NaiveFlowNetwork
from fedsim.sim.network import FlowNetwork

MODEL_BYTES = 25e6
SERVER = 125e6  # bytes/s, 1 Gbit/s
DEVICE_DOWN, DEVICE_UP = 12.5e6, 2.5e6
GROUPS, GROUP_UPLINK, BACKBONE = 10, 125e6, 1.25e9
COMPUTE_S = 60.0
SEED = 0
FLEETS = ("star/same", "star/own", "tree/same", "tree/own")


def fleet(kind: str, devices: int) -> tuple[dict, list[tuple], list[tuple]]:
    """Capacities, and each device's download and upload path, for ``topology/links``."""
    topology, links = kind.split("/")
    rng = np.random.default_rng(SEED)
    spread = rng.lognormal(0.0, 0.5, (2, devices)) if links == "own" else np.ones((2, devices))
    capacity: dict = {}
    if topology == "star":
        capacity |= {("srv", "sw"): SERVER, ("sw", "srv"): SERVER}
        trunks = [[("srv", "sw")]]
    else:
        capacity |= {("srv", "core"): BACKBONE, ("core", "srv"): BACKBONE}
        capacity |= {("core", "bb"): BACKBONE, ("bb", "core"): BACKBONE}
        trunks = []
        for g in range(GROUPS):
            capacity |= {("bb", ("g", g)): GROUP_UPLINK, (("g", g), "bb"): GROUP_UPLINK}
            trunks.append([("srv", "core"), ("core", "bb"), ("bb", ("g", g))])
    downs, ups = [], []
    for i in range(devices):
        trunk = trunks[i % len(trunks)]
        hub = trunk[-1][1]
        capacity[(hub, i)] = DEVICE_DOWN * float(spread[0, i])
        capacity[(i, hub)] = DEVICE_UP * float(spread[1, i])
        down = [*trunk, (hub, i)]
        downs.append(down)
        ups.append([(b, a) for a, b in reversed(down)])
    return capacity, downs, ups


def simulate(network_type: type, kind: str, devices: int) -> tuple[float, float]:
    """Run one round; return (wall seconds, simulated round seconds)."""
    capacity, downs, ups = fleet(kind, devices)
    latency = dict.fromkeys(capacity, 0.001)
    compute = COMPUTE_S * np.random.default_rng(SEED + 1).lognormal(0.0, 0.3, devices)
    env = simpy.Environment()
    net = network_type(env, capacity=capacity, latency=latency)

    def device(i: int):
        yield net.transfer(downs[i], MODEL_BYTES)
        yield env.timeout(compute[i])
        yield net.transfer(ups[i], MODEL_BYTES)

    for i in range(devices):
        env.process(device(i))
    began = time.perf_counter()
    env.run()
    return time.perf_counter() - began, env.now


def exponent(walls: dict[int, float]) -> float | None:
    """Least-squares slope of log(wall) on log(devices), over runs of 1,000 devices or more."""
    sizes = sorted(n for n in walls if n >= 1000)
    if len(sizes) < 2:
        return None
    slope = np.polyfit(np.log(sizes), np.log([walls[n] for n in sizes]), 1)[0]
    return round(float(slope), 3)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=16_000, help="largest FlowNetwork run")
    parser.add_argument("--naive-max", type=int, default=2_000, help="largest naive run")
    parser.add_argument(
        "--fleets", default=",".join(FLEETS), help="comma-separated, of " + str(FLEETS)
    )
    args = parser.parse_args(argv)
    kinds = args.fleets.split(",")
    if unknown := set(kinds) - set(FLEETS):
        parser.error(f"unknown fleets {sorted(unknown)}; known: {FLEETS}")
    sizes = [250, 500] + [n for n in (1000, 2000, 4000, 8000, 16_000, 32_000, 64_000)]
    sizes = sorted({n for n in sizes if n <= args.devices} | {args.devices})
    row = "{:>10} {:>8} {:>9} {:>9} {:>8} {:>13} {:>13}"
    print(row.format("fleet", "devices", "flow s", "naive s", "speedup", "round s", "naive round"))
    report: dict = {"naive_max": args.naive_max, "runs": [], "exponent": {}}
    for kind in kinds:
        walls = {}
        for n in sizes:
            wall, simulated = simulate(FlowNetwork, kind, n)
            walls[n] = wall
            run = {"fleet": kind, "devices": n, "flow_s": round(wall, 4), "round_s": simulated}
            naive = ["-"] * 3
            if n <= args.naive_max:
                naive_wall, naive_simulated = simulate(NaiveFlowNetwork, kind, n)
                naive = [f"{naive_wall:.3f}", f"{naive_wall / wall:.1f}x", f"{naive_simulated:.6f}"]
                run |= {"naive_s": round(naive_wall, 4), "naive_round_s": naive_simulated}
            report["runs"].append(run)
            print(
                row.format(kind, n, f"{wall:.3f}", naive[0], naive[1], f"{simulated:.6f}", naive[2])
            )
        report["exponent"][kind] = exponent(walls)
        print(f"{kind}: cost exponent from 1,000 devices up {report['exponent'][kind]}")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
