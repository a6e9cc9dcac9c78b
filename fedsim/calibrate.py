"""``fedsim calibrate``: measure this host and write it down as a measured hardware profile.

What it measures, for one model of the zoo:

- training time per step, timed with PyTorch at three or more batch sizes (warm-up steps, then
  repeats, the median per size, or with ``--statistic min`` the fastest) and fitted as
  per-batch overhead + per-sample cost (``fedsim.core.calibration``), with the fit's residual;
- safetensors serialization and load throughput of the model's state (``fedsim.store``'s
  ``encode`` and ``decode``, as the server and the agents ship models);
- the server's aggregation throughput: FedAvg over copies of the state, counted as the memory
  traffic ``aggregation_cost`` charges (n updates read, one model written) per second.

The profile (``kind: measured``) loads through the config as it is; a topology uses it by naming
it as a device's ``hardware``. Exit codes: 0 when written, 2 for a bad argument or a file that
cannot be written, in one line on stderr.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import socket
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

from fedsim.cli_args import OneLineParser
from fedsim.config import ConfigError, conf_dir, load_hardware_profile
from fedsim.core.calibration import MIN_BATCH_SIZES, StepFit, fit_step_model
from fedsim.core.runtime import Update
from fedsim.core.strategies.fedavg import FedAvg
from fedsim.core.topology import HardwareProfile
from fedsim.ml.spec import MODELS, model_spec
from fedsim.store.safetensors_io import decode, encode

PROG = "fedsim calibrate"
DEFAULT_MODEL = "digits_cnn"
DEFAULT_BATCH_SIZES = (8, 16, 32, 64)
AGGREGATE_UPDATES = 8  # a round's worth of updates for the aggregation timing
GB = 1e9
# A relative residual above this says the timings were disturbed (a step model fits a quiet
# host's medians within a few per cent).
NOISY_FIT = 0.1


@dataclass(frozen=True, kw_only=True)
class Calibration:
    """What ``calibrate`` measured on this host, in base units (seconds, bytes, bytes/s)."""

    model: str
    input_size: int
    threads: int
    fit: StepFit
    flops_per_sample: int
    state_bytes: int
    serialize_bytes_per_s: float
    load_bytes_per_s: float
    aggregate_bytes_per_s: float
    memory_bytes: float
    source: str


def calibrate(
    model: str,
    batch_sizes: Sequence[int],
    *,
    repeats: int,
    warmup: int,
    threads: int | None,
    statistic: str = "median",
    io_repeats: int = 50,
) -> Calibration:
    """Measure this host for ``model`` (see the module docstring)."""
    import torch

    from fedsim.ml.calibrate import (
        default_shape,
        model_state,
        time_training_steps,
        torch_threads,
    )

    input_size, num_classes = default_shape(model)
    timings = time_training_steps(
        model,
        batch_sizes,
        repeats=repeats,
        warmup=warmup,
        input_size=input_size,
        num_classes=num_classes,
        threads=threads,
    )
    fit = fit_step_model(*timings.per_size(statistic))
    state = model_state(model, num_classes)
    with torch_threads(threads):
        blob = encode(state)
        serialize = len(blob) / _median_seconds(lambda: encode(state), io_repeats)
        load = len(blob) / _median_seconds(lambda: decode(blob), io_repeats)
        updates = [
            Update(
                num_examples=1, nbytes=len(blob), parameters={k: v.copy() for k, v in state.items()}
            )
            for _ in range(AGGREGATE_UPDATES)
        ]
        fedavg = FedAvg()
        state_bytes = sum(a.nbytes for a in state.values())
        aggregate = (
            (AGGREGATE_UPDATES + 1)
            * state_bytes
            / _median_seconds(lambda: fedavg.aggregate_fit(state, updates), io_repeats)
        )
    today = datetime.date.today().isoformat()
    return Calibration(
        model=model,
        input_size=input_size,
        threads=timings.threads,
        fit=fit,
        flops_per_sample=model_spec(
            model, input_size=input_size, num_classes=num_classes
        ).train_flops,
        state_bytes=len(blob),
        serialize_bytes_per_s=serialize,
        load_bytes_per_s=load,
        aggregate_bytes_per_s=aggregate,
        memory_bytes=float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")),
        source=(
            f"fedsim calibrate on {socket.gethostname()}, {today}, torch {torch.__version__}, "
            f"{_threads(timings.threads)}"
        ),
    )


def _median_seconds(fn: Callable[[], object], repeats: int) -> float:
    """The median wall time of ``fn`` over ``repeats`` calls, after one untimed call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def profile_document(cal: Calibration) -> dict[str, object]:
    """The hardware profile's fields (``fedsim.schema.HardwareConf``) for ``cal``."""
    step = cal.fit.model
    return {
        "kind": "measured",
        "source": cal.source,
        "description": f"{socket.gethostname()}: {_cpu_model()}, {_threads(cal.threads)}",
        "cpu_model": _cpu_model(),
        "cpu_cores": cal.threads,
        "train_on": "cpu",
        "memory_gb": round(cal.memory_bytes / GB, 3),
        "steps": {
            cal.model: {
                "overhead_s": float(f"{step.overhead_s:.4g}"),
                "per_sample_s": float(f"{step.per_sample_s:.4g}"),
                "residual_s": float(f"{cal.fit.residual_s:.3g}"),
                "flops_per_sample": cal.flops_per_sample,
                "batch_sizes": list(cal.fit.batch_sizes),
            }
        },
        "serialize_bytes_per_s": float(f"{cal.serialize_bytes_per_s:.4g}"),
        "load_bytes_per_s": float(f"{cal.load_bytes_per_s:.4g}"),
        "aggregate_bytes_per_s": float(f"{cal.aggregate_bytes_per_s:.4g}"),
    }


def render(cal: Calibration, command: str) -> str:
    """The profile as YAML, headed by how it was made."""
    header = (
        f"# Measured by `{command}`.\n"
        f"# Step model: one training step of n samples of {cal.model} ({cal.input_size}x"
        f"{cal.input_size}) takes overhead_s + per_sample_s x n seconds.\n"
        "# Work without a step model runs at flops_per_sample / per_sample_s FLOP/s;\n"
        "# memory traffic at aggregate_bytes_per_s.\n"
    )
    return header + OmegaConf.to_yaml(OmegaConf.create(profile_document(cal)))


def summary(cal: Calibration, profile: HardwareProfile, out: str) -> str:
    """A few lines on what was measured, for the terminal."""
    step, fit = cal.fit.model, cal.fit
    sizes = ", ".join(str(b) for b in fit.batch_sizes)
    return "\n".join(
        [
            f"{cal.model} on {_threads(cal.threads)}, batch sizes {sizes}:",
            f"  step = {step.overhead_s * 1e3:.3f} ms + {step.per_sample_s * 1e6:.2f} us x n "
            f"(residual {fit.residual_s * 1e6:.1f} us RMS, {fit.relative_residual:.1%})",
            f"  effective training rate {profile.effective_flops / 1e9:.2f} GFLOP/s "
            "at large batches",
            f"  safetensors ({cal.state_bytes / 1e3:.0f} kB): "
            f"serialize {cal.serialize_bytes_per_s / 1e6:.0f} MB/s, "
            f"load {cal.load_bytes_per_s / 1e6:.0f} MB/s",
            f"  aggregation (FedAvg of {AGGREGATE_UPDATES}): "
            f"{cal.aggregate_bytes_per_s / 1e6:.0f} MB/s of memory traffic",
            f"profile: {out}",
        ]
        + (
            [
                f"warning: the fit misses the step times by {fit.relative_residual:.0%} RMS; "
                "other processes on this host? rerun when it is quiet, with more --repeats"
            ]
            if fit.relative_residual > NOISY_FIT
            else []
        )
    )


def _threads(n: int) -> str:
    return f"{n} thread{'s' if n > 1 else ''}"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _batch_sizes(text: str) -> list[int]:
    try:
        sizes = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a comma-separated list of integers: {text!r}"
        ) from None
    if any(b < 1 for b in sizes) or len(set(sizes)) < MIN_BATCH_SIZES:
        raise argparse.ArgumentTypeError(
            f"need >= {MIN_BATCH_SIZES} distinct batch sizes >= 1, got {text!r}"
        )
    return sorted(set(sizes))


def _name(text: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_-]*", text):
        raise argparse.ArgumentTypeError(
            f"{text!r}: use letters, digits, '_' and '-' (it names a file and a config key)"
        )
    return text


def _positive_int(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return parse


def default_name() -> str:
    """``measured_HOST``, with what a config key cannot hold replaced by '_'."""
    return "measured_" + re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname())


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog=PROG,
        description=(
            "Time a model's training steps on this host with PyTorch, fit per-batch overhead + "
            "per-sample cost, measure safetensors serialization and load and FedAvg "
            "aggregation throughput, and write a measured hardware profile that a topology "
            "names as a device's hardware."
        ),
    )
    p.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        choices=sorted(MODELS),
        help="the model of the zoo to time (default: %(default)s)",
    )
    p.add_argument(
        "--batch-sizes",
        type=_batch_sizes,
        default=list(DEFAULT_BATCH_SIZES),
        metavar="N,N,N",
        help=f"at least {MIN_BATCH_SIZES} distinct batch sizes (default: 8,16,32,64)",
    )
    p.add_argument(
        "--repeats",
        type=_positive_int(1),
        default=30,
        help="timed steps per batch size; the median counts (default: %(default)s)",
    )
    p.add_argument(
        "--warmup",
        type=_positive_int(0),
        default=5,
        help="untimed steps per batch size first (default: %(default)s)",
    )
    p.add_argument(
        "--statistic",
        choices=("median", "min"),
        default="median",
        help=(
            "what of each size's steps the fit takes: the median, or the fastest step, which "
            "resists other processes taking the core (default: %(default)s)"
        ),
    )
    p.add_argument(
        "--threads",
        type=_positive_int(1),
        default=None,
        help="torch intra-op threads to train with (default: torch's choice for this host)",
    )
    p.add_argument(
        "--name",
        type=_name,
        default=None,
        help="the profile's name, for the default --out (default: measured_HOST)",
    )
    p.add_argument(
        "--out",
        default=None,
        metavar="PATH",
        help="where to write the profile; - for standard output (default: conf/hardware/NAME.yaml)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Measure, write the profile ``argv`` asks for and summarise; the process's exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    out = args.out or str(conf_dir() / "hardware" / f"{args.name or default_name()}.yaml")
    if out != "-":
        # A profile is named after its file: that is how a topology finds it.
        stem, suffix = Path(out).stem, Path(out).suffix
        if suffix != ".yaml":
            parser.error(f"--out {out}: a profile is a .yaml file")
        if args.name and stem != args.name:
            parser.error(f"--out {out}: a profile is named after its file; use {args.name}.yaml")
        try:
            _name(stem)
        except argparse.ArgumentTypeError as e:
            parser.error(f"--out {out}: {e}")
    command = " ".join([PROG, *(argv if argv is not None else sys.argv[2:])])
    cal = calibrate(
        args.model,
        args.batch_sizes,
        repeats=args.repeats,
        warmup=args.warmup,
        threads=args.threads,
        statistic=args.statistic,
    )
    if cal.fit.model.per_sample_s == 0:
        parser.error(
            "step times did not grow with the batch size (a busy host?); "
            "rerun with more --repeats or larger --batch-sizes"
        )
    text = render(cal, command)
    if out == "-":
        sys.stdout.write(text)
        return 0
    path = Path(out)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    except OSError as e:
        parser.error(f"--out {out}: {e.strerror or e}")
    try:
        profile = load_hardware_profile(path)
    except ConfigError as e:  # a measurement the config refuses
        parser.error(f"the measured profile does not load: {e}")
    print(summary(cal, profile, out))
    return 0
