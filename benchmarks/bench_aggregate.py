"""Benchmark: FedAvg and update validation against copying the same bytes, at YOLOv4's size.

``--updates`` client updates with YOLOv4's layout (the 541 floating-point arrays of its
``state_dict``, 64,429,405 float32 values: 258 MB each) are aggregated with ``FedAvg`` and
checked with ``validate_update`` as the round coordinator checks them. The baseline, in the
same run, is ``np.copyto`` of every update into one preallocated model: it reads and writes
each byte once, with no arithmetic. Speeds are bytes of updates per second, the best of
``--repeats`` runs taken in turns. The peak extra memory of one more run is measured with
``tracemalloc`` (numpy reports its allocations to it) and given as a multiple of one model's
bytes. The last line is one JSON object with every figure.

    python benchmarks/bench_aggregate.py [--updates 8] [--repeats 5] [--quick]

``--quick`` shrinks every array 64-fold (about 1 M values a model) for a test of the script.
"""

from __future__ import annotations

import argparse
import json
import math
import time
import tracemalloc
from collections.abc import Callable

import numpy as np

from fedsim.core.runtime import NDArrays, Update
from fedsim.core.strategies.fedavg import FedAvg
from fedsim.core.strategies.validation import validate_update

QUICK_SHRINK = 64


def yolov4_layout() -> dict[str, tuple[int, ...]]:
    """The names and shapes of YOLOv4's shipped state, built on the meta device (no memory)."""
    import torch

    from fedsim.ml.yolov4 import YOLOv4

    with torch.device("meta"):
        model = YOLOv4()
    return {k: tuple(v.shape) for k, v in model.state_dict().items() if v.is_floating_point()}


def make_updates(layout: dict[str, int], n: int, seed: int) -> tuple[NDArrays, list[NDArrays]]:
    """A reference model and ``n`` updates near it (float32, flat arrays of the layout's sizes)."""
    rng = np.random.default_rng(seed)
    reference = {k: rng.standard_normal(size, dtype=np.float32) for k, size in layout.items()}
    updates = []
    for i in range(n):
        # A scaled copy is as good as fresh noise for timing, and much cheaper to make.
        factor = np.float32(1.0 + 0.01 * (i + 1))
        updates.append({k: v * factor for k, v in reference.items()})
    return reference, updates


def best_seconds(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """The fastest of ``repeats`` runs of each function, the functions taking turns so that a
    burst of load from elsewhere on the machine falls on all of them alike."""
    best = dict.fromkeys(fns, math.inf)
    for _ in range(repeats):
        for name, fn in fns.items():
            started = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - started)
    return best


def peak_extra_bytes(fn: Callable[[], object]) -> int:
    """The most memory ``fn`` held at once beyond what existed before, its result included."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        result = fn()
        peak = tracemalloc.get_traced_memory()[1]
        del result
    finally:
        tracemalloc.stop()
    return peak - before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--quick", action="store_true", help=f"arrays {QUICK_SHRINK}x smaller (a test)"
    )
    args = parser.parse_args()
    if args.updates < 1 or args.repeats < 1:
        parser.error("--updates and --repeats must be >= 1")

    shrink = QUICK_SHRINK if args.quick else 1
    layout = {k: max(1, math.prod(s) // shrink) for k, s in yolov4_layout().items()}
    reference, arrays = make_updates(layout, args.updates, args.seed)
    # Different example counts, so the weights are not all equal.
    updates = [
        Update(num_examples=100 + 10 * i, nbytes=0, parameters=a) for i, a in enumerate(arrays)
    ]
    values = sum(layout.values())
    model_bytes = 4 * values
    total_bytes = args.updates * model_bytes

    target = {k: np.empty_like(v) for k, v in reference.items()}

    def copy_all() -> None:
        for a in arrays:
            for k, v in a.items():
                np.copyto(target[k], v)

    fedavg = FedAvg()

    def aggregate() -> NDArrays | None:
        return fedavg.aggregate_fit(reference, updates)

    def validate() -> list[str | None]:
        return [validate_update(reference, a) for a in arrays]

    if any(reason is not None for reason in validate()):
        raise SystemExit(f"an update failed validation: {validate()}")
    copy_all()  # touch the target's pages before timing
    seconds = best_seconds(
        {"copy": copy_all, "aggregate": aggregate, "validate": validate}, args.repeats
    )
    copy_s, aggregate_s, validate_s = seconds["copy"], seconds["aggregate"], seconds["validate"]
    aggregate_extra = peak_extra_bytes(aggregate) / model_bytes
    validate_extra = peak_extra_bytes(validate) / model_bytes

    gb = 1e9
    copy_gbps = total_bytes / copy_s / gb
    aggregate_gbps = total_bytes / aggregate_s / gb
    validate_gbps = total_bytes / validate_s / gb
    print(
        f"{args.updates} updates of {values:,} float32 values ({model_bytes / 1e6:.1f} MB each, "
        f"{len(layout)} arrays): {total_bytes / gb:.2f} GB"
    )
    print(f"np.copyto  {copy_s:8.3f} s  {copy_gbps:6.2f} GB/s")
    print(
        f"FedAvg     {aggregate_s:8.3f} s  {aggregate_gbps:6.2f} GB/s  "
        f"{aggregate_gbps / copy_gbps:.2f}x copy  peak extra {aggregate_extra:.2f}x one model"
    )
    print(
        f"validation {validate_s:8.3f} s  {validate_gbps:6.2f} GB/s  "
        f"{validate_gbps / copy_gbps:.2f}x copy  peak extra {validate_extra:.2f}x one model"
    )
    print(
        json.dumps(
            {
                "updates": args.updates,
                "values_per_update": values,
                "arrays": len(layout),
                "quick": args.quick,
                "copy_s": round(copy_s, 4),
                "copy_gbps": round(copy_gbps, 3),
                "fedavg_s": round(aggregate_s, 4),
                "fedavg_gbps": round(aggregate_gbps, 3),
                "fedavg_ratio": round(aggregate_gbps / copy_gbps, 3),
                "fedavg_peak_extra_models": round(aggregate_extra, 3),
                "validate_s": round(validate_s, 4),
                "validate_gbps": round(validate_gbps, 3),
                "validate_ratio": round(validate_gbps / copy_gbps, 3),
                "validate_peak_extra_models": round(validate_extra, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
