"""The run's event log: every transfer and compute step, with device, kind, times and bytes."""

from __future__ import annotations

from array import array
from collections.abc import Callable, Iterable
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
    # Secure aggregation's own message rounds (keys, shares, unmasking) and its compute
    # (key agreement, secret sharing, masks) on a device or, unmasking, on the server.
    SECAGG_DOWNLOAD = "secagg_download"
    SECAGG_UPLOAD = "secagg_upload"
    SECAGG = "secagg"

    @property
    def is_transfer(self) -> bool:
        return self in _TRANSFERS


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


# The file in a run's directory that holds its events, a row each (report.write's columns);
# named here, below both the writer and the server that serves a job's log.
EVENTS_FILE = "events.csv"
_TRANSFERS = frozenset(
    {
        EventKind.DATA_UPLOAD,
        EventKind.MODEL_DOWNLOAD,
        EventKind.UPDATE_UPLOAD,
        EventKind.SECAGG_DOWNLOAD,
        EventKind.SECAGG_UPLOAD,
    }
)

# The kinds in a fixed order: EventColumns stores a kind as its index here.
KINDS: tuple[EventKind, ...] = tuple(EventKind)
_KIND_INDEX = {kind: i for i, kind in enumerate(KINDS)}


# An event as the fields an Event is made of (device, kind, start, end, nbytes, task): what a
# sink with a ``row`` method takes from EventLog.add, with no Event made.
Row = Callable[[int, EventKind, float, float, int, str], None]


@dataclass
class EventLog:
    """An append-only list of events; runtimes write it, reports read it.

    With a ``sink`` (:meth:`attach`), each event goes to it as it is recorded and none is kept
    in ``events``: a run of millions of steps streams its log to disk rather than holding it.
    """

    events: list[Event] = field(default_factory=list)
    # The sink and its row method (if it has one) are set together, by attach() only.
    _sink: Callable[[Event], None] | None = field(default=None, init=False, repr=False)
    _row: Row | None = field(default=None, init=False, repr=False)

    def attach(self, sink: Callable[[Event], None]) -> None:
        """Send every event to ``sink`` from now on. A sink with a ``row`` method, which takes
        an event's fields (:data:`Row`), gets those :meth:`add` records that way."""
        self._sink = sink
        self._row = getattr(sink, "row", None)

    def record(self, event: Event) -> None:
        if self._sink is None:
            self.events.append(event)
        else:
            self._sink(event)

    def add(
        self,
        device: int,
        kind: EventKind,
        start: float,
        end: float,
        nbytes: int = 0,
        task: str = "",
    ) -> None:
        """``record(Event(...))``, for a runtime's steps by the million: a sink with a ``row``
        method takes the fields, and no Event is made (a frozen dataclass costs about 0.6 us
        to make)."""
        if self._row is not None:
            self._row(device, kind, start, end, nbytes, task)
        else:
            self.record(
                Event(device=device, kind=kind, start=start, end=end, nbytes=nbytes, task=task)
            )

    def __iter__(self):
        return iter(self.events)

    def __len__(self) -> int:
        return len(self.events)


class EventColumns:
    """Events as columns of numbers, about 33 bytes each where an :class:`Event` takes ~150:
    what a round's time split needs (device, kind, start, end, bytes), without the task."""

    __slots__ = ("device", "end", "kind", "nbytes", "start")

    def __init__(self, events: Iterable[Event] = ()) -> None:
        self.device = array("q")
        self.kind = array("B")
        self.start = array("d")
        self.end = array("d")
        self.nbytes = array("q")
        for event in events:
            self.add(event)

    def add(self, event: Event) -> None:
        self.add_row(event.device, event.kind, event.start, event.end, event.nbytes)

    def add_row(self, device: int, kind: EventKind, start: float, end: float, nbytes: int) -> None:
        """:meth:`add` of an event given by its fields."""
        self.device.append(device)
        self.kind.append(_KIND_INDEX[kind])
        self.start.append(start)
        self.end.append(end)
        self.nbytes.append(nbytes)

    def clear(self) -> None:
        for name in self.__slots__:
            setattr(self, name, array(getattr(self, name).typecode))

    def __len__(self) -> int:
        return len(self.end)
