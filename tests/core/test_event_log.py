"""The event log: events kept, streamed to a sink, or handed to a sink's row as fields."""

from __future__ import annotations

from fedsim.core.events import Event, EventColumns, EventKind, EventLog


class _Rows:
    """A sink that takes events whole and as fields, and keeps what it got."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.rows: list[tuple] = []

    def __call__(self, event: Event) -> None:
        self.events.append(event)

    def row(self, *fields: object) -> None:
        self.rows.append(fields)


def test_add_keeps_an_event_without_a_sink_and_hands_it_to_a_plain_one():
    # Prepare: a log without a sink and one with a sink that takes events only
    kept, plain, got = EventLog(), EventLog(), []
    plain.attach(got.append)

    # Execute
    for log in (kept, plain):
        log.add(3, EventKind.TRAIN, 1.0, 2.5, 0, "r1-d3")

    # Assert: the same Event either way
    expected = Event(device=3, kind=EventKind.TRAIN, start=1.0, end=2.5, task="r1-d3")
    assert kept.events == [expected] and got == [expected] and not plain.events


def test_add_hands_the_fields_to_a_sink_with_a_row_and_record_the_event():
    # Prepare
    log, sink = EventLog(), _Rows()
    log.attach(sink)
    event = Event(device=1, kind=EventKind.MODEL_DOWNLOAD, start=0.0, end=0.5, nbytes=9)

    # Execute
    log.add(2, EventKind.UPDATE_UPLOAD, 1.0, 1.5, 7, "r1-d2")
    log.record(event)

    # Assert: add went to row, record to the sink itself; the log keeps neither
    assert sink.rows == [(2, EventKind.UPDATE_UPLOAD, 1.0, 1.5, 7, "r1-d2")]
    assert sink.events == [event] and not log.events


def test_columns_from_events_and_from_fields_are_the_same():
    # Prepare
    events = [
        Event(device=4, kind=EventKind.TRAIN, start=0.25, end=1.0),
        Event(device=5, kind=EventKind.UPDATE_UPLOAD, start=1.0, end=2.0, nbytes=100),
    ]
    by_field = EventColumns()

    # Execute
    whole = EventColumns(events)
    for e in events:
        by_field.add_row(e.device, e.kind, e.start, e.end, e.nbytes)

    # Assert
    for name in EventColumns.__slots__:
        assert getattr(whole, name) == getattr(by_field, name)
