"""How much more processor a training step costs an emulated agent than a process alone.

Holding agents to CFS quotas on a shared host does more than slow them down. Each time the
kernel lets a throttled agent run again, the caches hold what the other agents and processes
left there, so a step costs more processor than it does in a process that runs alone: on this
2-core host the agents' own count of their training was 1.05-1.33 times what the calibration
charged for three agents at 0.1-0.5 core, and 1.76-2.01 times for sixteen at 0.04-0.1 core
(benchmarks/README.md, "Fidelity"). The device the profile describes
does not pay that; the emulated one does, so a prediction of the emulated run must too.

:func:`measure` finds the ratio, ``cpu_inflation``, as the run will pay it. One probe runs alone
and unthrottled first. Then one probe per agent starts in the agent's cgroup and namespace
while the agents are not yet held, and warms up. Once the emulation holds the agents to their
quotas, all the probes time the same training step at the same moment, each by its thread's
processor clock, for about the same wall time (the steps its quota allows in :data:`WALL_S`),
so that each is measured among all the others. The run's prediction charges each agent's work
that many times (``fedsim.pipeline.prediction_spec``).

How far that holds was measured (bench_fidelity, benchmarks/README.md), comparing each
agent's training time per round with the prediction's. Where the agents are alike, it is what
the rounds paid: sixteen agents at 0.04-0.1 core probed at 1.6-1.8x, and their training per
round, predicted 29-64 % short without it, is predicted a median 8 % off with it. An agent
held far below the others pays a less steady cost: keti-compute's 0.1-core agent paid 1.18x,
1.28x and 1.73x in three runs (and in the last, 0.26 s a round early on, 0.40 s late), against
the probe's 1.42-1.57x at their starts. Giving every probe the same number of steps instead,
so that the slowest runs its last steps alone as in a round, was no better (1.67x).

Run as a process (what :func:`measure` starts)::

    python -m fedsim.real.cpu_probe --model NAME --input-size N --num-classes N \\
        --batch-size N --steps N

builds the model, takes a few warm-up steps, prints ``ready``, waits for a line on standard
input, times ``--steps`` steps of one batch, and prints ``{"cpu_per_step_s": ...}``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import select
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

log = logging.getLogger(__name__)

READY = "ready"
WARMUP_STEPS = 3
ALONE_STEPS = 40
WALL_S = 1.0  # what each held probe aims to run for: the steps its quota allows in that time
MIN_STEPS = 3
START_TIMEOUT_S = 180.0  # every probe importing torch at once, on a host of few cores
RUN_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class Workload:
    """The training step a probe times: a model of the zoo (or a user's import path) at one
    batch size."""

    model: str
    input_size: int
    num_classes: int
    batch_size: int

    def command(self, steps: int) -> list[str]:
        """The probe's command line, timing ``steps`` steps."""
        return [
            sys.executable,
            "-m",
            "fedsim.real.cpu_probe",
            f"--model={self.model}",
            f"--input-size={self.input_size}",
            f"--num-classes={self.num_classes}",
            f"--batch-size={self.batch_size}",
            f"--steps={steps}",
        ]


@dataclass(frozen=True)
class Measured:
    """What :func:`measure` found: processor seconds per step alone and per agent, the steps
    each agent's probe took, and their ratio (``cpu_inflation``, by device id)."""

    alone_step_s: float
    step_s: dict[int, float]
    steps: dict[int, int]

    @property
    def inflation(self) -> dict[int, float]:
        return {d: s / self.alone_step_s for d, s in self.step_s.items()}

    def describe(self) -> dict[str, object]:
        """The figures ``emulation.json`` states (JSON-ready)."""
        return {
            "cpu_inflation": {str(d): x for d, x in self.inflation.items()},
            "cpu_probe": {
                "alone_step_cpu_s": self.alone_step_s,
                "step_cpu_s": {str(d): s for d, s in self.step_s.items()},
                "steps": {str(d): n for d, n in self.steps.items()},
            },
        }


class ProbeFailed(RuntimeError):
    """A probe did not start, answer or finish in time."""


def steps_for(quota_cores: float, alone_step_s: float, wall_s: float = WALL_S) -> int:
    """Steps that keep a probe held to ``quota_cores`` busy for about ``wall_s``."""
    return max(MIN_STEPS, math.ceil(quota_cores * wall_s / alone_step_s))


def measure(
    workload: Workload,
    launchers: Mapping[int, Sequence[str]],
    quotas: Mapping[int, float],
    hold: Callable[[], None],
) -> Measured:
    """One probe alone, then one per agent (started by its ``launchers`` prefix, in its cgroup
    and namespace) warmed up before ``hold()`` holds the agents to their ``quotas`` (cores),
    and timed together after, each for the steps its quota allows in about :data:`WALL_S`.
    Raises :class:`ProbeFailed` if a probe fails; none is left running."""
    alone = _start([], workload.command(ALONE_STEPS))
    try:
        _wait_ready({-1: alone})
        alone_step_s = _time({-1: alone})[-1]
    finally:
        _stop([alone])
    steps = {d: steps_for(quotas[d], alone_step_s) for d in launchers}
    procs: dict[int, subprocess.Popen[str]] = {}
    try:
        for dev, prefix in launchers.items():
            procs[dev] = _start(prefix, workload.command(steps[dev]))
        # Started and warmed up unthrottled, as the agents were: importing torch alone takes
        # a second or more of processor, minutes at a few per cent of a core.
        _wait_ready(procs)
        hold()
        return Measured(alone_step_s, _time(procs), steps)
    finally:
        _stop(list(procs.values()))


def _start(prefix: Sequence[str], command: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*prefix, *command],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_ready(procs: Mapping[int, subprocess.Popen[str]]) -> None:
    """Wait until every probe has warmed up and waits to be told to go."""
    deadline = time.monotonic() + START_TIMEOUT_S
    for dev, proc in procs.items():
        line = _readline(proc, deadline - time.monotonic())
        if line.strip() != READY:
            raise ProbeFailed(f"probe of device {dev} did not start: {_why(proc, line)}")


def _time(procs: Mapping[int, subprocess.Popen[str]]) -> dict[int, float]:
    """Let every (ready) probe go at once, and read their figures."""
    for proc in procs.values():
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    deadline = time.monotonic() + RUN_TIMEOUT_S
    figures = {}
    for dev, proc in procs.items():
        line = _readline(proc, deadline - time.monotonic())
        try:
            figures[dev] = float(json.loads(line)["cpu_per_step_s"])
        except (ValueError, KeyError, TypeError):
            raise ProbeFailed(f"probe of device {dev} failed: {_why(proc, line)}") from None
    return figures


def _readline(proc: subprocess.Popen[str], timeout: float) -> str:
    """The next line of ``proc``'s output, or "" if none comes within ``timeout``. A probe
    writes a line only when asked (ready, then its figures), so nothing waits in the
    stream's buffer that ``select`` would not see."""
    assert proc.stdout is not None
    readable, _, _ = select.select([proc.stdout], [], [], max(0.0, timeout))
    return proc.stdout.readline() if readable else ""


def _why(proc: subprocess.Popen[str], line: str) -> str:
    if proc.poll() is None:
        return f"no answer in time (got {line!r})"
    assert proc.stderr is not None
    lines = proc.stderr.read().strip().splitlines()
    return lines[-1] if lines else f"exit status {proc.returncode}"


def _stop(procs: Sequence[subprocess.Popen[str]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
    for proc in procs:
        proc.wait()
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fedsim.real.cpu_probe")
    parser.add_argument("--model", required=True)
    parser.add_argument("--input-size", type=int, required=True)
    parser.add_argument("--num-classes", type=int, required=True)
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--steps", type=int, required=True)
    args = parser.parse_args(argv)
    from fedsim.ml.calibrate import time_training_steps

    def ready() -> None:
        print(READY, flush=True)
        sys.stdin.readline()

    timings = time_training_steps(
        args.model,
        [args.batch_size],
        repeats=args.steps,
        warmup=WARMUP_STEPS,
        input_size=args.input_size,
        num_classes=args.num_classes,
        threads=1,  # as an agent trains
        clock=time.thread_time,
        before_timing=ready,
    )
    spent = timings.seconds[args.batch_size]
    print(json.dumps({"cpu_per_step_s": sum(spent) / len(spent)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
