"""Benchmark: how far the simulator's prediction is from emulated runs on this host.

Each scenario runs ``fl_digits`` with ``mode=emulated`` (agents in network namespaces behind
tc-shaped links, CPU held by cgroup quotas; needs root) and reads the fidelity block of its
summary and its ``fidelity.csv``: the prediction is the same spec and seed in the simulator,
slowed by the emulation's slow-down factor and holding each device to the CFS quota the
emulation gave it. The baseline of every figure is the measured run in the same process; the
notes and the JSON line carry the host's load and each agent's throttling counters, from the
run's ``emulation.json``.

The devices' hardware is this host's measured profile (``fedsim calibrate`` at the start, into
a temporary directory, or ``--profile PATH``) slowed to a share ``q`` of one core: every time
of the step model and every other time of its processor (cold start, per-request and
per-segment cost, a task's overhead, keeping an update) divided by ``q``, every throughput
multiplied by it, the wait for the disk unchanged. ``mode.host_gflops`` is the host
profile's own speed, so the emulation's quota of such a device is exactly ``q``
cores. The server is the host profile itself (it runs unthrottled, in this process).

Scenarios (``keti``: the KETI testbed's three trainers; ``fleet16``: a generated fleet of two
groups of eight trainers):

- bandwidth-bound: the trainers share 20 Mbit/s group uplinks;
- latency-bound: 100 ms round trip on the group uplinks, small model; where the kernel has no
  netem (tc cannot delay packets there), the emulation's latency relay delays each request and
  response instead, and the notes say which did;
- compute-bound: quotas of 0.1, 0.25 and 0.5 core;
- deadline: one straggler at 0.01 core is cut by the round deadline, which leaves the others
  room for their cold start;
- dropouts: each update is lost with probability 0.3, rounds end at their deadline.

``--again`` runs every scenario's emulation a second time, with the same seed, and gives the
host's own repeatability: each round time of the second run against the first's, as the
prediction's error is taken (|second - first| / first). No prediction can be expected to come
closer to a run than another run of the same configuration does, so this is the floor under
the prediction's figures on this host.

The ranking check runs four configurations (bandwidth, strategy, selection policy) in the
simulator and emulated, ranks them by time to the target accuracy and gives Kendall's tau
between the two orders. The last line printed is one JSON object.

    python benchmarks/bench_fidelity.py [--quick] [--profile PATH] [--rounds N] [--again]
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

COMPONENTS = ("transfer", "compute", "aggregation", "waiting")
MODEL = "digits_cnn"
SEED = 0
# Networks the scenarios add; their latency is what netem (or, without it, the relay) adds.
NETWORKS = {
    "bench_uplink_20m": {
        "description": "shared 20 Mbit/s uplink",
        "bandwidth_mbps": 20.0,
        "latency_ms": 1.0,
    },
    "bench_uplink_rtt100": {
        "description": "1 Gbit/s uplink, 50 ms one way",
        "bandwidth_mbps": 1000.0,
        "latency_ms": 50.0,
    },
}


@dataclass(frozen=True)
class Scenario:
    """One emulated run: a topology (``keti`` or ``fleet16``), the share of a core of each
    trainer (by device id for keti; the generated fleet cycles through ``fleet_shares``) and
    further config overrides."""

    name: str
    topology: str
    what: str
    shares: dict[int, float] = field(default_factory=dict)
    fleet_shares: tuple[float, ...] = ()
    overrides: tuple[str, ...] = ()
    rank: bool = False  # one of the configurations of the ranking check
    quick: bool = False


KETI_TRAINERS = (3, 4, 8)
SCENARIOS = (
    Scenario(
        "keti-bandwidth",
        "keti",
        "trainers at 0.5 core share 20 Mbit/s group uplinks",
        shares=dict.fromkeys(KETI_TRAINERS, 0.5),
        overrides=(
            "topology.groups.1.uplink=bench_uplink_20m",
            "topology.groups.2.uplink=bench_uplink_20m",
        ),
        rank=True,
        quick=True,
    ),
    Scenario(
        "fleet16-bandwidth",
        "fleet16",
        "16 trainers at 0.06 core, 8 per 20 Mbit/s group uplink",
        fleet_shares=(0.06,),
        overrides=("topology.generate.uplink=bench_uplink_20m",),
    ),
    Scenario(
        "keti-latency",
        "keti",
        "100 ms round trip on the group uplinks, 0.5 core per trainer",
        shares=dict.fromkeys(KETI_TRAINERS, 0.5),
        overrides=(
            "topology.groups.1.uplink=bench_uplink_rtt100",
            "topology.groups.2.uplink=bench_uplink_rtt100",
        ),
    ),
    Scenario(
        "keti-compute",
        "keti",
        "quotas of 0.1, 0.25 and 0.5 core, 1 Gbit/s links",
        shares={3: 0.1, 4: 0.25, 8: 0.5},
        rank=True,
        quick=True,
    ),
    Scenario(
        "fleet16-compute",
        "fleet16",
        "16 trainers cycling through 0.04, 0.06 and 0.1 core",
        fleet_shares=(0.04, 0.06, 0.1),
    ),
    Scenario(
        "keti-deadline",
        "keti",
        "4 local epochs; device 3 at 0.01 core (7 s a round), the others at 0.5 (0.2 s, "
        "2-4 s the first round); a 6 s deadline cuts device 3 in every round",
        shares={3: 0.01, 4: 0.5, 8: 0.5},
        # At 0.01 core the straggler's heartbeats fall seconds behind its training; the
        # registry's patience keeps it online (the simulator has no heartbeats), so that the
        # deadline, not an absence, is what cuts it.
        overrides=("fl.deadline_s=6", "fl.local_epochs=4", "mode.patience_s=120"),
        quick=True,
    ),
    Scenario(
        "keti-dropouts",
        "keti",
        "0.5 core per trainer; each update lost with probability 0.3; 0.5 s deadline",
        shares=dict.fromkeys(KETI_TRAINERS, 0.5),
        overrides=("faults.dropout=0.3", "fl.deadline_s=0.5"),
    ),
    Scenario(
        "keti-fedprox",
        "keti",
        "FedProx (mu 0.1), quotas 0.25 core",
        shares=dict.fromkeys(KETI_TRAINERS, 0.25),
        overrides=("strategy=fedprox",),
        rank=True,
    ),
    Scenario(
        "keti-random2",
        "keti",
        "random selection of 2 of 3 trainers per round, quotas 0.5 core",
        shares=dict.fromkeys(KETI_TRAINERS, 0.5),
        overrides=("fl.selection=random", "fl.clients_per_round=2"),
        rank=True,
        quick=True,
    ),
)


# ---------------------------------------------------------------------------------------------
# Pure helpers (tests/benchmarks/test_bench_fidelity.py).


def kendall_tau(a: Sequence[float], b: Sequence[float]) -> float:
    """Kendall's tau-b between two scorings of the same items (ties allowed; inf is a value).

    tau-b = (concordant - discordant) / sqrt((n0 - ties_a) (n0 - ties_b)), n0 = n (n - 1) / 2
    (Kendall, 1945); 1 when both orders agree, -1 when one reverses the other.
    """
    if len(a) != len(b):
        raise ValueError(f"kendall_tau: {len(a)} scores against {len(b)}")
    if len(a) < 2:
        raise ValueError("kendall_tau: needs at least two items")
    concordant = discordant = ties_a = ties_b = 0
    for i in range(len(a)):
        for j in range(i + 1, len(a)):
            da, db = _sign(a[i], a[j]), _sign(b[i], b[j])
            ties_a += da == 0
            ties_b += db == 0
            if da and db:
                concordant += da == db
                discordant += da != db
    n0 = len(a) * (len(a) - 1) // 2
    denominator = math.sqrt((n0 - ties_a) * (n0 - ties_b))
    if denominator == 0:
        raise ValueError("kendall_tau: one of the scorings ties every item")
    return (concordant - discordant) / denominator


def _sign(x: float, y: float) -> int:
    return (x > y) - (x < y)


def scaled_profile(host: dict[str, Any], share: float) -> dict[str, Any]:
    """The measured profile ``host`` as a device with ``share`` of its core: step times and
    the other seconds of its processor (cold start, a request's cost, keeping an update, a
    round's overhead) divided by ``share``, throughputs multiplied by it; the seconds of
    waiting for the disk (``persist_io_s``) stay, since the quota holds the processor only."""
    if not 0 < share <= 1:
        raise ValueError(f"share: must be in (0, 1], got {share}")
    out = json.loads(json.dumps(host))
    for step in out.get("steps", {}).values():
        for key in ("overhead_s", "per_sample_s", "residual_s"):
            if key in step:
                step[key] = step[key] / share
    for key in ("serialize_bytes_per_s", "load_bytes_per_s", "aggregate_bytes_per_s"):
        if out.get(key) is not None:
            out[key] = out[key] * share
    for key in (
        "cold_start_s",
        "request_cpu_s",
        "segment_cpu_s",
        "persist_cpu_s",
        "round_overhead_s",
        "task_overhead_s",
    ):
        if out.get(key) is not None:
            out[key] = out[key] / share
    out["description"] = f"{out.get('description', 'this host')}, held to {share:g} core"
    out["source"] = f"{out.get('source', 'fedsim calibrate')}; times / {share:g} (benchmark)"
    return out


def host_gflops(host: dict[str, Any]) -> float:
    """The speed of a measured profile's core, GFLOP/s, as the simulator counts it for work
    without a step model: the fastest flops_per_sample / per_sample_s of its steps."""
    rates = [
        s["flops_per_sample"] / s["per_sample_s"]
        for s in host["steps"].values()
        if s.get("flops_per_sample") and s.get("per_sample_s", 0) > 0
    ]
    if not rates:
        raise ValueError("the host profile has no step with flops_per_sample and per_sample_s")
    return max(rates) / 1e9


def error_stats(errors: Sequence[float | None]) -> dict[str, float | None]:
    """Median and p90 (linear interpolation, as numpy's percentile) of the known errors."""
    known = sorted(e for e in errors if e is not None)
    if not known:
        return {"median": None, "p90": None}
    return {"median": statistics.median(known), "p90": _percentile(known, 90)}


def repeatability(first: Sequence[float], second: Sequence[float]) -> list[float | None]:
    """Each round time of a second run of the same configuration against the first's, as a
    prediction's error is taken: |second - first| / first (None where the first is 0)."""
    if len(first) != len(second):
        raise ValueError(f"the two runs have {len(first)} and {len(second)} rounds")
    return [abs(b - a) / a if a > 0 else None for a, b in zip(first, second, strict=True)]


def _percentile(ordered: Sequence[float], q: float) -> float:
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def scenario_figures(rows: Sequence[dict[str, str]]) -> dict[str, Any]:
    """Error statistics of one run's ``fidelity.csv`` rows: the round time and each component,
    over every round and over the rounds after the first (the agents' cold start)."""

    def column(name: str, rows: Sequence[dict[str, str]]) -> list[float | None]:
        return [None if r[name] in ("", "None") else float(r[name]) for r in rows]

    warm = [r for r in rows if int(r["round"]) > 0]
    out: dict[str, Any] = {
        "rounds": len(rows),
        "round": error_stats(column("abs_rel_error", rows)),
        "round_after_first": error_stats(column("abs_rel_error", warm)),
        "first_round": {
            "predicted_s": float(rows[0]["predicted_s"]) if rows else None,
            "measured_s": float(rows[0]["measured_s"]) if rows else None,
        },
    }
    for c in COMPONENTS:
        out[c] = error_stats(column(f"{c}_abs_rel_error", rows))
    return out


def again_figures(first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any]:
    """A scenario run twice: the second run's round times against the first's (``repeat``),
    and the prediction's errors against the second run (``prediction``)."""
    errors = repeatability(first["measured_s"], second["measured_s"])
    return {
        "repeat": error_stats(errors),
        "repeat_after_round_0": error_stats(errors[1:]),
        "prediction": second["round"],
        "repeat_errors": errors,
        "errors": second["errors"],
        "cpu_inflation": second["emulation"].get("cpu_inflation"),
        "host_load_1min": second["host_load_1min"],
    }


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def markdown_table(results: Sequence[dict[str, Any]]) -> str:
    """The README's table: one line per scenario, errors in per cent (median / p90)."""
    head = (
        "| scenario | rounds | round time | after round 0 | transfer | compute | aggregation "
        "| waiting | notes |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
    )
    twice = any("again" in r for r in results)
    if twice:  # the second run against the first, and the prediction against the second
        head = head.replace("| notes |", "| run 2 vs run 1 | prediction vs run 2 | notes |")
        head = head.replace("| ---: | --- |", "| ---: | ---: | ---: | --- |")
    lines = [head]
    for r in results:
        if r.get("skipped"):
            lines.append(
                f"| {r['scenario']} |{' - |' * (9 if twice else 7)} skipped: {r['skipped']} |"
            )
            continue
        cells = [
            f"{_pct(r[k]['median'])} / {_pct(r[k]['p90'])}"
            for k in ("round", "round_after_first", *COMPONENTS)
        ]
        if twice:
            again = r.get("again", {})
            for k in ("repeat", "prediction"):
                x = again.get(k)
                cells.append("-" if x is None else f"{_pct(x['median'])} / {_pct(x['p90'])}")
        lines.append(f"| {r['scenario']} | {r['rounds']} | {' | '.join(cells)} | {r['notes']} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Running the scenarios.


def calibrate(out: Path) -> Path:
    """This host's measured profile for the model, by ``fedsim calibrate`` (one thread, as an
    agent trains)."""
    path = out / "bench_host.yaml"
    cmd = [sys.executable, "-m", "fedsim", "calibrate", "--model", MODEL, "--threads", "1"]
    cmd += ["--repeats", "40", "--statistic", "median", "--name", "bench_host", "--out", str(path)]
    subprocess.run(cmd, check=True)
    return path


def config(scenario: Scenario, host: dict[str, Any], rounds: int, mode: str) -> Any:
    """The composed config of ``scenario`` with its profiles and networks added."""
    from omegaconf import OmegaConf, open_dict

    from fedsim.config import compose
    from fedsim.schema import HardwareConf, NetworkConf

    shares = sorted(set(scenario.shares.values()) | set(scenario.fleet_shares))
    names = {s: f"bench_q{round(s * 1000):04d}" for s in shares}
    overrides = [
        "+experiment=fl_digits",
        f"mode={mode}",
        f"fl.rounds={rounds}",
        f"seed={SEED}",
        f"mode.host_gflops={host_gflops(host)}",
    ]
    if scenario.topology == "fleet16":
        fleet = ",".join(names[s] for s in scenario.fleet_shares)
        overrides += [
            "topology=edge_fleet",
            "topology.generate.groups=2",
            "topology.generate.devices_per_group=8",
            f"topology.generate.hardware=[{fleet}]",
            "topology.generate.server_hardware=bench_host",
        ]
    else:
        overrides += ["topology.devices.0.hardware=bench_host"]
        keti_index = {3: 3, 4: 4, 8: 8}  # device id -> its place in keti_testbed's list
        overrides += [
            f"topology.devices.{keti_index[d]}.hardware={names[s]}"
            for d, s in scenario.shares.items()
        ]
    cfg = compose([*overrides, *scenario.overrides])
    hardware = OmegaConf.structured(HardwareConf)
    with open_dict(cfg):
        cfg.hardware["bench_host"] = OmegaConf.merge(hardware, host)
        for share, name in names.items():
            cfg.hardware[name] = OmegaConf.merge(hardware, scaled_profile(host, share))
        for name, net in NETWORKS.items():
            cfg.network[name] = OmegaConf.merge(OmegaConf.structured(NetworkConf), net)
    return cfg


def emulated(
    scenario: Scenario, host: dict[str, Any], rounds: int, out: Path, tag: str = ""
) -> dict[str, Any]:
    """Run ``scenario`` emulated (into ``out``/NAME``tag``); its figures from the run's summary
    and ``fidelity.csv``."""
    from fedsim.config import build_spec, conf_dir
    from fedsim.pipeline import run_and_write
    from fedsim.runtimes import runtime
    from fedsim.scenarios import Hooks

    spec = build_spec(config(scenario, host, rounds, "emulated"), conf_dir())
    run_dir = out / f"{scenario.name}{tag}"
    start = time.perf_counter()
    run_and_write(spec, runtime("emulated"), run_dir, Hooks(progress=False))
    wall = time.perf_counter() - start
    summary = json.loads((run_dir / "summary.json").read_text())
    with (run_dir / "fidelity.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    emulation = summary["emulation"]
    figures = scenario_figures(rows)
    notes = [scenario.what]
    if emulation["slowdown_factor"] > 1:
        notes.append(f"slow-down {emulation['slowdown_factor']:.2f}")
    mechanism = emulation.get("latency_mechanism", "none")
    if mechanism == "relay":
        relay_s = emulation.get("relay_cpu_s")
        used = "" if relay_s is None else f" ({relay_s:.2f} s of processor)"
        notes.append(f"no netem: latency by the relay{used}, loss not emulated")
    elif not emulation["latency_and_loss_emulated"]:
        notes.append("no netem, paths under the relay's 5 ms: latency not emulated nor predicted")
    inflation = emulation.get("cpu_inflation")
    if inflation:
        low, high = min(inflation.values()), max(inflation.values())
        notes.append(f"a held step costs {low:.2f}-{high:.2f}x its processor alone")
    first = figures["first_round"]
    measured, predicted = first["measured_s"], first["predicted_s"]
    notes.append(f"round 0 {measured:.2f} s measured, {predicted:.2f} s predicted")
    load = emulation.get("host_load_1min", {})
    if "start" in load and "end" in load:
        notes.append(f"host load {load['start']:.1f} -> {load['end']:.1f}")
    return {
        "scenario": scenario.name,
        **figures,
        "fidelity_summary": summary["fidelity"]["round"],
        "errors": [
            None if r["abs_rel_error"] in ("", "None") else float(r["abs_rel_error"]) for r in rows
        ],
        "measured_s": [float(r["measured_s"]) for r in rows],
        "time_to_target_s": summary.get("time_to_target_s"),
        "emulation": emulation,
        "slowdown_factor": emulation["slowdown_factor"],
        "latency_and_loss_emulated": emulation["latency_and_loss_emulated"],
        "latency_mechanism": mechanism,
        "relay_cpu_s": emulation.get("relay_cpu_s"),
        "host_load_1min": load,
        "cpu": emulation.get("cpu", {}),
        "wall_s": wall,
        "run_dir": str(run_dir),
        "notes": "; ".join(notes),
    }


def simulated_time_to_target(
    scenario: Scenario, host: dict[str, Any], rounds: int, emulation: dict[str, Any], out: Path
) -> float | None:
    """The simulator's time to the target accuracy for ``scenario``, predicted as its fidelity
    predicts the emulated run (``emulation``, the run's description): same spec and seed,
    links, quotas and their cost as emulated, slowed by its factor."""
    from fedsim.config import build_spec, conf_dir
    from fedsim.pipeline import prediction_spec, run
    from fedsim.runtimes import runtime
    from fedsim.scenarios import Hooks

    spec = build_spec(config(scenario, host, rounds, "emulated"), conf_dir())
    sim_spec = prediction_spec(spec, emulation)
    result = run(sim_spec, runtime("sim"), out / f"{scenario.name}-sim", Hooks(progress=False))
    t = result.summary.get("time_to_target_s")
    return None if t is None else float(t) * float(emulation["slowdown_factor"])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="four keti scenarios, 8 rounds")
    parser.add_argument(
        "--profile",
        type=Path,
        help="a measured profile of this host "
        "(default: fedsim calibrate now, into a temporary directory)",
    )
    parser.add_argument("--rounds", type=int, help="rounds per run (default 8 quick, 20 full)")
    parser.add_argument("--only", help="comma-separated scenario names")
    parser.add_argument("--keep", type=Path, help="keep the runs' directories here")
    parser.add_argument(
        "--again",
        action="store_true",
        help="emulate every scenario twice: the host's own repeatability (run against run)",
    )
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("bench_fidelity: emulated runs need root (namespaces, tc, cgroups); run as root")
        return 2
    from omegaconf import OmegaConf

    rounds = args.rounds or (8 if args.quick else 20)
    chosen = [s for s in SCENARIOS if s.quick or not args.quick]
    if args.only:
        wanted = set(args.only.split(","))
        chosen = [s for s in SCENARIOS if s.name in wanted]
    began, load_before = time.perf_counter(), os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-fidelity-") as tmp:
        out = args.keep or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        profile_path = args.profile or calibrate(out)
        host = OmegaConf.to_container(OmegaConf.load(profile_path), resolve=True)
        assert isinstance(host, dict)
        results: list[dict[str, Any]] = []
        ranking: list[dict[str, Any]] = []
        for s in chosen:
            try:
                r = emulated(s, host, rounds, out)
            except Exception as e:  # one failed scenario is reported, the others still run
                results.append({"scenario": s.name, "skipped": f"failed: {e}"})
                print(f"{s.name}: failed: {e!r}", flush=True)
                continue
            results.append(r)
            print(
                f"{s.name}: round time error median {_pct(r['round']['median'])} %, "
                f"p90 {_pct(r['round']['p90'])} % over {r['rounds']} rounds "
                f"({r['wall_s']:.0f} s)",
                flush=True,
            )
            if args.again:
                try:
                    second = emulated(s, host, rounds, out, "-again")
                except Exception as e:
                    r["again"] = {"skipped": f"failed: {e}"}
                    print(f"{s.name}, again: failed: {e!r}", flush=True)
                else:
                    r["again"] = again_figures(r, second)
                    print(
                        f"{s.name}, again: second run against the first median "
                        f"{_pct(r['again']['repeat']['median'])} %, p90 "
                        f"{_pct(r['again']['repeat']['p90'])} %; the prediction against it "
                        f"{_pct(second['round']['median'])} / {_pct(second['round']['p90'])} %",
                        flush=True,
                    )
            if s.rank:
                sim = simulated_time_to_target(s, host, rounds, r["emulation"], out)
                ranking.append(
                    {"config": s.name, "emulated_s": r["time_to_target_s"], "simulated_s": sim}
                )
    ran = [r for r in results if not r.get("skipped")]
    pooled = error_stats([e for r in ran for e in r["errors"]])
    pooled_warm = error_stats(
        [e for r in ran for e, i in zip(r["errors"], range(r["rounds"]), strict=True) if i > 0]
    )
    twice = [r for r in ran if "repeat" in r.get("again", {})]
    repeat_line: dict[str, Any] = {}
    if twice:
        repeat = [e for r in twice for e in r["again"]["repeat_errors"]]
        second = [e for r in twice for e in r["again"]["errors"]]
        warm = [e for r in twice for e in r["again"]["repeat_errors"][1:]]
        repeat_line = {
            "repeatability": {**error_stats(repeat), "after_round_0": error_stats(warm)},
            "prediction_vs_second_run": error_stats(second),
        }
    tau = None
    if len(ranking) >= 2:
        never = math.inf  # a configuration that never reached the target ranks last
        tau = kendall_tau(
            [never if x["emulated_s"] is None else x["emulated_s"] for x in ranking],
            [never if x["simulated_s"] is None else x["simulated_s"] for x in ranking],
        )
    print()
    print(markdown_table(results))
    print()
    for x in ranking:
        print(f"rank {x['config']}: time to target {x['emulated_s']} s emulated, ", end="")
        print(f"{x['simulated_s']} s simulated")
    line = {
        "benchmark": "fidelity",
        "quick": args.quick,
        "rounds": rounds,
        "profile": str(args.profile) if args.profile else "fedsim calibrate (this run)",
        "median_abs_rel_error": pooled["median"],
        "p90_abs_rel_error": pooled["p90"],
        "median_abs_rel_error_after_round_0": pooled_warm["median"],
        "p90_abs_rel_error_after_round_0": pooled_warm["p90"],
        "kendall_tau": tau,
        **repeat_line,
        "ranking": ranking,
        "scenarios": {
            r["scenario"]: (
                {"skipped": r["skipped"]}
                if r.get("skipped")
                else {
                    "rounds": r["rounds"],
                    "median_abs_rel_error": r["round"]["median"],
                    "p90_abs_rel_error": r["round"]["p90"],
                    "after_round_0": r["round_after_first"],
                    **{c: r[c] for c in COMPONENTS},
                    "slowdown_factor": r["slowdown_factor"],
                    "latency_mechanism": r["latency_mechanism"],
                    "relay_cpu_s": r["relay_cpu_s"],
                    "host_load_1min": r["host_load_1min"],
                    "cpu": r["cpu"],
                    "cpu_inflation": r["emulation"].get("cpu_inflation"),
                    "wall_s": round(r["wall_s"], 1),
                    **(
                        {"again": {k: v for k, v in r["again"].items() if k != "repeat_errors"}}
                        if "again" in r
                        else {}
                    ),
                }
            )
            for r in results
        },
        "wall_s": round(time.perf_counter() - began, 1),
        "host_load_1min": {"start": load_before, "end": os.getloadavg()[0]},
    }
    print(json.dumps(line))
    return 0


if __name__ == "__main__":
    sys.exit(main())
