"""Benchmark: fedsim against Flower's simulation engine, whole processes timed side by side.

Three parts, each side a fresh subprocess timed from start to exit (interpreter start, imports,
data, the run, fedsim's report files), as a user would wait for it. fedsim runs each part twice:
as it runs by default (report with plots) and with ``report.plots=false`` (the same tables,
summary and report, no ``plots/*.png``); Flower writes no report either way. Each side runs
``--repeat`` times, the sides in turns, and the best (least) time of each counts, since other
work on a shared host only ever adds time:

1. **no-op**: 1,000 clients x 3 rounds whose clients train nothing. fedsim: ``fl_digits`` with
   ``fl.training=modelled`` (time accounted for, no tensors) on the edge fleet resized to 10 x
   100 devices. Flower: ``run_simulation`` with a ``ClientApp`` that sends back what it got, a
   one-value array (the least a message can carry, so the ratio is the least fedsim can claim),
   under FedAvg. Figure: client-rounds per second.
2. **digits**: the digits CNN trained for real by 100 clients x 5 rounds on an IID split of
   scikit-learn's digits, evaluated on the held-out split after every round. fedsim:
   ``fl_digits`` on the edge fleet resized to 1 x 100, ``partition.kind=iid``. Flower: a
   ``ClientApp`` that trains with fedsim's own ``TorchTrainer`` on the same shards (the same
   seeded split, the same device ids and thus the same shuffles), FedAvg weighted by samples,
   and the same ``Evaluator`` as its ``evaluate_fn``. Figures: wall time and final accuracy.
3. **synthetic** (fedsim only): ``fl_synthetic``, 1,000 clients training the digits CNN for real
   on the synthetic set. Figures: wall time and final accuracy.

The start-up floor is timed too, best of ``--repeat``: ``python -c "import numpy"`` (the
least any Python FL process pays) and ``python -m fedsim --version`` (fedsim's entry point and
Hydra, nothing run), which bound how far the no-op ratio can go.

Flower is the optional ``bench`` extra (``pip install -e '.[bench]'``); ``--flower-python``
runs its side in another interpreter (a virtual environment that holds Flower). Without
Flower the script prints one line and exits 2. The last line is one JSON object with the
figures and the ratios.

    python benchmarks/bench_vs_flower.py [--flower-python PATH] [--repeat N] [--skip-synthetic]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
NOOP_CLIENTS, NOOP_ROUNDS = 1000, 3
DIGITS_CLIENTS, DIGITS_ROUNDS = 100, 5
# fl_digits' own training settings, which both sides use in part 2.
BATCH_SIZE, LEARNING_RATE, SEED, TEST_FRACTION = 16, 0.05, 0, 0.2


def fleet(clients: int, groups: int) -> list[str]:
    """Overrides that resize the edge fleet to ``clients`` trainers in ``groups`` groups."""
    return [
        "topology=edge_fleet",
        f"topology.generate.groups={groups}",
        f"topology.generate.devices_per_group={clients // groups}",
    ]


FEDSIM_RUNS = {
    "noop": [
        "+experiment=fl_digits",
        "fl.training=modelled",
        *fleet(NOOP_CLIENTS, 10),
        f"fl.rounds={NOOP_ROUNDS}",
    ],
    "digits": [
        "+experiment=fl_digits",
        *fleet(DIGITS_CLIENTS, 1),
        "partition.kind=iid",
        f"fl.rounds={DIGITS_ROUNDS}",
        f"fl.batch_size={BATCH_SIZE}",
        f"fl.learning_rate={LEARNING_RATE}",
        f"seed={SEED}",
        f"partition.test_fraction={TEST_FRACTION}",
    ],
    "synthetic": ["+experiment=fl_synthetic"],
}


def timed(command: list[str], env: dict[str, str]) -> float:
    """Run ``command`` to completion; its wall seconds. A failure stops the benchmark."""
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{' '.join(command[:4])} ... failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return elapsed


def fedsim_side(part: str, env: dict[str, str], *, plots: bool = True) -> dict[str, Any]:
    """fedsim's run of ``part`` through ``python -m fedsim``: wall seconds and final accuracy;
    ``plots`` false adds ``report.plots=false``."""
    with tempfile.TemporaryDirectory(prefix=f"bench-fedsim-{part}-") as run_dir:
        command = [sys.executable, "-m", "fedsim", *FEDSIM_RUNS[part], f"hydra.run.dir={run_dir}"]
        if not plots:
            command.append("report.plots=false")
        wall = timed(command, env)
        summary = json.loads((Path(run_dir) / "summary.json").read_text())
    return {"wall_s": wall, "accuracy": summary["final_accuracy"]}


def flower_side(part: str, python: str, env: dict[str, str]) -> dict[str, Any]:
    """Flower's run of ``part``: this script with ``--flower-part`` under ``python``."""
    clients, rounds = (
        (NOOP_CLIENTS, NOOP_ROUNDS) if part == "noop" else (DIGITS_CLIENTS, DIGITS_ROUNDS)
    )
    with tempfile.TemporaryDirectory(prefix=f"bench-flower-{part}-") as out:
        result = Path(out) / "result.json"
        command = [
            python,
            str(Path(__file__).resolve()),
            "--flower-part",
            part,
            "--clients",
            str(clients),
            "--rounds",
            str(rounds),
            "--result",
            str(result),
        ]
        wall = timed(command, env)
        accuracy = json.loads(result.read_text())["accuracy"]
    return {"wall_s": wall, "accuracy": accuracy}


# ---- Flower's side, run in its own process (imports flwr) ----


def run_flower(part: str, clients: int, rounds: int, result: Path) -> None:
    """Flower's ``run_simulation`` of ``part``; writes ``{"accuracy": ...}`` to ``result``."""
    import numpy as np
    from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg
    from flwr.simulation import run_simulation

    state: dict[str, Any] = {}

    def setup() -> dict[str, Any]:
        """The shards, trainer and evaluator, made once per process (each Ray actor's own)."""
        if not state:
            import torch

            from fedsim.core.partition import iid_partition
            from fedsim.ml.data import load_digits_split
            from fedsim.ml.train import Evaluator, TorchTrainer

            torch.set_num_threads(1)  # as fedsim's scenario does for these tiny models
            X, y, X_test, y_test = load_digits_split(test_fraction=TEST_FRACTION, seed=SEED)
            # fedsim's federated scenario draws the split from the first of three seeds.
            rng = np.random.default_rng(np.random.SeedSequence(SEED).spawn(3)[0])
            parts = iid_partition(len(y), clients, rng)
            # fedsim's edge fleet numbers its trainers 1..N; the trainer seeds by device id.
            shards = {i + 1: (X[p], y[p]) for i, p in enumerate(parts)}
            state["trainer"] = TorchTrainer(
                model_name="digits_cnn", num_classes=10, data=shards, seed=SEED
            )
            state["evaluator"] = Evaluator(
                model_name="digits_cnn", num_classes=10, X=X_test, y=y_test
            )
            state["names"] = list(state["trainer"].initial_parameters())
            state["sizes"] = {d: len(shard[1]) for d, shard in shards.items()}
        return state

    def to_named(record: ArrayRecord, names: list[str]) -> dict[str, np.ndarray]:
        return dict(zip(names, record.to_numpy_ndarrays(), strict=True))

    client = ClientApp()

    @client.train()
    def train(msg: Message, context: Context) -> Message:
        arrays = msg.content["arrays"]
        if part == "noop":
            reply = RecordDict({"arrays": arrays, "metrics": MetricRecord({"num-examples": 1})})
            return Message(content=reply, reply_to=msg)
        from fedsim.core.runtime import FitIns, ModelRef

        s = setup()
        device = int(context.node_config["partition-id"]) + 1
        # The model version fedsim's trainer seeds its shuffles with: round 1 trains version 0.
        version = int(msg.content["config"]["server-round"]) - 1
        samples = s["sizes"][device]
        params, _ = s["trainer"](
            device,
            FitIns(
                model=ModelRef(name="digits_cnn", version=version, nbytes=0),
                samples=samples,
                epochs=1,
                batch_size=BATCH_SIZE,
                flops=0.0,
                update_nbytes=0,
                parameters=to_named(arrays, s["names"]),
                config={"learning_rate": LEARNING_RATE},
            ),
        )
        reply = RecordDict(
            {
                "arrays": ArrayRecord(list(params.values())),
                "metrics": MetricRecord({"num-examples": samples}),
            }
        )
        return Message(content=reply, reply_to=msg)

    server = ServerApp()
    accuracy: list[float | None] = [None]

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        strategy = FedAvg(
            fraction_train=1.0,
            fraction_evaluate=0.0,
            min_train_nodes=clients,
            min_available_nodes=clients,
        )
        if part == "noop":
            initial = ArrayRecord([np.zeros(1, dtype=np.float32)])
            strategy.start(grid=grid, initial_arrays=initial, num_rounds=rounds)
            return
        s = setup()

        def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
            metrics = s["evaluator"](to_named(arrays, s["names"]))
            accuracy[0] = metrics["accuracy"]
            return MetricRecord(metrics)

        initial = ArrayRecord(list(s["trainer"].initial_parameters().values()))
        strategy.start(grid=grid, initial_arrays=initial, num_rounds=rounds, evaluate_fn=evaluate)

    run_simulation(
        server_app=server,
        client_app=client,
        num_supernodes=clients,
        backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}},
    )
    result.write_text(json.dumps({"accuracy": accuracy[0]}))


# ---- the comparison ----


def has_flower(python: str) -> bool:
    probe = [python, "-c", "import flwr.simulation"]
    return subprocess.run(probe, capture_output=True).returncode == 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--flower-python",
        default=sys.executable,
        help="the interpreter that runs Flower's side (default: this one)",
    )
    parser.add_argument("--skip-synthetic", action="store_true", help="leave out part 3")
    parser.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="runs of each side per part, in turns; the best counts (default 3)",
    )
    # Flower's side of one part, as the comparison starts it.
    parser.add_argument("--flower-part", choices=("noop", "digits"), help=argparse.SUPPRESS)
    parser.add_argument("--clients", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error(f"--repeat must be >= 1, got {args.repeat}")
    if args.flower_part is not None:
        run_flower(args.flower_part, args.clients, args.rounds, args.result)
        return

    if not has_flower(args.flower_python):
        print(
            f"Flower is not installed for {args.flower_python}: pip install -e '.[bench]', "
            "or pass --flower-python"
        )
        sys.exit(2)
    # Both sides import this tree's fedsim, whichever interpreter runs them.
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }

    repeat = args.repeat
    load_start = os.getloadavg()  # others' work on the host, which the best-of tries to avoid
    floor = {
        "python_numpy_s": best([sys.executable, "-c", "import numpy"], env, repeat),
        "fedsim_version_s": best([sys.executable, "-m", "fedsim", "--version"], env, repeat),
    }
    noop = compare("noop", args.flower_python, env, repeat)
    digits = compare("digits", args.flower_python, env, repeat)
    synthetic = None if args.skip_synthetic else fedsim_side("synthetic", env)

    client_rounds = NOOP_CLIENTS * NOOP_ROUNDS
    flower_noop, flower_digits = noop["flower"]["wall_s"], digits["flower"]["wall_s"]
    print(
        f"{'part':<44} {'fedsim s':>9} {'no plots':>9} {'Flower s':>9} "
        f"{'fedsim acc':>10} {'Flower acc':>10}"
    )
    print(
        f"{f'no-op, {NOOP_CLIENTS:,} clients x {NOOP_ROUNDS} rounds':<44} "
        f"{noop['fedsim']['wall_s']:>9.2f} {noop['fedsim_no_plots']['wall_s']:>9.2f} "
        f"{flower_noop:>9.2f} {'-':>10} {'-':>10}"
    )
    print(
        f"{f'digits CNN, {DIGITS_CLIENTS} clients x {DIGITS_ROUNDS} rounds, iid':<44} "
        f"{digits['fedsim']['wall_s']:>9.2f} {digits['fedsim_no_plots']['wall_s']:>9.2f} "
        f"{flower_digits:>9.2f} {digits['fedsim']['accuracy']:>10.3f} "
        f"{digits['flower']['accuracy']:>10.3f}"
    )
    if synthetic is not None:
        print(
            f"{'fl_synthetic, 1,000 clients x 5 rounds, real':<44} "
            f"{synthetic['wall_s']:>9.2f} {'-':>9} {'-':>9} {synthetic['accuracy']:>10.3f} "
            f"{'-':>10}"
        )
    print(
        f"start-up floor: python -c 'import numpy' {floor['python_numpy_s']:.2f} s, "
        f"python -m fedsim --version {floor['fedsim_version_s']:.2f} s "
        f"(best of {repeat}; the other figures too)"
    )
    load = {"start": list(load_start), "end": list(os.getloadavg())}
    print(f"load average (1, 5, 15 min): {load['start']} at the start, {load['end']} at the end")
    figures: dict[str, Any] = {"repeat": repeat, "load_average": load, "floor": rounded(floor)}
    for name, part in (("noop", noop), ("digits", digits)):
        clients, rounds = (
            (NOOP_CLIENTS, NOOP_ROUNDS) if name == "noop" else (DIGITS_CLIENTS, DIGITS_ROUNDS)
        )
        flower_s = part["flower"]["wall_s"]
        block: dict[str, Any] = {
            "clients": clients,
            "rounds": rounds,
            "flower_wall_s": round(flower_s, 3),
            "flower_runs_s": [round(t, 3) for t in part["flower"]["runs_s"]],
            "flower_accuracy": part["flower"]["accuracy"],
        }
        for variant, label in (("fedsim", ""), ("fedsim_no_plots", "no plots, ")):
            wall = part[variant]["wall_s"]
            block[f"{variant}_wall_s"] = round(wall, 3)
            block[f"{variant}_runs_s"] = [round(t, 3) for t in part[variant]["runs_s"]]
            block[f"{variant}_accuracy"] = part[variant]["accuracy"]
            if name == "noop":
                ratio = flower_s / wall
                block[f"{variant}_client_rounds_per_s"] = round(clients * rounds / wall, 1)
                block[f"{variant}_ratio"] = round(ratio, 2)
                print(
                    f"no-op ({label or 'with plots, '}best of {repeat}): fedsim "
                    f"{clients * rounds / wall:,.0f} client-rounds/s, Flower "
                    f"{clients * rounds / flower_s:,.0f}: {ratio:.1f}x (goal >= 100x)"
                )
            else:
                fraction = wall / flower_s
                gap = 100 * abs(part[variant]["accuracy"] - part["flower"]["accuracy"])
                block[f"{variant}_time_fraction"] = round(fraction, 4)
                block[f"{variant}_accuracy_gap_points"] = round(gap, 2)
                print(
                    f"digits ({label or 'with plots, '}best of {repeat}): fedsim takes "
                    f"{fraction:.3f} of Flower's time (goal <= 0.25), accuracy {gap:.1f} "
                    "points apart (goal <= 2)"
                )
        figures[name] = block
    figures["noop"]["flower_client_rounds_per_s"] = round(client_rounds / flower_noop, 1)
    figures["synthetic"] = (
        None
        if synthetic is None
        else {
            "clients": 1000,
            "wall_s": round(synthetic["wall_s"], 3),
            "accuracy": synthetic["accuracy"],
        }
    )
    print(json.dumps(figures))


def best(command: list[str], env: dict[str, str], repeat: int) -> float:
    """The least wall time of ``repeat`` runs of ``command``."""
    return min(timed(command, env) for _ in range(repeat))


def compare(part: str, flower_python: str, env: dict[str, str], repeat: int) -> dict[str, Any]:
    """``part`` run ``repeat`` times by each side in turns (fedsim, fedsim without plots,
    Flower): per side the least wall time, every time, and the accuracy."""
    runs: dict[str, list[dict[str, Any]]] = {"fedsim": [], "fedsim_no_plots": [], "flower": []}
    for _ in range(repeat):
        runs["fedsim"].append(fedsim_side(part, env))
        runs["fedsim_no_plots"].append(fedsim_side(part, env, plots=False))
        runs["flower"].append(flower_side(part, flower_python, env))
    sides = {}
    for side, results in runs.items():
        accuracies = {r["accuracy"] for r in results}
        if len(accuracies) != 1:  # each side is seeded: a second value would be a bug
            sys.exit(f"{part}: {side}'s runs reached different accuracies {sorted(accuracies)}")
        sides[side] = {
            "wall_s": min(r["wall_s"] for r in results),
            "runs_s": [r["wall_s"] for r in results],
            "accuracy": results[0]["accuracy"],
        }
    return sides


def rounded(figures: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 3) for k, v in figures.items()}


if __name__ == "__main__":
    main()
