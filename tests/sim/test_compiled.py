"""The flow network compiled with mypyc (setup.py) against its Python source.

The compiled modules must give the numbers the sources give, to the last digit, and a source
edited after it was compiled must run as edited.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from side_by_side import FLEET_ROUND, fedsim_runs

import fedsim.sim as sim

ROOT = Path(__file__).resolve().parents[2]


def which(env: dict[str, str]) -> bool:
    """Whether a fresh process with ``env`` runs the compiled network."""
    done = subprocess.run(
        [sys.executable, "-c", "import fedsim.sim as s; print(s.compiled())"],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    return done.stdout.strip() == "True"


@pytest.mark.skipif(
    not sim.compiled_here(), reason="not compiled here: pip install -e . compiles it with mypyc"
)
def test_compiled_and_source_networks_give_the_same_numbers(tmp_path: Path) -> None:
    # Prepare
    dirs = (tmp_path / "compiled", tmp_path / "source")
    envs: list[dict[str, str]] = [{}, {"FEDSIM_PURE_PYTHON": "1"}]

    # Execute: the same run twice, side by side, once on the sources.
    procs = fedsim_runs(*([*FLEET_ROUND, f"hydra.run.dir={d}"] for d in dirs), cwd=ROOT, envs=envs)

    # Assert: the two ran different code, and wrote the same events to the last digit.
    assert [which({**os.environ, **env}) for env in envs] == [True, False]
    for proc in procs:
        assert proc.returncode == 0, proc.stderr[-3000:]
    compiled, source = ((d / "events.csv").read_text() for d in dirs)
    assert compiled == source and compiled.count("\n") == 3003


def test_setup_compiles_the_modules_the_package_checks() -> None:
    # Prepare: setup.py's list, read without running it (running it would build).
    tree = ast.parse((ROOT / "setup.py").read_text())
    (listed,) = [
        ast.literal_eval(node.value)
        for node in tree.body
        if isinstance(node, ast.Assign)
        and any(isinstance(t, ast.Name) and t.id == "COMPILED" for t in node.targets)
    ]

    # Assert: the same modules in the same order, so that fedsim.sim checks and loads from
    # source exactly what the build compiles.
    assert listed == tuple(f"fedsim/sim/{name}.py" for name in sim.COMPILED)


def _package(tmp_path: Path) -> Path:
    """A copy of the compiled modules' sources with a record of them, as setup.py writes it."""
    record = {}
    for name in sim.COMPILED:
        source = (sim.HERE / f"{name}.py").read_bytes()
        (tmp_path / f"{name}.py").write_bytes(source)
        record[name] = hashlib.sha256(source).hexdigest()
    (tmp_path / sim.RECORD).write_text(json.dumps(record))
    return tmp_path


def test_sources_as_compiled_are_not_stale(tmp_path: Path) -> None:
    # Prepare
    here = _package(tmp_path)

    # Execute / Assert
    assert sim.stale_sources(here) == []


def test_a_source_edited_after_compiling_is_stale(tmp_path: Path) -> None:
    # Prepare: one line added to the network's source after the build recorded it.
    here = _package(tmp_path)
    with open(here / "network.py", "a") as f:
        f.write("# edited\n")

    # Execute / Assert
    assert sim.stale_sources(here) == ["network"]


@pytest.mark.parametrize("record", [None, "not json", "[1, 2]"], ids=["missing", "bad", "list"])
def test_without_a_readable_record_every_compiled_module_is_stale(
    record: str | None, tmp_path: Path
) -> None:
    # Prepare
    here = _package(tmp_path)
    if record is None:
        (here / sim.RECORD).unlink()
    else:
        (here / sim.RECORD).write_text(record)

    # Execute / Assert
    assert sim.stale_sources(here) == list(sim.COMPILED)


def test_pure_python_asked_for_runs_the_sources() -> None:
    # Execute: a process asked to run from source, whether or not compiled modules are here.
    compiled = which({**os.environ, "FEDSIM_PURE_PYTHON": "1"})

    # Assert
    assert compiled is False
