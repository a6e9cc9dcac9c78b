"""The garbage collector's policy: paused and relaxed blocks, and what they restore."""

from __future__ import annotations

import gc
import weakref

import pytest

from fedsim.core import collector


class _Node:
    """An object that can refer to itself: a cycle only the collector frees."""

    def __init__(self) -> None:
        self.me: _Node | None = None


def _cycle() -> weakref.ref[_Node]:
    node = _Node()
    node.me = node
    return weakref.ref(node)


def test_paused_collects_nothing_and_restores_the_collector() -> None:
    # Prepare
    assert gc.isenabled()

    # Execute
    with collector.paused():
        inside = gc.isenabled()
        dead = _cycle()
        garbage = [[] for _ in range(2 * collector.YOUNG_THRESHOLD)]  # no collection runs
        alive_inside = dead() is not None
        del garbage

    # Assert
    assert not inside and alive_inside and gc.isenabled()
    gc.collect()
    assert dead() is None


def test_paused_leaves_a_disabled_collector_disabled() -> None:
    gc.disable()
    try:
        with collector.paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_relaxed_freezes_what_exists_and_spaces_young_collections() -> None:
    # Prepare
    before = gc.get_threshold()

    # Execute
    with collector.relaxed():
        frozen = gc.get_freeze_count()
        threshold = gc.get_threshold()
        with collector.relaxed():  # nested: the inner block changes nothing
            assert gc.get_threshold() == threshold
        still_frozen = gc.get_freeze_count()

    # Assert
    assert frozen > 0 and still_frozen == frozen
    assert threshold[0] == max(collector.YOUNG_THRESHOLD, before[0])
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0


def test_cycles_made_in_a_relaxed_block_are_still_collected() -> None:
    # Prepare / Execute: cycles made inside, then more allocations than the young threshold.
    with collector.relaxed():
        dead = _cycle()
        keep = [[] for _ in range(2 * collector.YOUNG_THRESHOLD)]
        collected_inside = dead() is None
        del keep

    # Assert: a young collection ran within the block and freed the cycle.
    assert collected_inside


@pytest.mark.parametrize("block", [collector.paused, collector.relaxed])
def test_a_block_that_raises_restores_the_collector(block) -> None:
    before = (gc.isenabled(), gc.get_threshold(), gc.get_freeze_count())

    with pytest.raises(ValueError), block():
        raise ValueError("boom")

    assert (gc.isenabled(), gc.get_threshold(), gc.get_freeze_count()) == before


def test_a_paused_block_inside_a_relaxed_one_freezes_what_it_made() -> None:
    # Prepare / Execute: a cycle made in a paused block within a relaxed one
    with collector.relaxed():
        before = gc.get_freeze_count()
        with collector.paused():
            dead = _cycle()
            kept = [[] for _ in range(1000)]
        frozen = gc.get_freeze_count()
        gc.collect()  # walks no frozen object
        alive_inside = dead() is not None
        del kept

    # Assert: frozen when the paused block ended, kept while the relaxed block ran, and freed
    # by a collection after it
    assert frozen >= before + 1000 and alive_inside
    assert gc.get_freeze_count() == 0
    gc.collect()
    assert dead() is None
