"""CapTree: items ordered by a per-flow cap, with the sums a water level is computed from.

Each item has a cap c and a weight w (flows). At a level L the items give
sum(w x min(c, L)); ``query(L)`` returns its two parts, sum(w x c) over caps <= L and sum(w)
over caps > L, and the next cap above L, in one descent. It is a treap (a binary search tree
kept balanced by random heap priorities, Seidel and Aragon, Algorithmica 1996) whose nodes hold
their subtree's sums, so inserts, removals, weight changes and queries cost O(log K) expected
for K items, and the items between two caps come out in O(log K + k) for k of them.

Caps are the keys and must be distinct within one tree; sums are recomputed from children on
every change, never adjusted in place, so they do not drift over millions of updates.
setup.py compiles this module with mypyc, with the flow network (see :mod:`fedsim.sim`).
"""

from __future__ import annotations

import math
import random
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class _Node:
    __slots__ = ("cap", "item", "left", "prio", "right", "sw", "swc", "w")

    # Not generic: mypyc (setup.py) compiles this module, and cannot compile a generic node.
    # The tree's own methods give items back as T.
    def __init__(self, cap: float, w: int, item: Any, prio: float):
        self.cap = cap
        self.w = w
        self.item = item
        self.prio = prio
        self.left: _Node | None = None
        self.right: _Node | None = None
        self.sw = w  # flows in the subtree
        self.swc = w * cap  # sum of flows x cap in the subtree


def _pull(node: _Node) -> None:
    sw, swc = node.w, node.w * node.cap
    if node.left is not None:
        sw += node.left.sw
        swc += node.left.swc
    if node.right is not None:
        sw += node.right.sw
        swc += node.right.swc
    node.sw, node.swc = sw, swc


def _pull_up(path: list[_Node]) -> None:
    """:func:`_pull` on each node of a root-to-node path, deepest first, in one loop."""
    for node in reversed(path):
        sw, swc = node.w, node.w * node.cap
        left, right = node.left, node.right
        if left is not None:
            sw += left.sw
            swc += left.swc
        if right is not None:
            sw += right.sw
            swc += right.swc
        node.sw, node.swc = sw, swc


def _split(node: _Node | None, cap: float) -> tuple[_Node | None, _Node | None]:
    """(caps < cap, caps >= cap)."""
    if node is None:
        return None, None
    if node.cap < cap:
        node.right, rest = _split(node.right, cap)
        _pull(node)
        return node, rest
    before, node.left = _split(node.left, cap)
    _pull(node)
    return before, node


def _merge(a: _Node | None, b: _Node | None) -> _Node | None:
    """Join two trees whose caps are all smaller in ``a`` than in ``b``."""
    if a is None:
        return b
    if b is None:
        return a
    if a.prio > b.prio:
        a.right = _merge(a.right, b)
        _pull(a)
        return a
    b.left = _merge(a, b.left)
    _pull(b)
    return b


class CapTree(Generic[T]):
    """Items keyed by distinct caps, each with a weight; see the module docstring."""

    __slots__ = ("_random", "_root", "size")

    def __init__(self, seed: int = 0):
        self._root: _Node | None = None
        # Seeded: the tree's shape decides the order of float sums, and runs must repeat.
        self._random = random.Random(seed)
        self.size = 0

    def insert(self, cap: float, weight: int, item: T) -> None:
        """Add ``item`` at ``cap`` (no other item may have that cap) with ``weight`` flows."""
        node = _Node(cap, weight, item, self._random.random())
        # Walk down to where the new node's priority puts it, and split only what is below: a
        # subtree of expected O(1) size there, rather than the whole tree.
        path: list[_Node] = []
        below = self._root
        while below is not None and below.prio > node.prio:
            if cap == below.cap:
                raise ValueError(f"cap {cap} is already in the tree")
            path.append(below)
            below = below.left if cap < below.cap else below.right
        node.left, node.right = _split(below, cap)
        if node.right is not None and _leftmost(node.right).cap == cap:
            raise ValueError(f"cap {cap} is already in the tree")
        _pull(node)
        if not path:
            self._root = node
        elif cap < path[-1].cap:
            path[-1].left = node
        else:
            path[-1].right = node
        _pull_up(path)
        self.size += 1

    def _path(self, cap: float) -> list[_Node]:
        path = []
        node = self._root
        while node is not None:
            path.append(node)
            if cap == node.cap:
                return path
            node = node.left if cap < node.cap else node.right
        raise KeyError(cap)

    def set_weight(self, cap: float, weight: int) -> None:
        """Change the weight of the item at ``cap``."""
        path = self._path(cap)
        path[-1].w = weight
        _pull_up(path)

    def remove(self, cap: float) -> None:
        """Drop the item at ``cap``."""
        path = self._path(cap)
        node = path.pop()
        joined = _merge(node.left, node.right)
        if not path:
            self._root = joined
        elif path[-1].left is node:
            path[-1].left = joined
        else:
            path[-1].right = joined
        _pull_up(path)
        self.size -= 1

    def query(self, level: float) -> tuple[float, int, float]:
        """(sum of w x c over caps <= level, sum of w over caps > level, smallest cap > level)."""
        below, above, after = 0.0, 0, math.inf
        node = self._root
        while node is not None:
            if node.cap <= level:
                below += node.w * node.cap
                if node.left is not None:
                    below += node.left.swc
                node = node.right
            else:
                above += node.w
                if node.right is not None:
                    above += node.right.sw
                after = node.cap
                node = node.left
        return below, above, after

    def between(self, low: float, high: float) -> list[T]:
        """Items with low <= cap < high, in increasing cap order."""
        found: list[T] = []
        stack: list[_Node] = []
        node = self._root
        while stack or node is not None:
            while node is not None:
                stack.append(node)
                node = node.left if node.cap >= low else None
            node = stack.pop()
            if node.cap >= high:
                break
            if node.cap >= low:
                found.append(node.item)
            node = node.right
        return found


def _leftmost(node: _Node) -> _Node:
    while node.left is not None:
        node = node.left
    return node
