"""Splitting a round's work across its devices so that they finish at about the same time.

Given equal work, the slowest selected device holds the round. :func:`balance_work` instead
hands out the same total in proportion to throughput, so faster devices do more local work and
every device's compute time is about ``total / sum(throughput)``. The coordinator passes
``total = base_steps * len(selected)``: a balanced round does as much work as an unbalanced one
with ``base_steps`` each, and it is never held longer by its slowest device.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from fractions import Fraction
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fedsim.core.scheduling import DeviceView


def balance_work(
    views: Mapping[int, DeviceView] | Sequence[DeviceView], total: int, *, minimum: int = 1
) -> dict[int, int]:
    """Split ``total`` units of work (samples or local steps) among ``views`` by throughput.

    Each device gets at least ``minimum``; a device below that by proportion, or with zero
    throughput, gets exactly ``minimum`` and the rest is shared among the others in proportion
    again. When no device has any throughput there is nothing to be proportional to, and the
    work is split evenly. Shares are rounded by largest remainder (ties to the lower id), so
    they sum to exactly ``total``.

    Raises ``ValueError`` when ``total`` cannot give every device its ``minimum``, or when a
    throughput is negative or not finite.
    """
    items = list(views.values()) if isinstance(views, Mapping) else list(views)
    ids = sorted(v.id for v in items)
    if len(set(ids)) != len(ids):
        raise ValueError("each device may appear only once")
    if minimum < 0:
        raise ValueError(f"minimum must be >= 0, got {minimum}")
    if total < minimum * len(ids):
        raise ValueError(f"cannot give {len(ids)} devices at least {minimum} of {total}")
    if not ids:
        if total:
            raise ValueError(f"no devices to share {total} units of work")
        return {}
    for v in items:
        if not (math.isfinite(v.throughput) and v.throughput >= 0):
            raise ValueError(f"device {v.id}: throughput must be finite and >= 0")

    # Exact fractions: the shares must sum to ``total`` and ties must fall the same way on
    # every platform, which float quotas do not promise.
    weights = {v.id: Fraction(v.throughput) for v in items}
    if not any(weights.values()):
        weights = dict.fromkeys(ids, Fraction(1))
    shares = {d: minimum for d in ids if weights[d] == 0}
    free = [d for d in ids if weights[d] > 0]
    remaining = total - minimum * len(shares)

    # Pin devices whose proportional quota falls below the minimum, then share what is left
    # among the others; each pass pins at least one, and never all, since
    # remaining >= minimum * len(free) throughout.
    while True:
        scale = Fraction(remaining) / sum(weights[d] for d in free)
        quotas = {d: scale * weights[d] for d in free}
        low = [d for d in free if quotas[d] < minimum]
        if not low:
            break
        for d in low:
            shares[d] = minimum
        remaining -= minimum * len(low)
        free = [d for d in free if d not in shares]

    floors = {d: math.floor(quotas[d]) for d in free}
    leftover = remaining - sum(floors.values())
    by_remainder = sorted(free, key=lambda d: (-(quotas[d] - floors[d]), d))
    for d in free:
        shares[d] = floors[d]
    for d in by_remainder[:leftover]:
        shares[d] += 1
    return dict(sorted(shares.items()))
