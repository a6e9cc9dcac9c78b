"""Benchmark: one round of N heterogeneous devices through the pipeline, as the main job runs it.

The spec is built as ``python -m fedsim`` builds it (``compose`` + ``build_spec``): the
``fl_scale`` experiment (modelled FedAvg, the digits CNN's size and FLOPs) over the generated
``edge_fleet`` topology resized to N trainers in 10 groups, every trainer with its own compute
speed, link bandwidth and latency (log-normal spreads), one round in which every device trains.
The round runs through ``fedsim.pipeline.run`` on the sim runtime, and the run directory is
written by the one writer (``write_run``), events table included.

Each N runs in a process of its own, so that each peak resident set size (``ru_maxrss``) is
its own. The baseline, in the same run, is the smallest N: the cost exponent is the slope of
log(wall) on log(N) from it to the largest, and a process that imports and composes the same
config but runs no round gives the interpreter's own RSS, which the per-device bytes leave out.
Each N also reports its CPU time (``cpu_s``, the process's own), which other jobs on a shared
machine disturb less than its wall time. The figures say whether the flow network ran compiled
(mypyc, ``setup.py``) or from its Python source; ``FEDSIM_PURE_PYTHON=1`` asks for the latter.

With ``--independent`` each N runs a second time with ``mode.network=independent`` (each
transfer alone at its path's narrowest link, one SimPy event a transfer): what the rest of the
pipeline costs a device without the max-min network's work, and ``network_share``, the share
of the wall time that work takes.

    python benchmarks/bench_scale.py [--devices 10000 100000 1000000] [--quick] [--independent]

The last line is one JSON object: the largest N's ``devices``, ``wall_s``, ``peak_rss_mb``,
and every N's figures under ``sizes``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

GROUPS = 10
# Coefficients of variation of each trainer's own figures around its profile.
SPREADS = {"speed": 0.5, "bandwidth": 0.8, "latency": 0.5}
QUICK = [1_000, 4_000]
DEFAULT = [10_000, 100_000, 1_000_000]


def overrides(devices: int, network: str = "shared") -> list[str]:
    """The command-line overrides of the main job that make one round of ``devices`` trainers,
    their transfers under the ``network`` model (``mode.network``)."""
    if devices % GROUPS:
        raise SystemExit(f"--devices: {devices} is not a multiple of the {GROUPS} groups")
    return [
        "+experiment=fl_scale",
        f"topology.generate.groups={GROUPS}",
        f"topology.generate.devices_per_group={devices // GROUPS}",
        *(f"topology.fleet.spread.{k}={v}" for k, v in SPREADS.items()),
        "fl.training=modelled",
        "fl.rounds=1",
        "fl.fraction_per_round=1.0",
        f"fl.max_events={4 * devices}",  # every event to events.csv, as it happens
        f"mode.network={network}",
    ]


def peak_rss_mb() -> float:
    """This process's peak resident set size so far, in MB (Linux reports kB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def one(devices: int, network: str = "shared") -> dict[str, Any]:
    """Build, run and write one round of ``devices`` trainers in this process; its figures."""
    from fedsim.config import build_spec, compose
    from fedsim.pipeline import run
    from fedsim.report.write import write_run
    from fedsim.runtimes import runtime
    from fedsim.scenarios import Hooks
    from fedsim.sim import compiled

    cfg = compose(overrides(devices, network))
    rt = runtime("sim")
    if devices == 0:  # the interpreter with everything imported and a config composed
        return {"devices": 0, "peak_rss_mb": peak_rss_mb(), "compiled": compiled()}
    with tempfile.TemporaryDirectory(prefix="fedsim-bench-scale-") as tmp:
        t0, cpu0 = time.perf_counter(), time.process_time()
        spec = build_spec(cfg)
        t1 = time.perf_counter()
        rss_build = peak_rss_mb()
        result = run(spec, rt, Path(tmp), Hooks(progress=False))
        t2 = time.perf_counter()
        rss_run = peak_rss_mb()
        write_run(Path(tmp), result)
        t3, cpu3 = time.perf_counter(), time.process_time()
        events_mb = (Path(tmp) / "events.csv").stat().st_size / 1e6
    row = result.rows[0]
    return {
        "devices": devices,
        "wall_s": t3 - t0,
        "cpu_s": cpu3 - cpu0,
        "build_s": t1 - t0,
        "run_s": t2 - t1,
        "write_s": t3 - t2,
        "peak_rss_mb": peak_rss_mb(),
        "peak_rss_build_mb": rss_build,
        "peak_rss_run_mb": rss_run,
        "completed": row.completed,
        "simulated_round_s": row.total_s,
        "events": result.summary["events_recorded"],
        "events_csv_mb": events_mb,
        "compiled": compiled(),
    }


def child(devices: int, network: str = "shared") -> dict[str, Any]:
    """:func:`one` in a fresh interpreter, so that its peak RSS is its own."""
    done = subprocess.run(
        [sys.executable, __file__, "--one", str(devices), "--network", network],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PYTHONHASHSEED": "0"},
    )
    if done.returncode:
        raise SystemExit(f"{devices} devices failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def sized(devices: int, network: str, base_mb: float) -> dict[str, Any]:
    """:func:`child`'s figures with the per-device ones: bytes above the interpreter's
    ``base_mb`` and microseconds."""
    r = child(devices, network)
    r["bytes_per_device"] = (r["peak_rss_mb"] - base_mb) * 2**20 / devices
    r["us_per_device"] = r["wall_s"] / devices * 1e6
    return r


def line(r: dict[str, Any]) -> str:
    """A size's figures as the table's columns after ``devices``."""
    return (
        f"{r['wall_s']:>9.2f} {r['cpu_s']:>8.2f} {r['build_s']:>7.2f} {r['run_s']:>7.2f} "
        f"{r['write_s']:>7.2f} {r['peak_rss_mb']:>9.1f} {r['bytes_per_device']:>9.0f} "
        f"{r['us_per_device']:>10.1f} {r['simulated_round_s']:>10.2f}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, nargs="+", help=f"default: {DEFAULT}")
    ap.add_argument("--quick", action="store_true", help=f"small sizes, {QUICK}")
    ap.add_argument(
        "--independent",
        action="store_true",
        help="also run each round with mode.network=independent (no link shared): what the "
        "run costs without the max-min network's work",
    )
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--network", default="shared", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one is not None:
        print(json.dumps(one(args.one, args.network)))
        return
    sizes = sorted(set(args.devices or (QUICK if args.quick else DEFAULT)))
    if sizes[0] < GROUPS:
        raise SystemExit(f"--devices: at least {GROUPS} (one trainer a group)")
    base = child(0)
    base_mb = base["peak_rss_mb"]
    print(
        f"interpreter and imports: {base_mb:.1f} MB peak RSS; flow network: "
        + ("compiled (mypyc)" if base["compiled"] else "Python source")
    )
    print(
        f"{'devices':>10} {'wall [s]':>9} {'cpu [s]':>8} {'build':>7} {'run':>7} {'write':>7} "
        f"{'RSS [MB]':>9} {'B/device':>9} {'us/device':>10} {'round [s]':>10}"
    )
    rows = []
    for n in sizes:
        r = sized(n, "shared", base_mb)
        rows.append(r)
        print(f"{n:>10,} {line(r)}", flush=True)
        if args.independent:
            alone = r["independent"] = sized(n, "independent", base_mb)
            # The share of the wall time that sharing links max-min fairly costs.
            r["network_share"] = 1 - alone["wall_s"] / r["wall_s"]
            print(
                f"{'':>10} {line(alone)}"
                f"  independent links: {r['network_share']:.0%} of the wall time is sharing",
                flush=True,
            )
    first, last = rows[0], rows[-1]
    exponent = None
    if last["devices"] > first["devices"]:
        exponent = math.log(last["wall_s"] / first["wall_s"]) / math.log(
            last["devices"] / first["devices"]
        )
        print(f"cost exponent {first['devices']:,} -> {last['devices']:,}: {exponent:.3f}")
    print(
        json.dumps(
            {
                "devices": last["devices"],
                "wall_s": round(last["wall_s"], 3),
                "peak_rss_mb": round(last["peak_rss_mb"], 1),
                "interpreter_rss_mb": round(base_mb, 1),
                "bytes_per_device": round(last["bytes_per_device"], 1),
                "exponent": None if exponent is None else round(exponent, 3),
                "quick": args.quick,
                "compiled": base["compiled"],
                "sizes": rows,
            }
        )
    )


if __name__ == "__main__":
    main()
