"""What the sim runtime relies on in SimPy's event loop: an object with ``callbacks`` and
``_ok``, scheduled with ``Environment.schedule``, is processed as an event (flows, the
network's wake-ups and training task runs wait in the queue so, with no Timeout made)."""

from __future__ import annotations

import simpy
from simpy.events import NORMAL


class _Own:
    """The least an object needs to be processed as an event."""

    def __init__(self, callbacks: list) -> None:
        self.callbacks = callbacks
        self._ok = True


def test_an_object_with_callbacks_and_ok_is_processed_in_its_place_among_timeouts():
    # Prepare: a timeout, the object and another timeout, all due at the same time, and a
    # second object sharing the first one's list of callbacks
    env = simpy.Environment()
    seen: list[tuple[str, float]] = []
    env.timeout(1.0).callbacks.append(lambda _: seen.append(("before", env.now)))
    shared = [lambda event: seen.append((event.name, env.now))]
    first, second = _Own(shared), _Own(shared)
    first.name, second.name = "first", "second"
    env.schedule(first, NORMAL, 1.0)
    env.timeout(1.0).callbacks.append(lambda _: seen.append(("after", env.now)))
    env.schedule(second, NORMAL, 2.5)

    # Execute
    env.run()

    # Assert: each called back once at its time, in the order scheduled; the shared list is
    # left as it was, and each object's own reference to it is gone
    assert seen == [("before", 1.0), ("first", 1.0), ("after", 1.0), ("second", 2.5)]
    assert len(shared) == 1 and first.callbacks is None and second.callbacks is None
