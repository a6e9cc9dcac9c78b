"""SimPy runtime: network and compute models, fault injection.

The flow network (:mod:`fedsim.sim.network`, its :mod:`fedsim.sim.captree`, and the reference
model :mod:`fedsim.sim.maxmin` that subclasses its base) is plain typed Python that the build
may compile to C with mypyc (``setup.py``): the same arithmetic in the same order, about twice
as fast. This package decides which of the two runs, before any of them is imported:

- nothing compiled here (no C compiler at install time, or ``FEDSIM_PURE_PYTHON=1`` then):
  the sources, as for any module;
- ``FEDSIM_PURE_PYTHON=1`` now: the sources, although compiled modules are present;
- a source that is no longer the one compiled (an editable install whose ``.py`` was edited
  afterwards; ``compiled.json`` holds the SHA-256 of each compiled source), or compiled modules
  that fail to load: the sources, with a warning, so that an edit always takes effect;
- otherwise the compiled modules.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.machinery
import importlib.util
import json
import logging
import os
import sys
from pathlib import Path
from types import ModuleType

log = logging.getLogger(__name__)

# What setup.py compiles, in the order they import each other.
COMPILED = ("captree", "network", "maxmin", "independent")
RECORD = "compiled.json"
HERE = Path(__file__).resolve().parent


def compiled_here(here: Path = HERE) -> bool:
    """Whether a compiled module of :data:`COMPILED` lies in ``here``."""
    return any(
        (here / f"{name}{suffix}").exists()
        for name in COMPILED
        for suffix in importlib.machinery.EXTENSION_SUFFIXES
    )


def stale_sources(here: Path = HERE) -> list[str]:
    """The modules of :data:`COMPILED` whose source in ``here`` is not the one compiled: all of
    them when the record of what was compiled is missing or unreadable."""
    try:
        record = json.loads((here / RECORD).read_text())
    except (OSError, ValueError):
        return list(COMPILED)
    return [
        name
        for name in COMPILED
        if not isinstance(record, dict)
        or record.get(name) != hashlib.sha256((here / f"{name}.py").read_bytes()).hexdigest()
    ]


def _from_source() -> None:
    """Import every module of :data:`COMPILED` from its ``.py`` file, past the extensions."""
    for name in COMPILED:
        full = f"{__name__}.{name}"
        spec = importlib.util.spec_from_file_location(full, HERE / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[full] = module
        spec.loader.exec_module(module)
        globals()[name] = module


def _choose() -> None:
    if not compiled_here():
        return  # the sources, imported as any module is
    if os.environ.get("FEDSIM_PURE_PYTHON"):
        _from_source()
        return
    stale = stale_sources()
    if stale:
        log.warning(
            "fedsim.sim: %s changed since compiled; running from source "
            "(pip install -e . compiles it again)",
            ", ".join(f"{name}.py" for name in stale),
        )
        _from_source()
        return
    try:
        for name in COMPILED:
            importlib.import_module(f"{__name__}.{name}")
    except ImportError as e:
        log.warning("fedsim.sim: the compiled network does not load (%s); running from source", e)
        for name in COMPILED:
            sys.modules.pop(f"{__name__}.{name}", None)
        _from_source()


def compiled() -> bool:
    """Whether this process runs the compiled flow network (imports it if not yet imported)."""
    module: ModuleType = importlib.import_module(f"{__name__}.network")
    return not (module.__file__ or "").endswith(".py")


_choose()
