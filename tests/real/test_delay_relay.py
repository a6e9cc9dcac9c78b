"""The latency relay's timer: sleeps that end on time on average, whatever the loop's lateness."""

from __future__ import annotations

import asyncio
import selectors

import pytest

from fedsim.real import delay_relay
from fedsim.real.delay_relay import SELECT_ROUTES_MAX, Timer


class FakeLoop:
    """A loop clock that a patched ``asyncio.sleep`` advances: by the wait, plus ``late``."""

    def __init__(self, late: float) -> None:
        self.now = 100.0
        self.late = late
        self.slept: list[float] = []

    def time(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds + self.late


def wake_ups(timer: Timer, loop: FakeLoop, delay: float, n: int) -> list[float]:
    """How far from its due time each of ``n`` releases lands (the horizon's view: what the
    relay sends at a wake-up is what is due by ``horizon(now)``)."""

    async def run() -> list[float]:
        errors = []
        for _ in range(n):
            due = loop.now + delay
            await timer.sleep_until(loop, due)  # type: ignore[arg-type]
            errors.append(loop.now - due)
            assert timer.horizon(loop.now) >= due or loop.now >= due
        return errors

    return asyncio.run(run())


def test_the_timer_learns_the_loops_lateness_and_wakes_on_time(monkeypatch):
    # Prepare: a loop whose every wake-up is 0.8 ms late (an epoll wait rounded up).
    loop = FakeLoop(late=0.0008)
    monkeypatch.setattr(delay_relay.asyncio, "sleep", loop.sleep)
    timer = Timer()
    # Execute: a hundred 6.25 ms holds.
    errors = wake_ups(timer, loop, 0.00625, 100)
    # Assert: the first wake-up is as late as the loop; the lead then converges on that
    # lateness, and later wake-ups land on their due time.
    assert errors[0] == pytest.approx(0.0008)
    assert timer.lead == pytest.approx(0.0008, rel=1e-3)
    assert max(abs(e) for e in errors[60:]) < 1e-5  # from 800 us late to under 10 us
    assert loop.slept[-1] == pytest.approx(0.00625 - 0.0008, rel=1e-3)


def test_a_punctual_loop_gets_no_lead_and_a_stalled_one_a_bounded_lead(monkeypatch):
    # Prepare: a loop on time, then one stalled for 50 ms at each wake-up (a loaded host).
    punctual = FakeLoop(late=0.0)
    monkeypatch.setattr(delay_relay.asyncio, "sleep", punctual.sleep)
    on_time = Timer()
    # Execute
    errors = wake_ups(on_time, punctual, 0.005, 20)
    stalled = FakeLoop(late=0.05)
    monkeypatch.setattr(delay_relay.asyncio, "sleep", stalled.sleep)
    bounded = Timer()
    wake_ups(bounded, stalled, 0.005, 100)
    # Assert: no lead where nothing is late; a stall counts only up to LEAD_MAX_S, so a
    # loaded host never makes the relay send bytes early by more than that.
    assert on_time.lead == 0.0 and errors == [0.0] * 20
    assert bounded.lead == pytest.approx(Timer.LEAD_MAX_S, rel=1e-3)


def test_what_is_already_due_is_not_slept_for(monkeypatch):
    # Prepare
    loop = FakeLoop(late=0.001)
    monkeypatch.setattr(delay_relay.asyncio, "sleep", loop.sleep)
    timer = Timer()
    # Execute: a due time already past
    asyncio.run(timer.sleep_until(loop, loop.now - 0.01))  # type: ignore[arg-type]
    # Assert
    assert loop.slept == []


def test_the_relay_waits_in_select_unless_it_has_many_routes():
    # Execute
    few, many = delay_relay._loop(SELECT_ROUTES_MAX), delay_relay._loop(SELECT_ROUTES_MAX + 1)
    try:
        # Assert: select(2)'s microsecond timeouts for a few routes; the default selector
        # past what select(2) can hold.
        assert isinstance(few._selector, selectors.SelectSelector)  # type: ignore[attr-defined]
        assert not isinstance(many._selector, selectors.SelectSelector)  # type: ignore[attr-defined]
    finally:
        few.close()
        many.close()
