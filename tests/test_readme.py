"""The README's set-up commands: torch's CPU build as the Dockerfile installs it, and the test
command's one-line setup, which .ci/run runs too."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CPU_INDEX = "--index-url https://download.pytorch.org/whl/cpu"


def _torch_installs(text: str) -> list[str]:
    return [line for line in text.splitlines() if re.search(r"pip install .*torch==", line)]


def test_every_torch_install_takes_the_cpu_build_the_dockerfile_pins():
    # Prepare
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    version = re.search(r"ARG TORCH_VERSION=(\S+)", dockerfile)
    assert version is not None
    readme = (ROOT / "README.md").read_text()
    setup = (ROOT / "scripts" / "setup-test-deps.sh").read_text()

    # Execute
    installs = _torch_installs(readme) + _torch_installs(setup)

    # Assert: issue 15 found a bare pin, which on Linux takes PyPI's CUDA build.
    assert len(installs) >= 2
    for line in installs:
        assert f"torch=={version[1]}" in line and CPU_INDEX in line, line


def test_the_test_command_sets_up_what_the_tests_run_and_ci_runs_the_same():
    # Prepare
    readme = (ROOT / "README.md").read_text()
    setup = (ROOT / "scripts" / "setup-test-deps.sh").read_text()
    ci = (ROOT / ".ci" / "run").read_text()

    # Assert: the programs the skipping tests look for, the extras, and one script for both.
    assert "scripts/setup-test-deps.sh && python3 -m pytest -q" in readme
    for package in ("prometheus", "prometheus-node-exporter", "chromium", "iproute2", "openssl"):
        assert re.search(rf"\b{package}\b", setup), package
    assert "kubernetes-client" in setup and ".[test,ray,slurm]" in setup
    assert "scripts/setup-test-deps.sh" in ci and "python3 -m pytest -q" in ci
