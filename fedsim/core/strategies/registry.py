"""Strategies by name, so a config can pick one: ``make_strategy("fedadam", eta=0.05)``.

The composition root passes ``cfg.strategy`` without its ``name``; every strategy also takes
``clip_norm`` (None: off), which wraps it in :class:`Clipped`. A misspelt name or parameter
is an error that lists the accepted ones, never a silent default.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

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


def strategy_from(config: Mapping[str, Any]) -> Strategy:
    """A new strategy from its config: ``name`` and the strategy's parameters."""
    if "name" not in config:
        raise ValueError("name: missing")
    return make_strategy(config["name"], **{k: v for k, v in config.items() if k != "name"})


def _class(name: str) -> type[Strategy]:
    try:
        return _CLASSES[name]
    except KeyError:
        raise ValueError(f"unknown strategy {name!r}; known: {', '.join(STRATEGIES)}") from None
