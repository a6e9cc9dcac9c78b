import pytest

from fedsim.core.critical_path import critical_path
from fedsim.core.events import Event
from fedsim.core.events import EventKind as K


def ev(dev, kind, start, end):
    return Event(device=dev, kind=kind, start=start, end=end)


def test_breakdown_follows_the_straggler_and_sums_to_total():
    # Prepare: device 1 finishes early, device 2 is the straggler; the server aggregates after.
    events = [
        ev(1, K.MODEL_DOWNLOAD, 0, 2),
        ev(2, K.MODEL_DOWNLOAD, 0, 2),
        ev(1, K.TRAIN, 2, 5),
        ev(2, K.TRAIN, 2, 7),
        ev(1, K.UPDATE_UPLOAD, 5, 6),
        ev(2, K.UPDATE_UPLOAD, 7, 9),
        ev(0, K.AGGREGATE, 9, 9.5),
        ev(0, K.PUBLISH, 9.5, 10),
    ]
    # Execute
    b = critical_path(events, 0.0, 10.0)
    # Assert: 2 s download + 2 s upload of device 2, its 5 s of training, 1 s on the server.
    assert (b.transfer, b.compute, b.aggregation, b.waiting) == pytest.approx((4, 5, 1, 0))


def test_gaps_count_as_waiting():
    events = [ev(1, K.DATA_UPLOAD, 1, 2), ev(0, K.TRAIN, 3, 5)]
    b = critical_path(events, 0.0, 6.0)
    assert (b.transfer, b.compute, b.waiting) == pytest.approx((1, 2, 3))
    assert b.total == pytest.approx(6.0)
