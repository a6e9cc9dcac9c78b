"""The import rules of DESIGN.md that hold across packages: no cycles, no Hydra in fedsim.real.

Imports are read from the source (every ``import`` statement, at module level or inside a
function or a ``TYPE_CHECKING`` block), so a cycle that only closes at run time is found too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import fedsim

PACKAGE = Path(fedsim.__file__).resolve().parent


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every module ``path`` imports, absolute; relative imports resolved."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
    return found


def graph() -> dict[str, set[str]]:
    """fedsim's modules and the fedsim modules each imports."""
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    edges: dict[str, set[str]] = {}
    for name, path in files.items():
        targets = set()
        for target in imports_of(path):
            while target and target not in files:
                target = target.rpartition(".")[0]
            if target and target != name:
                targets.add(target)
        edges[name] = targets
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            # A package's __init__ importing its own submodule, and back, is no cycle of design.
            if len(component) > 1 and not _package_and_child(component):
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def _package_and_child(component: list[str]) -> bool:
    a, b = sorted(component) if len(component) == 2 else ("", "")
    return bool(a) and b.startswith(a + ".")


def test_the_cycle_finder_finds_a_cycle():
    # Prepare: a -> b -> c -> a, and d alone.
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}

    # Execute / Assert
    assert cycles(edges) == [["a", "b", "c"]]


def test_no_import_cycle_in_fedsim():
    # Execute
    found = cycles(graph())

    # Assert
    assert found == [], "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


@pytest.mark.parametrize("library", ["hydra", "omegaconf"])
def test_fedsim_real_reads_no_hydra_config(library: str):
    # Prepare: every module of fedsim.real, with what it imports.
    real = [p for p in PACKAGE.rglob("*.py") if module_name(p).startswith("fedsim.real")]

    # Execute
    offenders = [
        module_name(p)
        for p in real
        if any(t == library or t.startswith(library + ".") for t in imports_of(p))
    ]

    # Assert
    assert real and offenders == []


def test_fedsim_real_imports_no_composition_module():
    # fedsim.real is handed what it runs (the job runner); it never reaches back up.
    upper = ("fedsim.config", "fedsim.schema", "fedsim.pipeline", "fedsim.__main__")
    upper += ("fedsim.scenarios", "fedsim.runtimes", "fedsim.spec")
    edges = graph()

    offenders = {
        m: sorted(t for t in targets if t.startswith(upper))
        for m, targets in edges.items()
        if m.startswith("fedsim.real") and any(t.startswith(upper) for t in targets)
    }

    assert offenders == {}
