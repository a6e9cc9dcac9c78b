"""The run's event log: every transfer and compute step, with device, kind, times and bytes."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class EventKind(str, Enum):
    """What a step of work was. The values are what tables and plots show."""

    DATA_UPLOAD = "data_upload"  # a device ships its training data to the cloud
    MODEL_DOWNLOAD = "model_download"  # the server deploys a model version to a device
    UPDATE_UPLOAD = "update_upload"  # a device returns its trained update
    TRAIN = "train"  # local (or cloud) training
    AGGREGATE = "aggregate"  # the server combines updates
    PUBLISH = "publish"  # the server stores the new version
    EVALUATE = "evaluate"  # the server evaluates a new version on held-out data

    @property
    def is_transfer(self) -> bool:
        return self in (EventKind.DATA_UPLOAD, EventKind.MODEL_DOWNLOAD, EventKind.UPDATE_UPLOAD)


@dataclass(frozen=True, kw_only=True, slots=True)
class Event:
    """One step of work on one device, in seconds since the scenario started."""

    device: int
    kind: EventKind
    start: float
    end: float
    nbytes: int = 0
    task: str = ""

    @property
    def duration(self) -> float:
        return self.end - self.start


@dataclass
class EventLog:
    """An append-only list of events; runtimes write it, reports read it."""

    events: list[Event] = field(default_factory=list)

    def record(self, event: Event) -> None:
        self.events.append(event)

    def __iter__(self):
        return iter(self.events)

    def __len__(self) -> int:
        return len(self.events)
