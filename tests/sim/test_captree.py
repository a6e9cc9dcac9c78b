"""CapTree: its sums, next caps and ranges equal a plain scan after random changes."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedsim.sim.captree import CapTree


def _scan(items: dict[float, int], level: float) -> tuple[float, int, float]:
    below = sum(w * c for c, w in items.items() if c <= level)
    above = sum(w for c, w in items.items() if c > level)
    after = min((c for c in items if c > level), default=math.inf)
    return below, above, after


@pytest.mark.parametrize("seed", range(5))
def test_queries_match_a_scan_after_random_changes(seed: int) -> None:
    # Prepare
    rng = np.random.default_rng(seed)
    tree: CapTree[float] = CapTree(seed)
    items: dict[float, int] = {}

    for _ in range(600):
        # Execute: insert, reweight or remove at random, with an infinite cap now and then.
        action = rng.random()
        if action < 0.5 or not items:
            cap = math.inf if rng.random() < 0.02 else float(rng.integers(1, 400)) / 4
            if cap in items:
                continue
            items[cap] = int(rng.integers(1, 5))
            tree.insert(cap, items[cap], cap)
        elif action < 0.75:
            cap = list(items)[int(rng.integers(len(items)))]
            items[cap] = int(rng.integers(1, 5))
            tree.set_weight(cap, items[cap])
        else:
            cap = list(items)[int(rng.integers(len(items)))]
            del items[cap]
            tree.remove(cap)
        level = float(rng.uniform(0, 110))
        low, high = sorted(rng.uniform(0, 110, 2))

        # Assert
        below, above, after = tree.query(level)
        expected = _scan(items, level)
        assert below == pytest.approx(expected[0], rel=1e-12)
        assert (above, after) == expected[1:]
        assert tree.between(low, high) == sorted(c for c in items if low <= c < high)
        assert tree.size == len(items)


def test_a_cap_twice_and_an_unknown_cap_are_refused() -> None:
    # Prepare
    tree: CapTree[str] = CapTree()
    tree.insert(1.0, 1, "a")

    # Execute / Assert
    with pytest.raises(ValueError, match="already"):
        tree.insert(1.0, 2, "b")
    with pytest.raises(KeyError):
        tree.remove(2.0)
    with pytest.raises(KeyError):
        tree.set_weight(2.0, 1)
