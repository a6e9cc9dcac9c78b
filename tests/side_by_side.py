"""``python -m fedsim`` runs started together, for tests that compare two runs.

Most of a short run is start-up on one core (imports, Hydra's composition, the report's
plots), so on two cores a pair of runs side by side takes little longer than one of them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

# One round of 1,000 devices with their own link speeds and latencies, every transfer's end
# worked out by the flow network: for tests that compare two runs' events to the last digit.
FLEET_ROUND = (
    "+experiment=fl_scale",
    "topology.generate.groups=10",
    "topology.generate.devices_per_group=100",
    "topology.fleet.spread.bandwidth=0.8",
    "topology.fleet.spread.latency=0.5",
    "fl.training=modelled",
    "fl.rounds=1",
    "fl.fraction_per_round=1.0",
    "fl.max_events=4000",
    "report.plots=false",
)


def fedsim_runs(
    *argvs: Sequence[str],
    cwd: Path,
    timeout: float = 600,
    envs: Sequence[Mapping[str, str]] = (),
) -> list[subprocess.CompletedProcess]:
    """Run ``python -m fedsim ARGV`` for every argv at once; their outcomes, in order.

    ``envs``, if given, holds one set of environment variables for each run, added to this
    process's environment.
    """
    if envs and len(envs) != len(argvs):
        raise ValueError(f"{len(envs)} environments for {len(argvs)} runs")
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "fedsim", *argv],
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **envs[i]} if envs else None,
        )
        for i, argv in enumerate(argvs)
    ]
    try:
        outputs = [proc.communicate(timeout=timeout) for proc in procs]
    finally:
        for proc in procs:  # a failed wait leaves no run behind
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return [
        subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
        for proc, (out, err) in zip(procs, outputs, strict=True)
    ]
