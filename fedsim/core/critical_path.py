"""Split a scenario's time into transfer, compute, aggregation and waiting.

Walks back from the last event: at each point the step that ended last (preferring the device
the walk is on) is the one the rest waited for; a gap with no step running is waiting. The four
parts add up to the scenario's total time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fedsim.core.events import KINDS, Event, EventColumns, EventKind

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


_CATEGORY = [_category(kind) for kind in KINDS]  # by EventColumns' kind index


def critical_path(events: Sequence[Event] | EventColumns, start: float, end: float) -> Breakdown:
    """The breakdown of ``[start, end]`` along the chain of steps that determined ``end``.

    The walk runs over columns (numpy), so that a round of millions of events costs a few
    passes over arrays per step of the chain, not a list of objects per step.
    """
    cols = events if isinstance(events, EventColumns) else EventColumns(events)
    ends = np.frombuffer(cols.end, dtype=np.float64) if len(cols) else np.empty(0)
    # Stable: among equal ends the order of recording decides, as a stable sort of the log.
    order = np.argsort(ends, kind="stable")
    ends = ends[order]
    starts = np.frombuffer(cols.start, dtype=np.float64)[order] if len(cols) else ends
    devices = np.frombuffer(cols.device, dtype=np.int64)[order] if len(cols) else order
    kinds = np.frombuffer(cols.kind, dtype=np.uint8)[order] if len(cols) else order
    pending = np.ones(len(ends), dtype=bool)
    parts = {"transfer": 0.0, "compute": 0.0, "aggregation": 0.0, "waiting": 0.0}
    cursor, device = end, None
    while cursor > start + _EPS:
        # Steps that ended by the cursor (a prefix of the sorted ends) and began before it.
        upto = int(np.searchsorted(ends, cursor + _EPS, side="right"))
        candidates = np.flatnonzero(pending[:upto] & (starts[:upto] < cursor - _EPS))
        if not candidates.size:
            parts["waiting"] += cursor - start
            break
        latest = ends[candidates[-1]]
        at_latest = candidates[ends[candidates] >= latest - _EPS]
        on_device = at_latest[devices[at_latest] == device] if device is not None else at_latest[:0]
        step = int(on_device[0] if on_device.size else at_latest[-1])
        step_end = min(float(ends[step]), cursor)
        parts["waiting"] += cursor - step_end
        begin = max(float(starts[step]), start)
        parts[_CATEGORY[int(kinds[step])]] += step_end - begin
        cursor, device = begin, int(devices[step])
        pending[step] = False
    return Breakdown(**parts)
