"""Strategies by name, so a config can pick one: ``make_strategy("fedadam", eta=0.05)``.

A config's ``strategy`` is a built-in ``name`` and its parameters, or a user's own strategy
named by import path, Hydra's way (``_target_: mypkg.MyStrategy`` and its keyword arguments;
``docs/plugins.md``). Every strategy also takes ``clip_norm`` (None: off), which wraps it in
:class:`Clipped`. A misspelt name or parameter is an error that lists the accepted ones, never
a silent default.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from fedsim.core.plugins import TARGET, build, is_import_path, locate
from fedsim.core.strategies.base import Strategy
from fedsim.core.strategies.clipping import Clipped
from fedsim.core.strategies.fedadagrad import FedAdagrad
from fedsim.core.strategies.fedadam import FedAdam
from fedsim.core.strategies.fedavg import FedAvg
from fedsim.core.strategies.fedprox import FedProx
from fedsim.core.strategies.fedyogi import FedYogi
from fedsim.core.strategies.krum import Krum, MultiKrum
from fedsim.core.strategies.median import Median
from fedsim.core.strategies.trimmed_mean import TrimmedMean

_CLASSES: dict[str, type[Strategy]] = {
    c.name: c
    for c in (
        FedAvg,
        FedProx,
        FedAdam,
        FedYogi,
        FedAdagrad,
        Median,
        TrimmedMean,
        Krum,
        MultiKrum,
    )
}
STRATEGIES: tuple[str, ...] = tuple(_CLASSES)


def strategy_params(name: str) -> tuple[str, ...]:
    """The parameters strategy ``name`` accepts, ``clip_norm`` included."""
    cls = _class(name)
    own = [
        p.name
        for p in inspect.signature(cls.__init__).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    ]
    return (*own, "clip_norm")


def make_strategy(name: str, **params: Any) -> Strategy:
    """A new strategy ``name`` built from ``params``; ``clip_norm`` wraps it in clipping."""
    known = strategy_params(name)
    unknown = sorted(params.keys() - set(known))
    if unknown:
        raise ValueError(
            f"unknown parameter(s) {', '.join(unknown)} for strategy {name!r}; "
            f"known: {', '.join(known)}"
        )
    clip_norm = params.pop("clip_norm", None)
    strategy = _CLASSES[name](**params)
    if clip_norm is None:
        return strategy
    return Clipped(inner=strategy, max_norm=clip_norm)


def strategy_from(config: Mapping[str, Any], where: str = "strategy") -> Strategy:
    """A new strategy from its config: ``name`` (a built-in, or an import path) or
    ``_target_`` (an import path), and the strategy's parameters.

    Raises ``ValueError`` (a :class:`~fedsim.core.plugins.PluginError` for a user's strategy)
    whose message names the field.
    """
    params = {k: v for k, v in config.items() if k not in ("name", TARGET)}
    path = config.get(TARGET)
    if path is None and isinstance(config.get("name"), str) and is_import_path(config["name"]):
        path = config["name"]
    if path is not None:
        return plugin_strategy(where, str(path), params)
    if "name" not in config:
        raise ValueError(f"{where}.name: missing (or give {TARGET}: an import path)")
    return make_strategy(config["name"], **params)


def plugin_strategy(where: str, path: str, params: Mapping[str, Any]) -> Strategy:
    """The user's strategy ``path(**params)``, which must be a :class:`Strategy`; ``clip_norm``
    wraps it in clipping as it does the built-ins (unless the strategy takes it itself)."""
    own = dict(params)
    clip_norm = None
    if "clip_norm" in own and not _takes(where, path, "clip_norm"):
        clip_norm = own.pop("clip_norm")
    strategy: Strategy = build(where, path, own, expect=Strategy)
    if clip_norm is None:
        return strategy
    return Clipped(inner=strategy, max_norm=clip_norm)


def _takes(where: str, path: str, param: str) -> bool:
    try:
        parameters = inspect.signature(locate(where, path)).parameters
    except (TypeError, ValueError):
        return False
    return param in parameters


def _class(name: str) -> type[Strategy]:
    try:
        return _CLASSES[name]
    except KeyError:
        raise ValueError(f"unknown strategy {name!r}; known: {', '.join(STRATEGIES)}") from None
