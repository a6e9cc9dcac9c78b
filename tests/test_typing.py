"""The static checks CI runs: mypy over the typed modules, ruff's lint and format over the tree.

Each check runs its tool as ``python -m TOOL`` from the repository root, with the settings in
``pyproject.toml``, and fails with the tool's own report. A tool that is not installed (it
comes with the ``test`` extras) skips its test.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# What mypy checks. Modules these import are analysed too, but their own errors are reported
# only once they are listed here (``follow_imports = "silent"`` in pyproject.toml).
TYPED_PATHS = (
    "fedsim/core",
    "fedsim/spec.py",
    "fedsim/schema.py",
    "fedsim/config.py",
    "fedsim/pipeline.py",
    "fedsim/api.py",
    "fedsim/tracking.py",
    "fedsim/runtimes",
    "fedsim/scenarios",
    "fedsim/remote.py",
    "fedsim/calibrate.py",
    "fedsim/export_topology.py",
    "fedsim/certs.py",
    "fedsim/ml/accounting.py",
    # The wire protocol, and what speaks it on either side.
    "fedsim/real/protocol.py",
    "fedsim/real/transport.py",
    "fedsim/real/jobs.py",
    "fedsim/real/stores.py",
    "fedsim/real/faults.py",
    # The worked example of plug-ins: a user's code, typed as fedsim asks of it.
    "examples/byo/byo_fl",
    # The flow network, which setup.py compiles with mypyc (it must type-check to compile).
    "fedsim/sim/__init__.py",
    "fedsim/sim/network.py",
    "fedsim/sim/captree.py",
    "fedsim/sim/maxmin.py",
    "fedsim/sim/independent.py",
    # Secure aggregation's cryptography (its protocol is under fedsim/core).
    "fedsim/real/secagg_crypto.py",
)


def run_tool(tool: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m tool args`` in the repository root; skips the test when ``tool`` is missing."""
    if importlib.util.find_spec(tool) is None:
        pytest.skip(f"{tool} is not installed (pip install -e '.[test]' installs it)")
    return subprocess.run(
        [sys.executable, "-m", tool, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_mypy_passes_on_the_typed_modules() -> None:
    # Prepare: every listed path exists, so a rename cannot silently shrink what is checked.
    missing = [p for p in TYPED_PATHS if not (ROOT / p).exists()]
    assert not missing, f"typed paths that do not exist: {missing}"

    # Execute: the cache (.mypy_cache, git-ignored) makes a rerun take about a second.
    result = run_tool("mypy", "--config-file", "pyproject.toml", *TYPED_PATHS)

    # Assert
    assert result.returncode == 0, f"mypy failed:\n{result.stdout}{result.stderr}"


@pytest.mark.parametrize(
    "args", [("check", "."), ("format", "--check", ".")], ids=["lint", "format"]
)
def test_ruff_passes_on_the_tree(args: tuple[str, ...]) -> None:
    # Execute
    result = run_tool("ruff", *args)

    # Assert
    assert result.returncode == 0, f"ruff {' '.join(args)} failed:\n{result.stdout}{result.stderr}"
