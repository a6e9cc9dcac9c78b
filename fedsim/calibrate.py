"""``fedsim calibrate``: measure this host and write it down as a measured hardware profile.

What it measures for one model, of the zoo or the user's own named by import path (training
steps fitted as per-batch overhead + per-sample cost with the fit's residual, the server's
evaluation of the model fitted the same way, safetensors serialization and load throughput,
FedAvg aggregation throughput, cold start, the server's round overhead) is
``fedsim.ml.calibrate``'s, the processor cost of one HTTP request ``fedsim.real.request_cost``'s,
and the cost of keeping an update on disk as the agent does
(``fedsim.real.agent.state.measure_persist``, in the system's temporary directory); the agent
reports the same to its server. A user's model is timed at the ``--input-size`` and
``--num-classes`` its workload trains at, and its step model is keyed by its import path,
which is the name a workload gives it.

The profile (``kind: measured``) loads through the config as it is; a topology uses it by naming
it as a device's ``hardware``. Exit codes: 0 when written, 2 for a bad argument or a file that
cannot be written, in one line on stderr.
"""

from __future__ import annotations

import argparse
import re
import socket
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import OmegaConf

from fedsim.cli_args import OneLineParser
from fedsim.config import ConfigError, conf_dir, load_hardware_profile
from fedsim.core.calibration import MIN_BATCH_SIZES, StepFit
from fedsim.core.plugins import PluginError, factory, is_import_path
from fedsim.core.topology import HardwareProfile
from fedsim.ml.spec import MODELS, calibration_shape

if TYPE_CHECKING:
    from fedsim.ml.calibrate import Calibration

PROG = "fedsim calibrate"
DEFAULT_MODEL = "digits_cnn"
DEFAULT_BATCH_SIZES = (8, 16, 32, 64)
# A relative residual above this says the timings were disturbed (a step model fits a quiet
# host's medians within a few per cent).
NOISY_FIT = 0.1


def render(cal: Calibration, command: str) -> str:
    """The profile as YAML, headed by how it was made."""
    header = (
        f"# Measured by `{command}`.\n"
        f"# Step model: one training step of n samples of {cal.model} ({cal.input_size}x"
        f"{cal.input_size}) takes overhead_s + per_sample_s x n seconds.\n"
        "# eval_steps: evaluating n samples of it as the server does (one batch, forward\n"
        "# passes, loss and accuracy) takes overhead_s + per_sample_s x n seconds.\n"
        "# Work without a step model runs at flops_per_sample / per_sample_s FLOP/s;\n"
        "# memory traffic at aggregate_bytes_per_s. cold_start_s: the first training task's\n"
        "# extra seconds (building the model and optimizer, the first step). request_cpu_s:\n"
        "# processor seconds of one HTTP request the device makes, beyond its bytes.\n"
        "# segment_cpu_s: processor seconds per 1448-byte TCP segment of a body a link paces.\n"
        "# persist_cpu_s, persist_io_s: keeping one update on disk before its upload (the\n"
        "# agent's fsyncs): processor seconds, and seconds waiting for the disk beyond them.\n"
        "# round_overhead_s: a server's seconds to deploy a round's model version.\n"
        "# task_overhead_s: a training task's seconds beyond its steps (the trainer's setup, and\n"
        "# its first steps' re-warming after the device idled).\n"
    )
    from fedsim.ml.calibrate import profile_document

    return header + OmegaConf.to_yaml(OmegaConf.create(profile_document(cal)))


def summary(cal: Calibration, profile: HardwareProfile, out: str) -> str:
    """A few lines on what was measured, for the terminal."""
    from fedsim.ml.calibrate import AGGREGATE_UPDATES, threads_text

    sizes = ", ".join(str(b) for b in cal.fit.batch_sizes)
    counts = ", ".join(str(n) for n in cal.eval_fit.batch_sizes)
    return "\n".join(
        [
            f"{cal.model} on {threads_text(cal.threads)}, batch sizes {sizes}:",
            f"  step = {_fit_text(cal.fit)}",
            f"  evaluation = {_fit_text(cal.eval_fit, f', n = {counts}')}",
            f"  effective training rate {profile.effective_flops / 1e9:.2f} GFLOP/s "
            "at large batches",
            f"  safetensors ({cal.state_bytes / 1e3:.0f} kB): "
            f"serialize {cal.serialize_bytes_per_s / 1e6:.0f} MB/s, "
            f"load {cal.load_bytes_per_s / 1e6:.0f} MB/s",
            f"  aggregation (FedAvg of {AGGREGATE_UPDATES}): "
            f"{cal.aggregate_bytes_per_s / 1e6:.0f} MB/s of memory traffic",
            f"  cold start (model, optimizer, first step): {cal.cold_start_s * 1e3:.1f} ms "
            "over a steady step",
            f"  one HTTP request: {(cal.request_cpu_s or 0.0) * 1e3:.3f} ms of processor, "
            f"+ {(cal.segment_cpu_s or 0.0) * 1e6:.1f} us per segment of a paced body; "
            f"deploying a version (server, each round): {cal.round_overhead_s * 1e3:.2f} ms",
            f"  a training task beyond its steps: {cal.task_overhead_s * 1e3:.2f} ms",
            f"  keeping an update on disk: {(cal.persist_cpu_s or 0.0) * 1e3:.2f} ms of "
            f"processor + {(cal.persist_io_s or 0.0) * 1e3:.2f} ms waiting for the disk",
        ]
        + (
            [
                f"warning: the fit misses the step times by {cal.fit.relative_residual:.0%} RMS; "
                "other processes on this host? rerun when it is quiet, with more --repeats"
            ]
            if cal.fit.relative_residual > NOISY_FIT
            else []
        )
        # The file written, last, as `results: DIR` is for a run.
        + [f"profile: {out}"]
    )


def _fit_text(fit: StepFit, after_n: str = "") -> str:
    """``fit`` as ``overhead ms + per-sample us x n[after_n] (residual ...)``."""
    step = fit.model
    return (
        f"{step.overhead_s * 1e3:.3f} ms + {step.per_sample_s * 1e6:.2f} us x n{after_n} "
        f"(residual {fit.residual_s * 1e6:.1f} us RMS, {fit.relative_residual:.1%})"
    )


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


def _model(text: str) -> str:
    if text not in MODELS and not is_import_path(text):
        raise argparse.ArgumentTypeError(
            f"{text!r}: not a model of the zoo ({', '.join(sorted(MODELS))}) "
            "nor an import path (mypkg.models.MyNet)"
        )
    return text


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
        type=_model,
        default=DEFAULT_MODEL,
        metavar="NAME|PATH",
        help=f"the model to time: one of the zoo's ({', '.join(sorted(MODELS))}), or a user's "
        "class or factory by import path (mypkg.models.MyNet; importable here) with "
        "--input-size and --num-classes (default: %(default)s)",
    )
    p.add_argument(
        "--input-size",
        type=_positive_int(1),
        default=None,
        help="the image side to time at (default: the zoo's for a zoo model)",
    )
    p.add_argument(
        "--num-classes",
        type=_positive_int(1),
        default=None,
        help="the model's class count (default: the zoo's for a zoo model)",
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
    if is_import_path(args.model):
        if args.input_size is None or args.num_classes is None:
            parser.error(
                f"--model {args.model}: a model named by import path needs --input-size and "
                "--num-classes (those its workload trains at)"
            )
        try:
            factory("--model", args.model)  # imports the user's module: torch may load here
        except PluginError as e:
            parser.error(str(e))
    input_size, num_classes = calibration_shape(args.model, args.input_size, args.num_classes)
    command = " ".join([PROG, *(argv if argv is not None else sys.argv[2:])])
    from fedsim.ml.calibrate import calibrate  # torch loads here, after the arguments
    from fedsim.real.request_cost import with_device_costs

    try:
        cal = calibrate(
            args.model,
            args.batch_sizes,
            repeats=args.repeats,
            warmup=args.warmup,
            threads=args.threads,
            statistic=args.statistic,
            input_size=input_size,
            num_classes=num_classes,
        )
    except PluginError as e:  # the user's factory raised, or returned no torch.nn.Module
        parser.error(f"--model {e}")
    cal = with_device_costs(cal)
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
