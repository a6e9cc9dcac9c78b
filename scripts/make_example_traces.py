"""Write the small example fleet files of ``conf/traces/`` (formats: docs/fleets.md).

    python scripts/make_example_traces.py [--out conf/traces] [--clients 50] [--seed 0]

writes three files, all synthetic (drawn here, not measured anywhere), shaped as the real
ones are:

- ``example_device_trace.json``: a device trace as FedScale's ``client_device_capacity``
  holds it, client id -> ``{"computation": ms per sample, "communication": kbit/s}``;
- ``example_availability.json``: an availability trace as FedScale's ``client_behave_trace``
  holds it, client id -> ``{"duration": s, "active": [s], "inactive": [s]}``, one day long;
- ``example_device_table.csv``: an empirical table of devices (hardware profile, link speed,
  latency) to draw a fleet from.

The same seed writes the same bytes; ``conf/topology/trace_fleet.yaml`` replays the files.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

DAY_S = 86_400.0
OUT = Path(__file__).resolve().parents[1] / "conf" / "traces"


def lognormal(rng: np.random.Generator, median: float, cv: float, n: int) -> np.ndarray:
    """``n`` log-normal values of the given median and coefficient of variation."""
    sigma = math.sqrt(math.log1p(cv * cv))
    return median * np.exp(rng.normal(0.0, sigma, size=n))


def device_trace(rng: np.random.Generator, clients: int) -> dict[str, dict[str, float]]:
    """Phones to boards: compute around 100 ms per sample, links around 5 Mbit/s, both
    spread over an order of magnitude."""
    computation = lognormal(rng, 100.0, 0.8, clients)
    communication = lognormal(rng, 5_000.0, 1.0, clients)
    return {
        str(c + 1): {
            "computation": round(float(computation[c]), 1),
            "communication": round(float(communication[c]), 1),
        }
        for c in range(clients)
    }


def availability(rng: np.random.Generator, clients: int) -> dict[str, dict[str, object]]:
    """A day per client: online sessions of about 40 minutes, apart by about 80 (a third of
    the clients online at any time, from the start on), each boundary a whole second."""
    out: dict[str, dict[str, object]] = {}
    for c in range(clients):
        active, inactive = [], []
        online_at_start = rng.random() < 1 / 3
        t = 0.0 if online_at_start else float(rng.exponential(4_800.0))
        while True:
            on = round(t)
            off = round(t + rng.exponential(2_400.0)) + 1
            if off >= DAY_S:
                break
            active.append(on)
            inactive.append(off)
            t = off + 1 + rng.exponential(4_800.0)
        out[str(c + 1)] = {"duration": DAY_S, "active": active, "inactive": inactive}
    return out


def device_table(rng: np.random.Generator, rows: int) -> str:
    """Devices of three kinds with the link speeds and latencies they were seen with."""
    kinds = ["client_i7_gtx1080", "client_i7_cpu", "rpi4"]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["client_id", "hardware", "communication", "latency_ms"])
    kbps = lognormal(rng, 20_000.0, 1.0, rows)
    latency = lognormal(rng, 20.0, 0.5, rows)
    for r in range(rows):
        kind = kinds[int(rng.integers(len(kinds)))]
        writer.writerow([r + 1, kind, round(float(kbps[r]), 1), round(float(latency[r]), 2)])
    return buffer.getvalue()


def one_per_line(document: dict[str, dict[str, object]]) -> str:
    """A JSON object with one client a line: short to read, easy to diff."""
    lines = [f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in document.items()]
    return "{\n" + ",\n".join(lines) + "\n}\n"


def write(out: Path, *, clients: int, seed: int) -> list[Path]:
    """Write the three example files under ``out``; the paths written."""
    trace_rng, behave_rng, table_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3)
    )
    out.mkdir(parents=True, exist_ok=True)
    files = {
        "example_device_trace.json": one_per_line(device_trace(trace_rng, clients)),
        "example_availability.json": one_per_line(availability(behave_rng, clients)),
        "example_device_table.csv": device_table(table_rng, clients),
    }
    written = []
    for name, text in files.items():
        path = out / name
        path.write_text(text if text.endswith("\n") else text + "\n")
        written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=OUT, help="directory (default: conf/traces)")
    p.add_argument("--clients", type=int, default=50, help="clients per file (default: 50)")
    p.add_argument("--seed", type=int, default=0, help="seed of the draws (default: 0)")
    args = p.parse_args(argv)
    if args.clients < 1:
        p.error(f"--clients must be >= 1, got {args.clients}")
    if args.seed < 0:
        p.error(f"--seed must be >= 0, got {args.seed}")
    for path in write(args.out, clients=args.clients, seed=args.seed):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
