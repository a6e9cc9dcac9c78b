"""The Device Manager's registry: which devices exist, their state, and their last resources.

A device's life is an explicit state machine, ``TRANSITIONS[state][event] -> new state``::

    registered --heartbeat--> online --assign--> busy --release--> online
    registered | online | busy --timeout (silent for > patience)--> offline --heartbeat--> online
    any state but removed --remove--> removed  (final)

An event a state does not list raises ``InvalidTransition``.

Decisions, so that a REST layer can map them to status codes without guessing:

- Ids are never reused. A removed device keeps its record (``removed_at`` set) so history stays
  readable, and every later write to its id (heartbeat, set_busy, remove, register) raises
  ``DeviceRemoved``: a device that was removed must register under a new id.
- Registering an id that exists and is not removed is an idempotent declaration (PUT): the
  descriptive fields (description, id_in_group, profile, labels) are replaced by what was sent;
  state, timestamps and resources are kept. Moving a device to another group that way raises
  ``RegistrationConflict``: a group is where the device sits in the network, so a move is a
  removal and a new registration.
- ``id_in_group``, when given, is unique among the group's devices that are not removed.
- Liveness is derived lazily: ``sweep`` moves silent devices offline, and ``get``/``list`` sweep
  what they return, so a read never shows a device online that has been silent for longer than
  ``patience``. A registered device that never sends a heartbeat goes offline the same way,
  counting from its registration.
- Heartbeat resources are merged key by key, so each key holds the last value reported for it
  (a bandwidth probe may report less often than CPU load does).
- A device's measured hardware profile (``report_profile``: what its agent timed, the fields of
  a ``kind: measured`` hardware profile) is kept beside its record: each report replaces the
  figures, and its step models (of training, ``steps``, and of evaluation, ``eval_steps``) join
  those of other models reported earlier (a step model per model, each the latest; a report
  without evaluation step models keeps the earlier ones). An operator asks for a new
  measurement with ``request_calibration``; the request stays on the record, where the agent
  sees it, until a report brings a step model of the model asked for (any model, when the
  request named none). An agent that cannot measure it says why (``fail_calibration``, naming
  the request by its ``requested_at``): the request stays on the record marked failed, with
  the reason, until a new request replaces it or a report of the model asked for clears it. A
  failure reported for another request than the current one raises ``StaleCalibration``.
- Timestamps come from the injected ``clock``, by default ``time.time``: wall-clock seconds
  survive a restart of the server, which monotonic time would not.

The registry keeps every record in memory and writes each change through to a
``RegistryStore``; it is the only writer of its store. A lock makes it safe to call from several
threads (an event loop and its executors).
"""

from __future__ import annotations

import builtins
import json
import math
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any

from fedsim.core.limits import MAX_FIGURE, MAX_ID

# A measured profile's step models, by model: a report adds to those reported before.
MERGED_STEPS = ("steps", "eval_steps")


class DeviceState(str, Enum):
    """Where a device is in its life; the values are what the REST API shows."""

    REGISTERED = "registered"  # known, but has not sent a heartbeat yet
    ONLINE = "online"  # heartbeating and free for work
    BUSY = "busy"  # heartbeating and assigned work
    OFFLINE = "offline"  # silent for longer than the registry's patience
    REMOVED = "removed"  # deleted by an operator; final


class DeviceEvent(str, Enum):
    """What happens to a device; each registry call that changes state is one event."""

    HEARTBEAT = "heartbeat"  # heartbeat()
    ASSIGN = "assign"  # set_busy(id, True): work assigned
    RELEASE = "release"  # set_busy(id, False): work done
    TIMEOUT = "timeout"  # silent for longer than patience (sweep, or a read)
    REMOVE = "remove"  # remove()


_S, _E = DeviceState, DeviceEvent
TRANSITIONS: dict[DeviceState, dict[DeviceEvent, DeviceState]] = {
    # Registration counts as a sign of life, so a device that never heartbeats times out too.
    _S.REGISTERED: {_E.HEARTBEAT: _S.ONLINE, _E.TIMEOUT: _S.OFFLINE, _E.REMOVE: _S.REMOVED},
    _S.ONLINE: {
        _E.HEARTBEAT: _S.ONLINE,
        _E.ASSIGN: _S.BUSY,
        _E.TIMEOUT: _S.OFFLINE,
        _E.REMOVE: _S.REMOVED,
    },
    # A busy device that falls silent loses its work: whoever assigned it must reassign.
    _S.BUSY: {
        _E.HEARTBEAT: _S.BUSY,
        _E.RELEASE: _S.ONLINE,
        _E.TIMEOUT: _S.OFFLINE,
        _E.REMOVE: _S.REMOVED,
    },
    _S.OFFLINE: {_E.HEARTBEAT: _S.ONLINE, _E.REMOVE: _S.REMOVED},
    _S.REMOVED: {},
}


class RegistryError(Exception):
    """Base of the registry's errors; the message names the device and what was refused."""


class UnknownDevice(RegistryError, LookupError):
    """No device was ever registered under this id."""


class DeviceRemoved(RegistryError):
    """The device was removed; its id is retired and cannot heartbeat or register again."""


class InvalidTransition(RegistryError):
    """The device's current state does not allow the event."""

    def __init__(self, device: int, state: DeviceState, event: DeviceEvent) -> None:
        super().__init__(f"device {device}: cannot {event.value} while {state.value}")
        self.device = device
        self.state = state
        self.event = event


class RegistrationConflict(RegistryError):
    """A registration contradicts a device already registered (group, or id in group)."""


class StaleCalibration(RegistryError):
    """A calibration failure reported for a request that is not the device's current one."""


@dataclass(frozen=True, kw_only=True)
class CalibrationRequest:
    """An operator's request that the device measure itself again, for ``model`` (None: the
    agent's own choice). ``failed_at`` and ``reason`` are set when the agent reported that it
    could not (None while the request is pending)."""

    model: str | None = None
    requested_at: float
    failed_at: float | None = None
    reason: str | None = None


@dataclass(frozen=True, kw_only=True)
class DeviceRecord:
    """One device as the registry knows it. Times are ``clock`` seconds.

    ``last_seen`` is None until the first heartbeat; ``removed_at`` is None unless removed.
    Records handed out are copies: changing one changes nothing in the registry.
    """

    id: int
    description: str = ""
    group: int = 0
    id_in_group: int | None = None
    profile: str = ""  # a hardware profile name, or free text
    labels: dict[str, str] = field(default_factory=dict)
    state: DeviceState = DeviceState.REGISTERED
    registered_at: float
    last_seen: float | None = None
    resources: dict[str, float] = field(default_factory=dict)
    removed_at: float | None = None
    # The measured hardware profile the device last reported (JSON; the fields of a
    # ``kind: measured`` profile), when it was reported, and a request for a new one.
    measured: dict[str, Any] | None = None
    measured_at: float | None = None
    calibration_request: CalibrationRequest | None = None

    @property
    def last_alive(self) -> float:
        """The last sign of life: the last heartbeat, or the registration before any."""
        return self.registered_at if self.last_seen is None else self.last_seen

    def copy(self) -> DeviceRecord:
        measured = None if self.measured is None else json.loads(json.dumps(self.measured))
        return replace(
            self, labels=dict(self.labels), resources=dict(self.resources), measured=measured
        )


class RegistryStore(ABC):
    """Persistence for device records. The registry is its only writer."""

    @abstractmethod
    def load_all(self) -> list[DeviceRecord]:
        """Every record ever saved, removed ones included, in id order."""

    @abstractmethod
    def save(self, record: DeviceRecord, *, durable: bool = True) -> None:
        """Insert or replace the record with ``record.id``.

        ``durable=False`` marks a change that may be lost in a power failure because a newer
        one will follow (a heartbeat); a store may then skip flushing to disk.
        """

    def save_many(self, records: Iterable[DeviceRecord], *, durable: bool = True) -> None:
        """Save several records; a store overrides this to do it in one transaction."""
        for record in records:
            self.save(record, durable=durable)

    @abstractmethod
    def close(self) -> None:
        """Release what the store holds open."""


class MemoryRegistryStore(RegistryStore):
    """A store that forgets everything when the process ends: for tests and simulations."""

    def __init__(self) -> None:
        self._records: dict[int, DeviceRecord] = {}

    def load_all(self) -> list[DeviceRecord]:
        return [self._records[i].copy() for i in sorted(self._records)]

    def save(self, record: DeviceRecord, *, durable: bool = True) -> None:
        self._records[record.id] = record.copy()

    def close(self) -> None:
        pass  # nothing is held open


class DeviceRegistry:
    """Registers devices, tracks their liveness from heartbeats, and hands out their state."""

    def __init__(
        self,
        store: RegistryStore,
        *,
        patience: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not patience > 0:
            raise ValueError(f"patience must be > 0 seconds, got {patience}")
        self._store = store
        self._patience = patience
        self._clock = clock
        self._lock = threading.RLock()
        self._records = {r.id: r for r in store.load_all()}
        # Removed records stay in the store, so ids handed out before a restart stay retired.
        # Ids past MAX_ID come only from a store written before that bound; they are skipped.
        self._next_id = max((i for i in self._records if i <= MAX_ID), default=-1) + 1
        self._lowest_free = 0  # no id below it is free; where the search for a gap starts

    @property
    def patience(self) -> float:
        return self._patience

    def register(
        self,
        *,
        id: int | None = None,
        description: str = "",
        group: int = 0,
        id_in_group: int | None = None,
        profile: str = "",
        labels: Mapping[str, str] | None = None,
    ) -> DeviceRecord:
        """Register a device, or declare an existing one anew; ``id=None`` assigns a fresh id.

        Ids are within [0, :data:`~fedsim.core.limits.MAX_ID`]. A fresh id follows the highest
        one; once an id was chosen at the top of the range, it is the lowest id never used, so
        registering without an id keeps working whatever ids clients chose.

        Raises ``DeviceRemoved`` for a retired id, ``RegistrationConflict`` for a change of group
        or an ``id_in_group`` taken in the group, ``ValueError`` for malformed fields.
        """
        labels = _check_labels(labels)
        if not isinstance(description, str) or not isinstance(profile, str):
            raise ValueError("description and profile must be strings")
        if id is not None and (not _is_int(id) or not 0 <= id <= MAX_ID):
            raise ValueError(f"device id must be an integer in [0, {MAX_ID}], got {id!r}")
        if not _is_int(group):
            raise ValueError(f"group must be an integer, got {group!r}")
        if id_in_group is not None and (not _is_int(id_in_group) or id_in_group < 0):
            raise ValueError(f"id_in_group must be an integer >= 0, got {id_in_group!r}")
        with self._lock:
            new_id = self._fresh_id() if id is None else id
            old = self._records.get(new_id)
            if old is not None and old.state is _S.REMOVED:
                raise DeviceRemoved(f"device {new_id} was removed; ids are not reused")
            if old is not None and old.group != group:
                raise RegistrationConflict(
                    f"device {new_id} is registered in group {old.group}, not {group}; "
                    "remove it and register a new device to move it"
                )
            if id_in_group is not None:
                self._check_id_in_group(new_id, group, id_in_group)
            if old is None:
                record = DeviceRecord(
                    id=new_id,
                    group=group,
                    description=description,
                    id_in_group=id_in_group,
                    profile=profile,
                    labels=labels,
                    registered_at=self._clock(),
                )
            else:
                record = replace(
                    old,
                    description=description,
                    id_in_group=id_in_group,
                    profile=profile,
                    labels=labels,
                )
            self._put(record)
            self._next_id = max(self._next_id, new_id + 1)
            return record.copy()

    def _fresh_id(self) -> int:
        if self._next_id <= MAX_ID:
            return self._next_id
        # The top of the range is taken: the lowest id never used. Ids are never freed, so the
        # search goes on from where the last one ended.
        while self._lowest_free in self._records:
            self._lowest_free += 1
        return self._lowest_free

    def heartbeat(self, id: int, resources: Mapping[str, float] | None = None) -> DeviceRecord:
        """Record a sign of life with the device's current resources; returns the new record.

        A registered or offline device comes online; an online or busy one stays as it is.
        Raises ``UnknownDevice``, ``DeviceRemoved``, or ``ValueError`` for resources that are
        not numbers within ±:data:`~fedsim.core.limits.MAX_FIGURE`.
        """
        values = _check_resources(resources)
        with self._lock:
            record = self._writable(id)
            record = self._transition(
                record,
                _E.HEARTBEAT,
                last_seen=self._clock(),
                resources={**record.resources, **values},
            )
            self._put(record, durable=False)
            return record.copy()

    def set_busy(self, id: int, busy: bool) -> DeviceRecord:
        """Mark an online device busy (assigned work) or a busy one online again.

        Strict in both directions, like a lock: assigning a device that is not online (a busy
        one included) or releasing one that is not busy raises ``InvalidTransition``, so a
        double assignment shows up. A device silent past patience is offline here too.
        """
        with self._lock:
            record = self._expire(self._writable(id), self._clock())
            record = self._transition(record, _E.ASSIGN if busy else _E.RELEASE)
            self._put(record)
            return record.copy()

    def report_profile(self, id: int, profile: Mapping[str, Any]) -> DeviceRecord:
        """Keep the measured hardware profile the device reports (see the module docstring).

        ``profile`` is a JSON object with a ``steps`` object (model -> step model) and maybe an
        ``eval_steps`` one; the REST layer checks the rest of its shape. Raises
        ``UnknownDevice``, ``DeviceRemoved``, or ``ValueError`` for a profile that is not JSON,
        has no ``steps`` or an ``eval_steps`` that is not an object.
        """
        document = _check_profile(profile)
        reported = set(document["steps"])
        with self._lock:
            record = self._writable(id)
            if record.measured is not None:
                for key in MERGED_STEPS:
                    merged = {**record.measured.get(key, {}), **document.get(key, {})}
                    if merged:
                        document[key] = merged
            pending = record.calibration_request
            if pending is not None and (pending.model is None or pending.model in reported):
                pending = None
            record = replace(
                record,
                measured=document,
                measured_at=self._clock(),
                calibration_request=pending,
            )
            self._put(record)
            return record.copy()

    def request_calibration(self, id: int, model: str | None = None) -> DeviceRecord:
        """Ask the device to measure itself again (for ``model``, or its own choice)."""
        if model is not None and (not isinstance(model, str) or not model):
            raise ValueError(f"model must be a non-empty string or None, got {model!r}")
        with self._lock:
            record = replace(
                self._writable(id),
                calibration_request=CalibrationRequest(model=model, requested_at=self._clock()),
            )
            self._put(record)
            return record.copy()

    def fail_calibration(self, id: int, requested_at: float, reason: str) -> DeviceRecord:
        """Mark the device's calibration request of ``requested_at`` failed, for ``reason``.

        Reporting the same request's failure again replaces the reason. Raises
        ``StaleCalibration`` when the device has no request of ``requested_at`` (none, or a
        newer one), ``ValueError`` for an empty ``reason``, ``UnknownDevice``, ``DeviceRemoved``.
        """
        if not isinstance(reason, str) or not reason:
            raise ValueError(f"reason must be a non-empty string, got {reason!r}")
        with self._lock:
            record = self._writable(id)
            pending = record.calibration_request
            if pending is None or pending.requested_at != requested_at:
                current = "none" if pending is None else f"{pending.requested_at!r}"
                raise StaleCalibration(
                    f"device {id}: no calibration request of {requested_at!r} "
                    f"(the current one: {current})"
                )
            record = replace(
                record,
                calibration_request=replace(pending, failed_at=self._clock(), reason=reason),
            )
            self._put(record)
            return record.copy()

    def remove(self, id: int) -> DeviceRecord:
        """Retire the device for good; its record stays readable with state ``removed``."""
        with self._lock:
            record = self._transition(self._writable(id), _E.REMOVE, removed_at=self._clock())
            self._put(record)
            return record.copy()

    def get(self, id: int) -> DeviceRecord:
        """The device's record, removed ones included; raises ``UnknownDevice``."""
        with self._lock:
            record = self._records.get(id)
            if record is None:
                raise UnknownDevice(f"no device {id}")
            expired = self._expire(record, self._clock())
            if expired is not record:
                self._put(expired, durable=False)
            return expired.copy()

    def list(
        self, group: int | None = None, state: DeviceState | None = None
    ) -> list[DeviceRecord]:
        """Devices in id order, filtered by group and state.

        Removed devices are left out unless ``state`` asks for them.
        """
        state = None if state is None else DeviceState(state)
        with self._lock:
            self.sweep()
            return [
                r.copy()
                for r in sorted(self._records.values(), key=lambda r: r.id)
                if (group is None or r.group == group)
                and (r.state is state if state is not None else r.state is not _S.REMOVED)
            ]

    def groups(self) -> dict[int, int]:
        """How many devices (not removed) each group holds, in group order."""
        with self._lock:
            counts: dict[int, int] = {}
            for r in self._records.values():
                if r.state is not _S.REMOVED:
                    counts[r.group] = counts.get(r.group, 0) + 1
            return dict(sorted(counts.items()))

    # builtins.list: inside the class, ``list`` is the method above.
    def sweep(self, now: float | None = None) -> builtins.list[DeviceRecord]:
        """Move every device silent for longer than ``patience`` offline; returns those moved."""
        with self._lock:
            now = self._clock() if now is None else now
            moved = []
            for record in self._records.values():
                expired = self._expire(record, now)
                if expired is not record:
                    moved.append(expired)
            # Offline is derived from last_seen, so losing this write loses nothing.
            self._store.save_many(moved, durable=False)
            for record in moved:
                self._records[record.id] = record
            return [r.copy() for r in sorted(moved, key=lambda r: r.id)]

    # -- internals; callers hold the lock --

    def _writable(self, id: int) -> DeviceRecord:
        record = self._records.get(id)
        if record is None:
            raise UnknownDevice(f"no device {id}")
        if record.state is _S.REMOVED:
            raise DeviceRemoved(f"device {id} was removed")
        return record

    def _expire(self, record: DeviceRecord, now: float) -> DeviceRecord:
        if _E.TIMEOUT in TRANSITIONS[record.state] and now - record.last_alive > self._patience:
            return self._transition(record, _E.TIMEOUT)
        return record

    @staticmethod
    def _transition(record: DeviceRecord, event: DeviceEvent, **changes) -> DeviceRecord:
        target = TRANSITIONS[record.state].get(event)
        if target is None:
            raise InvalidTransition(record.id, record.state, event)
        return replace(record, state=target, **changes)

    def _check_id_in_group(self, id: int, group: int, id_in_group: int) -> None:
        for other in self._records.values():
            if (
                other.id != id
                and other.group == group
                and other.id_in_group == id_in_group
                and other.state is not _S.REMOVED
            ):
                raise RegistrationConflict(
                    f"id_in_group {id_in_group} of group {group} is taken by device {other.id}"
                )

    def _put(self, record: DeviceRecord, *, durable: bool = True) -> None:
        # Store first: if it fails, memory still matches what is on disk.
        self._store.save(record, durable=durable)
        self._records[record.id] = record


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _check_labels(labels: Mapping[str, str] | None) -> dict[str, str]:
    labels = dict(labels or {})
    for k, v in labels.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise ValueError(f"labels must map strings to strings, got {k!r}: {v!r}")
    return labels


def _check_profile(profile: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``profile`` as plain JSON data, checked to be JSON with a ``steps`` object
    (and an ``eval_steps`` one, if any)."""
    try:
        document = json.loads(json.dumps(dict(profile), allow_nan=False))
    except (TypeError, ValueError) as e:
        raise ValueError(f"a measured profile must be JSON data: {e}") from None
    steps = document.get("steps")
    if not isinstance(steps, dict) or not steps:
        raise ValueError("a measured profile needs a steps object with at least one model")
    eval_steps = document.get("eval_steps", {})
    if not isinstance(eval_steps, dict):
        raise ValueError("a measured profile's eval_steps must be an object (model -> step model)")
    return document


def _check_resources(resources: Mapping[str, float] | None) -> dict[str, float]:
    values: dict[str, float] = {}
    for k, v in (resources or {}).items():
        if not isinstance(k, str) or isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ValueError(f"resources must map names to numbers, got {k!r}: {v!r}")
        if not math.isfinite(v) or abs(v) > MAX_FIGURE:
            raise ValueError(f"resource {k!r} must be within ±{MAX_FIGURE:g}, got {v}")
        values[k] = float(v)
    return values
