"""Load balancing on real processes: one agent throttled by a CPU quota (needs root, cgroups)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest
from clusters import cluster_for, config, run_over

from fedsim.real.emulate import cgroup_root

# cgroup v1's cpu hierarchy, else v2's unified one (as mode=emulated uses them).
CGROUP, VERSION = cgroup_root()
PERIOD_US = 100_000


def _can_throttle() -> bool:
    if os.geteuid() != 0:
        return False
    if VERSION == 1:
        return True
    controllers = CGROUP / "cgroup.controllers"
    return controllers.exists() and "cpu" in controllers.read_text().split()


def throttle(pid: int, name: str, share: float) -> Path:
    """Put process ``pid`` in a cgroup that may use ``share`` of one CPU."""
    group = CGROUP / name
    if VERSION == 2:
        # v2 hands the cpu controller down from the parent before a child can use it.
        (CGROUP / "cgroup.subtree_control").write_text("+cpu")
        group.mkdir(exist_ok=True)
        (group / "cpu.max").write_text(f"{int(PERIOD_US * share)} {PERIOD_US}")
    else:
        group.mkdir(exist_ok=True)
        period = int((group / "cpu.cfs_period_us").read_text())
        (group / "cpu.cfs_quota_us").write_text(str(int(period * share)))
    (group / "cgroup.procs").write_text(str(pid))
    return group


def release(group: Path) -> None:
    root_procs = CGROUP / "cgroup.procs"
    for pid in (group / "cgroup.procs").read_text().split():
        with contextlib.suppress(OSError):  # the process may have exited
            root_procs.write_text(pid)
    group.rmdir()


@pytest.mark.skipif(
    not _can_throttle(), reason="needs root and the cgroup cpu controller (v1 or v2)"
)
def test_balanced_round_is_markedly_sooner_with_one_agent_throttled(tmp_path: Path):
    durations = {}
    for balance in (False, True):
        # Round 0 lets every agent measure its training speed; round 1 is the one compared.
        cfg = config(
            "fl.rounds=2",
            "fl.local_epochs=8",
            "fl.deadline_s=120",
            f"fl.balance={str(balance).lower()}",
        )
        run_dir = tmp_path / f"balance-{balance}"
        with cluster_for(cfg, run_dir) as cluster:
            group = throttle(cluster.agents[8].pid, f"fedsim-test-{balance}", 0.15)
            try:
                result = run_over(cluster, cfg, run_dir / "run")
            finally:
                release(group)
        assert all(r.aggregated for r in result.rows)
        durations[balance] = result.rows[1].total_s
    print(
        f"round with device 8 at 15% of a CPU: unbalanced {durations[False]:.2f} s, "
        f"balanced {durations[True]:.2f} s"
    )
    assert durations[True] < 0.6 * durations[False]
