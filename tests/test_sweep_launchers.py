"""Sweeps beyond one machine: a ``-m`` sweep through Hydra's Ray launcher, and the cluster configs.

The Ray sweep runs for real on a local Ray instance started by the launcher; the Ray-cluster and
Slurm (Submitit) launchers are checked to compose with fedsim's config, since neither a cluster
nor Slurm is at hand in a test. The plugins are the ``ray`` and ``slurm`` extras (``.ci/run``
installs both); without one, its tests skip and say which extra to install.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# The sweep of tests/test_fl_cli.py's joblib test, with modelled training to keep it short.
SWEEP = ["+experiment=fl_digits", "fl.training=modelled", "fl.rounds=3", "strategy=fedavg,median"]


def installed(module: str) -> bool:
    """Whether ``module`` can be imported, without importing it (ray takes seconds to load)."""
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a missing parent package, such as hydra_plugins
        return False


needs_ray = pytest.mark.skipif(
    not (installed("ray") and installed("hydra_plugins.hydra_ray_launcher")),
    reason="ray or hydra-ray-launcher is not installed: pip install -e '.[ray]'",
)
needs_submitit = pytest.mark.skipif(
    not installed("hydra_plugins.hydra_submitit_launcher"),
    reason="hydra-submitit-launcher is not installed: pip install -e '.[slurm]'",
)


def fedsim(*args: str) -> subprocess.CompletedProcess:
    # A Ray address in the environment would send the jobs to that cluster; usage statistics
    # would try to reach the internet at start-up.
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    return subprocess.run(
        [sys.executable, "-m", "fedsim", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@needs_ray
def test_sweep_through_the_ray_launcher_writes_every_job_and_one_report(tmp_path: Path):
    # Prepare: a Ray instance of this process's own ("local", never one already running on the
    # host), sized for a small CI machine; the launcher's default object store (75 MiB) is
    # Ray's minimum.
    ray = [
        "hydra/launcher=ray",
        "hydra.launcher.ray.init.address=local",
        "+hydra.launcher.ray.init.num_cpus=2",
        "+hydra.launcher.ray.init.include_dashboard=false",
        "+hydra.launcher.ray.init.object_store_memory=78643200",
    ]

    # Execute
    proc = fedsim("-m", *SWEEP, *ray, f"hydra.sweep.dir={tmp_path}")

    # Assert: the jobs ran as Ray tasks (Ray prefixes a task's output with its function's name)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "(_run_job pid=" in proc.stdout
    assert "RayLauncher" in (tmp_path / "multirun.yaml").read_text()
    for num, strategy in enumerate(("fedavg", "median")):
        summary = json.loads((tmp_path / str(num) / "summary.json").read_text())
        assert summary["experiment"] == "fl_digits"
        assert summary["strategy"]["name"] == strategy
        assert (tmp_path / str(num) / "report.md").exists()
    # ... and the sweep report over them, as after a joblib sweep.
    assert f"sweep report: {tmp_path / 'report.md'}" in proc.stdout
    report = (tmp_path / "report.md").read_text()
    assert "2 jobs" in report and "strategy=fedavg" in report and "strategy=median" in report
    assert (tmp_path / "plots" / "accuracy_time.png").exists()


RAY_LAUNCHER = "hydra_plugins.hydra_ray_launcher.ray_launcher.RayLauncher"
SLURM_LAUNCHER = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"


@pytest.mark.parametrize(
    ("launcher", "settings", "expected"),
    [
        pytest.param(
            "ray",
            [
                "hydra.launcher.ray.init.address=ray://head.example:10001",
                "+hydra.launcher.ray.remote.num_cpus=2",
            ],
            [f"_target_: {RAY_LAUNCHER}", "address: ray://head.example:10001", "num_cpus: 2"],
            marks=needs_ray,
            id="ray-cluster",
        ),
        pytest.param(
            "submitit_slurm",
            [
                "hydra.launcher.partition=cpu",
                "hydra.launcher.timeout_min=120",
                "hydra.launcher.cpus_per_task=4",
            ],
            [
                f"_target_: {SLURM_LAUNCHER}",
                "partition: cpu",
                "timeout_min: 120",
                "cpus_per_task: 4",
            ],
            marks=needs_submitit,
            id="slurm",
        ),
    ],
)
def test_readme_cluster_launchers_compose_with_fedsims_config(
    launcher: str, settings: list[str], expected: list[str]
):
    # Prepare: the README's overrides for a sweep on an existing Ray cluster or on Slurm.
    overrides = [f"hydra/launcher={launcher}", *settings, "+experiment=fl_digits"]

    # Execute: print the launcher's part of the composed config (nothing is launched)
    proc = fedsim("--cfg", "hydra", "--package", "hydra.launcher", *overrides)

    # Assert
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    for line in expected:
        assert any(s.strip() == line for s in lines), (line, proc.stdout)
