"""``deploy/Dockerfile``'s structure, checked without a Docker daemon so that it cannot rot:
stages, the torch variant, the non-root user, the health check, and the build context."""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from fedsim.deploy.common import HEALTH_PATH, SERVER_PORT, UID

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deploy" / "Dockerfile"


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per instruction, continuation lines joined, comments dropped."""
    result: list[tuple[str, str]] = []
    parts: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue  # also a comment line inside a continued instruction, as Docker reads it
        parts.append(stripped.removesuffix("\\").strip())
        if not stripped.endswith("\\"):
            keyword, _, rest = " ".join(parts).partition(" ")
            result.append((keyword.upper(), rest.strip()))
            parts = []
    assert not parts, "the Dockerfile ends inside a continued instruction"
    return result


def stages(text: str) -> dict[str, list[tuple[str, str]]]:
    """Stage name -> its instructions; the ARGs before the first FROM under ``""``."""
    result: dict[str, list[tuple[str, str]]] = {"": []}
    current = ""
    for keyword, rest in instructions(text):
        if keyword == "FROM":
            match = re.fullmatch(r"(\S+)\s+AS\s+(\S+)", rest, re.IGNORECASE)
            assert match, f"stage without a name: FROM {rest}"
            current = match.group(2)
            result[current] = [(keyword, match.group(1))]
        else:
            result[current].append((keyword, rest))
    return result


def args_of(stage: list[tuple[str, str]]) -> dict[str, str]:
    return dict(rest.split("=", 1) for keyword, rest in stage if keyword == "ARG" and "=" in rest)


def substitute(text: str, values: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}", lambda m: values[m.group(1)], text)


@pytest.fixture(scope="module")
def dockerfile() -> dict[str, list[tuple[str, str]]]:
    return stages(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib", reason="tomllib is Python >= 3.11's")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_multi_stage_build_copies_only_the_environment(dockerfile):
    assert list(dockerfile) == ["", "builder", "runtime"]
    runtime = dockerfile["runtime"]
    copies = [rest for keyword, rest in runtime if keyword == "COPY"]
    assert copies == ["--from=builder /opt/venv /opt/venv"]
    # Both stages share the base image, so the venv's interpreter link resolves in the runtime.
    assert dockerfile["builder"][0][1] == runtime[0][1] == "python:${PYTHON_VERSION}-slim"


def test_base_python_satisfies_requires_python(dockerfile, pyproject):
    python = args_of(dockerfile[""])["PYTHON_VERSION"]

    assert Version(python) in SpecifierSet(pyproject["project"]["requires-python"])


def test_torch_is_the_cpu_build_by_default_with_a_cuda_build_argument(dockerfile, pyproject):
    args = args_of(dockerfile["builder"])

    assert args["TORCH_VARIANT"] == "cpu"
    assert args["TORCH_INDEX"] == "https://download.pytorch.org/whl/${TORCH_VARIANT}"
    install = next(r for k, r in dockerfile["builder"] if k == "RUN" and "torch==" in r)
    assert '--index-url "${TORCH_INDEX}"' in install and '"torch==${TORCH_VERSION}"' in install
    # The pinned torch is one that fedsim's own requirement accepts.
    torch_spec = next(
        d.removeprefix("torch").strip()
        for d in pyproject["project"]["dependencies"]
        if re.match(r"torch\W", d)
    )
    assert Version(args["TORCH_VERSION"]) in SpecifierSet(torch_spec)
    # torch goes in before fedsim, so fedsim's own install does not pull a CUDA build.
    runs = [r for k, r in dockerfile["builder"] if k == "RUN"]
    assert runs.index(install) < runs.index("pip install .")


def test_runtime_runs_as_the_manifests_non_root_user(dockerfile):
    runtime = dockerfile["runtime"]
    values = args_of(runtime)
    users = [substitute(rest, values) for keyword, rest in runtime if keyword == "USER"]

    assert users == [f"{UID}:{UID}"]
    assert UID != 0
    # The user is created with that id.
    (create,) = [substitute(r, values) for k, r in runtime if k == "RUN" and "useradd" in r]
    assert f"--uid {UID}" in create.replace('"', "")


def test_health_check_asks_the_servers_health_endpoint(dockerfile):
    (check,) = [rest for keyword, rest in dockerfile["runtime"] if keyword == "HEALTHCHECK"]
    options, _, command = check.partition("CMD")
    exec_form = json.loads(command.strip())

    assert exec_form[:2] == ["python", "-c"]
    assert f"http://127.0.0.1:{SERVER_PORT}{HEALTH_PATH}" in exec_form[2]
    assert "--interval=" in options and "--timeout=" in options
    compile(exec_form[2], "<healthcheck>", "exec")  # the one-liner is valid Python


def test_entrypoint_is_the_fedsim_command(dockerfile, pyproject):
    (entrypoint,) = [rest for keyword, rest in dockerfile["runtime"] if keyword == "ENTRYPOINT"]

    assert json.loads(entrypoint) == ["fedsim"]
    assert "fedsim" in pyproject["project"]["scripts"]


def _ignored(path: str, patterns: list[str]) -> bool:
    """Whether Docker leaves ``path`` out of the context: the last matching pattern decides,
    and a pattern that matches a parent directory matches what is under it."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern.removeprefix("!").rstrip("/")
        if any(fnmatch.fnmatch(p, pat) for p in prefixes):
            ignored = not negate
    return ignored


def test_build_context_holds_what_the_build_copies_and_little_else(dockerfile, pyproject):
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    sources = [
        src
        for keyword, rest in dockerfile["builder"]
        if keyword == "COPY"
        for src in shlex.split(rest)[:-1]
    ]

    assert pyproject["project"]["readme"] in sources and "pyproject.toml" in sources
    for src in sources:
        assert not _ignored(src.rstrip("/"), patterns), src
        assert (ROOT / src).exists(), src
    assert not _ignored("fedsim/deploy/k8s.py", patterns)
    assert not _ignored("conf/topology/keti_testbed.yaml", patterns)
    for kept_out in (
        "results/x/summary.json",
        ".git/HEAD",
        "tests/deploy/test_dockerfile.py",
        "fedsim/__pycache__/app.cpython-311.pyc",
        "fedsim/sim/network.cpython-311-x86_64-linux-gnu.so",  # the host's compiled network
        "fedsim/sim/compiled.json",
    ):
        assert _ignored(kept_out, patterns), kept_out
