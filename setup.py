"""Build: the flow network compiled to C with mypyc, where a C compiler is at hand.

Everything else about the package is in pyproject.toml. The modules in :data:`COMPILED` are
plain typed Python; mypyc (part of mypy, a build requirement) turns them into C extensions that
run the same arithmetic in the same order, so a run gives the same numbers either way (a test
compares the two). The extensions are optional: without a compiler, or with
``FEDSIM_PURE_PYTHON=1`` set at build time, the build warns and fedsim runs from the sources.

Beside the extensions the build writes ``fedsim/sim/compiled.json``, the SHA-256 of each
source it compiled: ``fedsim.sim`` loads a compiled module only while its source is the one
compiled, so a source edited after an editable install runs as edited (with a warning to
rebuild) rather than as it was.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from setuptools import setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
# In the order they import each other; fedsim/sim/__init__.py lists the same names
# (tests/sim/test_compiled.py checks that).
COMPILED = (
    "fedsim/sim/captree.py",
    "fedsim/sim/network.py",
    "fedsim/sim/maxmin.py",
    "fedsim/sim/independent.py",
)
RECORD = "compiled.json"


class BuildExt(build_ext):
    """setuptools' build_ext, which then records the sources of the extensions it built."""

    def run(self) -> None:
        super().run()
        built = {}
        for source in COMPILED:
            name = source.removesuffix(".py").replace("/", ".")
            if Path(self.get_ext_fullpath(name)).exists():
                built[Path(source).stem] = hashlib.sha256((ROOT / source).read_bytes()).hexdigest()
        if built:
            out = Path(self.get_ext_fullpath("fedsim.sim.network")).parent / RECORD
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(built, indent=1, sort_keys=True) + "\n")


def extensions() -> list:
    """The mypyc extensions, optional each; none when asked for none or mypyc is missing."""
    if os.environ.get("FEDSIM_PURE_PYTHON"):
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:  # a build without the build requirements (--no-build-isolation)
        return []
    # One group, whose shared library lives inside the package (not at the top level).
    exts = mypycify(list(COMPILED), opt_level="3", group_name="fedsim.sim._compiled")
    for ext in exts:
        ext.optional = True  # a failed compile warns; the package then runs from source
    return exts


setup(ext_modules=extensions(), cmdclass={"build_ext": BuildExt})
