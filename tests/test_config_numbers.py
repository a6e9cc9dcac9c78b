"""Every number of an experiment's config is checked before a run: a sweep of hostile values.

The simulator once took ``seed=-1``, ``bandwidth_mbps=nan`` or ``inf`` and a split it could not
make into a traceback or an ``Infinity`` in summary.json. Here every numeric field of the
shipped experiments gets NaN, infinities, -1 and an integer beyond 64 bits in turn, and
``build_spec`` must refuse each with a :class:`ConfigError` that names the field.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest
from omegaconf import OmegaConf

from fedsim.config import ConfigError, as_container, build_spec, compose, conf_dir

FLOAT_VALUES = (float("nan"), float("inf"), float("-inf"), -1.0)
INT_VALUES = (-1, 2**63)
# Numbers that may be below zero: the paper's saving rate (a slower method saves less than 0).
SIGNED = {"paper.time_saving_rate"}


def numeric_fields(node: Any, key: str = "", path: str = "") -> Iterator[tuple[str, str, Any]]:
    """``(key, path, value)`` of every number in ``node``: ``key`` as OmegaConf.update takes
    it (``topology.devices.4.id``), ``path`` as an error names it (``topology.devices[4].id``)."""
    if isinstance(node, bool):
        return
    if isinstance(node, int | float):
        yield key, path, node
    elif isinstance(node, dict):
        for k, v in node.items():
            yield from numeric_fields(v, f"{key}.{k}" if key else k, f"{path}.{k}" if path else k)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from numeric_fields(v, f"{key}.{i}", f"{path}[{i}]")


def refusals(overrides: list[str]) -> tuple[int, list[str]]:
    """How many hostile settings were tried on the composed config, and those not refused
    with an error naming their field."""
    cfg = compose(overrides)
    tried, missed = 0, []
    for key, path, value in numeric_fields(as_container(cfg)):
        hostile = FLOAT_VALUES if isinstance(value, float) else INT_VALUES
        for bad in hostile:
            if path in SIGNED and bad == -1:
                continue
            tried += 1
            changed = copy.deepcopy(cfg)
            OmegaConf.update(changed, key, bad)
            try:
                build_spec(changed, conf_dir())
            except ConfigError as e:
                if not str(e).startswith(path):
                    missed.append(f"{path}={bad}: names another field: {e}")
            else:
                missed.append(f"{path}={bad}: accepted")
    return tried, missed


@pytest.mark.parametrize(
    "overrides",
    [
        ["+experiment=fl_digits", "fl.training=modelled"],
        ["+experiment=imagenet_yolo"],
        # The same fields over 100 devices rather than 100,000: each hostile value that
        # passes the early checks builds the whole fleet.
        ["+experiment=fl_scale", "topology.generate.devices_per_group=10"],
    ],
    ids=["fl_digits", "imagenet_yolo", "fl_scale"],
)
def test_every_number_is_refused_when_hostile(overrides):
    # Execute
    tried, missed = refusals(overrides)

    # Assert: a sweep of some size, and every hostile value refused by name.
    assert tried > 100
    assert missed == []
