"""Outages in real mode: a device's agent process is stopped at the outage's start and started
again at its end, as the simulator makes the device unreachable for that time.

The agent is stopped with SIGKILL, not SIGTERM: an outage is a device that loses power or its
network, which gets no chance to finish an upload or report an error; SIGTERM would let the
agent end its requests in order. What the device had taken is lost with it, and what was
posted for it while it was down never reached it: both are taken off the task board when it
comes back (no result, no error: the round's deadline covers them, as in the simulator). The
restarted agent registers again with the token in its state directory and takes new tasks.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from fedsim.core.faults import Outage

if TYPE_CHECKING:
    from fedsim.real.launch import LocalCluster

log = logging.getLogger(__name__)


class OutageDriver:
    """Carries out ``outages`` on ``cluster``'s agents while it is entered (a ``with`` block).

    ``clock`` is the run's clock in seconds, the one the outages are written in: the
    transport's ``now`` (seconds since the transport started). A thread wakes at each outage's
    start and end; agents still down when the block ends stay down (the cluster stops them all).
    """

    def __init__(
        self,
        cluster: LocalCluster,
        outages: Sequence[Outage],
        clock: Callable[[], float],
    ) -> None:
        unknown = sorted({o.device for o in outages} - set(cluster.clients))
        if unknown:
            raise ValueError(f"outages of devices {unknown}, which run no agent in this cluster")
        self.cluster = cluster
        self.outages = tuple(outages)
        self.clock = clock
        self.down: set[int] = set()  # devices this driver has stopped and not started again
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fedsim-outages", daemon=True)
        self._error: BaseException | None = None

    def __enter__(self) -> OutageDriver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        if self._error is not None and exc[0] is None:
            raise RuntimeError(f"the outage driver failed: {self._error}") from self._error

    def offline(self, device: int, at: float) -> bool:
        """Whether ``device`` is to be down at ``at`` (seconds of the clock)."""
        return any(o.device == device and o.start <= at < o.end for o in self.outages)

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                now = self.clock()
                for dev in sorted({o.device for o in self.outages}):
                    if self.offline(dev, now) and dev not in self.down:
                        self._take_down(dev, now)
                    elif not self.offline(dev, now) and dev in self.down:
                        self._bring_up(dev, now)
                later = [t for o in self.outages for t in (o.start, o.end) if t > now]
                if not later:
                    return
                self._stop.wait(min(later) - now)
        except BaseException as e:  # reported when the block ends
            log.exception("the outage driver failed")
            self._error = e

    def _take_down(self, dev: int, now: float) -> None:
        log.info("outage: device %d goes down at %.2f s", dev, now)
        self.cluster.stop_agent(dev, kill=True)
        self.down.add(dev)

    def _bring_up(self, dev: int, now: float) -> None:
        lost = self.cluster.board.abandon(dev)
        log.info("outage: device %d comes back at %.2f s; %d tasks lost", dev, now, len(lost))
        self.cluster.start_agent(dev)
        self.down.discard(dev)
