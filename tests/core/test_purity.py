"""fedsim.core stays free of runtimes, torch, config and report libraries."""

import subprocess
import sys

HEAVY = ["simpy", "aiohttp", "torch", "hydra", "omegaconf", "pandas", "matplotlib"]


def test_core_imports_no_runtime_or_heavy_library():
    # Prepare: a fresh interpreter, so nothing else has loaded these modules already.
    code = f"""
import importlib, pkgutil, sys
import fedsim.core
for m in pkgutil.walk_packages(fedsim.core.__path__, "fedsim.core."):
    importlib.import_module(m.name)
print(sorted({{n.split(".")[0] for n in sys.modules}} & set({HEAVY!r})))
"""
    # Execute
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    # Assert
    assert out.stdout.strip() == "[]"
