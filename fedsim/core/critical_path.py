"""Split a scenario's time into transfer, compute, aggregation and waiting.

Walks back from the last event: at each point the step that ended last (preferring the device
the walk is on) is the one the rest waited for; a gap with no step running is waiting. The four
parts add up to the scenario's total time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from fedsim.core.events import Event, EventKind

_EPS = 1e-9


@dataclass(frozen=True)
class Breakdown:
    transfer: float
    compute: float
    aggregation: float
    waiting: float

    @property
    def total(self) -> float:
        return self.transfer + self.compute + self.aggregation + self.waiting


def _category(kind: EventKind) -> str:
    if kind.is_transfer:
        return "transfer"
    if kind in (EventKind.AGGREGATE, EventKind.PUBLISH):
        return "aggregation"
    return "compute"


def critical_path(events: Sequence[Event], start: float, end: float) -> Breakdown:
    """The breakdown of ``[start, end]`` along the chain of steps that determined ``end``."""
    parts = {"transfer": 0.0, "compute": 0.0, "aggregation": 0.0, "waiting": 0.0}
    pending = sorted(events, key=lambda e: e.end)
    cursor, device = end, None
    while cursor > start + _EPS:
        candidates = [e for e in pending if e.end <= cursor + _EPS and e.start < cursor - _EPS]
        if not candidates:
            parts["waiting"] += cursor - start
            break
        latest = max(e.end for e in candidates)
        at_latest = [e for e in candidates if e.end >= latest - _EPS]
        step = next((e for e in at_latest if e.device == device), at_latest[-1])
        step_end = min(step.end, cursor)
        parts["waiting"] += cursor - step_end
        begin = max(step.start, start)
        parts[_category(step.kind)] += step_end - begin
        cursor, device = begin, step.device
        pending.remove(step)
    return Breakdown(**parts)
