"""CPython's cyclic garbage collector, held back while fedsim builds or simulates a large fleet.

The collector runs after every few hundred net allocations, and every so often walks every
object that has survived earlier runs. A fleet of a million devices is tens of millions of
long-lived objects (its devices and links, each device's task and view), none of them garbage,
and most of what a simulation allocates meanwhile is freed by reference counting, as it forms
no cycles. So the collector found next to nothing (4,363 objects in a 100,000-device round)
while it took 28 % of building a 300,000-device fleet and 14 % of simulating its round
(benchmarks/bench_scale.py, 2026-11-30).

- :func:`paused`: no collection at all inside the block, for code that makes no cycles (the
  fleet's construction, the simulation's event loop). A cycle something else makes meanwhile
  waits for the collector's next run after the block. Inside a :func:`relaxed` block, what
  exists when a paused block ends is frozen too: a round of a million devices leaves millions
  of live objects (its tasks, results and updates) that the next young collection would
  otherwise walk, and then the older generations again (about 3 % of such a round's time);
  a cycle made inside then waits for the relaxed block's end.
- :func:`relaxed`: what exists when the block begins is frozen (``gc.freeze``: never walked
  again until the block ends), and the young generation is collected every
  :data:`YOUNG_THRESHOLD` allocations rather than 700: cycles are still collected, in bigger
  batches. A sim session runs in one.

Both nest, and restore the collector's state as they found it.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

# Net allocations between two collections of the young generation inside relaxed().
YOUNG_THRESHOLD = 100_000

_lock = threading.Lock()
_relaxed = 0  # relaxed() blocks open, in any thread


@contextmanager
def paused() -> Iterator[None]:
    """No cyclic garbage collection inside the block."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        with _lock:
            if _relaxed:
                gc.freeze()  # relaxed()'s outermost block unfreezes
        if enabled:
            gc.enable()


@contextmanager
def relaxed() -> Iterator[None]:
    """What exists now frozen, and young collections :data:`YOUNG_THRESHOLD` apart, inside the
    block; the outermost block undoes both."""
    global _relaxed
    with _lock:
        outermost = _relaxed == 0
        _relaxed += 1
        if outermost:
            thresholds = gc.get_threshold()
            gc.freeze()
            gc.set_threshold(max(YOUNG_THRESHOLD, thresholds[0]), *thresholds[1:])
    try:
        yield
    finally:
        with _lock:
            _relaxed -= 1
            if outermost:
                gc.set_threshold(*thresholds)
                gc.unfreeze()
