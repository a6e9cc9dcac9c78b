"""Benchmark: how each aggregation rule holds up when 20 % of 20 clients are Byzantine.

``+experiment=fl_digits`` in the simulator on 20 clients (the edge fleet, 2 groups of 10) with
an IID split, 5 local epochs and 5 rounds: a clean FedAvg run is the baseline, then every
attack of ``fl.attack`` (sign_flip, scale, gaussian, label_flip, count_inflation, at their
default strengths) against every rule. The table gives the final test accuracy and its drop
from the clean FedAvg run in points; the last line is one JSON object with all figures.

    python benchmarks/bench_byzantine.py [--rounds 5] [--strategies fedavg median ...]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from fedsim.config import build_spec, compose, conf_dir
from fedsim.core.attacks import ATTACKS
from fedsim.pipeline import run
from fedsim.runtimes import runtime
from fedsim.scenarios import Hooks

# 20 clients, 4 of them attackers; an IID split, so that a robust rule's own loss on
# heterogeneous data does not blur what the attack costs.
SETUP = (
    "+experiment=fl_digits",
    "topology=edge_fleet",
    "topology.generate.groups=2",
    "topology.generate.devices_per_group=10",
    "partition.kind=iid",
    "fl.local_epochs=5",
    "fl.attack.fraction=0.2",
    "fl.attack.baselines=false",  # the benchmark runs every pair itself
)
STRATEGIES = {
    "fedavg": (),
    "median": (),
    "trimmed_mean": ("strategy.beta=0.2",),
    "krum": ("strategy.f=4",),
    "multikrum": ("strategy.f=4",),
}


def accuracy(strategy: str, attack: str | None, rounds: int) -> tuple[float, dict]:
    """The final accuracy of one run and its summary's attack record (empty when clean)."""
    overrides = [*SETUP, f"fl.rounds={rounds}", f"strategy={strategy}", *STRATEGIES[strategy]]
    if attack is not None:
        overrides.append(f"fl.attack.kind={attack}")
    spec = build_spec(compose(overrides), conf_dir())
    with tempfile.TemporaryDirectory() as tmp:
        result = run(spec, runtime("sim"), Path(tmp), Hooks(progress=False))
    return float(result.summary["final_accuracy"]), result.summary.get("attack", {})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=STRATEGIES)
    args = parser.parse_args()

    started = time.perf_counter()
    clean = {s: accuracy(s, None, args.rounds)[0] for s in args.strategies}
    baseline = clean["fedavg"] if "fedavg" in clean else accuracy("fedavg", None, args.rounds)[0]
    table: dict[str, dict[str, float]] = {"clean": clean}
    refused: dict[str, int] = {}
    for attack in ATTACKS:
        table[attack] = {}
        for s in args.strategies:
            acc, record = accuracy(s, attack, args.rounds)
            table[attack][s] = acc
            refused[attack] = record.get("updates_rejected", 0)

    width = max(len(s) for s in args.strategies) + 2
    print(f"clean FedAvg: {100 * baseline:.1f} %; cells: accuracy % (drop in points)")
    print("attack".ljust(16) + "".join(s.rjust(width + 10) for s in args.strategies))
    for attack, row in table.items():
        cells = "".join(
            f"{100 * a:.1f} ({100 * (baseline - a):+.1f})".rjust(width + 10) for a in row.values()
        )
        print(attack.ljust(16) + cells)
    print(
        json.dumps(
            {
                "benchmark": "byzantine",
                "rounds": args.rounds,
                "clients": 20,
                "attackers": 4,
                "clean_fedavg": baseline,
                "accuracy": table,
                "fedavg_drop_points": {
                    a: 100 * (baseline - row["fedavg"])
                    for a, row in table.items()
                    if "fedavg" in row and a != "clean"
                },
                "attacker_updates_refused": refused,
                "wall_s": time.perf_counter() - started,
            }
        )
    )


if __name__ == "__main__":
    main()
