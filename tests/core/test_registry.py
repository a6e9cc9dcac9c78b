"""The device registry's state machine, liveness by patience, removal, groups, persistence,
and calibration requests with their failures."""

from __future__ import annotations

import math

import pytest

from fedsim.core.limits import MAX_FIGURE, MAX_ID
from fedsim.core.registry import (
    TRANSITIONS,
    DeviceEvent,
    DeviceRecord,
    DeviceRegistry,
    DeviceRemoved,
    DeviceState,
    InvalidTransition,
    MemoryRegistryStore,
    RegistrationConflict,
    StaleCalibration,
    UnknownDevice,
)

S, E = DeviceState, DeviceEvent
PATIENCE = 30.0


class FakeClock:
    """A clock that moves only when the test says so."""

    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, dt: float) -> None:
        self.t += dt


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def store():
    return MemoryRegistryStore()


@pytest.fixture
def reg(store, clock):
    return DeviceRegistry(store, patience=PATIENCE, clock=clock)


def in_state(reg: DeviceRegistry, clock: FakeClock, state: DeviceState) -> int:
    """A fresh device driven into ``state`` through the public API; returns its id."""
    id = reg.register(description=f"in {state.value}").id
    if state in (S.ONLINE, S.BUSY, S.OFFLINE):
        reg.heartbeat(id)
    if state is S.BUSY:
        reg.set_busy(id, True)
    if state is S.OFFLINE:
        clock.advance(PATIENCE + 1)
        reg.sweep()
    if state is S.REMOVED:
        reg.remove(id)
    assert reg.get(id).state is state
    return id


# -- the table --


def test_transition_table_covers_every_state_and_removed_is_final():
    # Assert
    assert set(TRANSITIONS) == set(DeviceState)
    assert TRANSITIONS[S.REMOVED] == {}
    for state, moves in TRANSITIONS.items():
        if state is not S.REMOVED:
            assert moves[E.REMOVE] is S.REMOVED
            assert moves[E.HEARTBEAT] in (S.ONLINE, S.BUSY)
        assert S.REGISTERED not in moves.values()  # never re-entered


# -- registration --


def test_register_assigns_fresh_ids_and_starts_registered(reg, clock):
    # Execute
    a = reg.register(description="server", group=0, id_in_group=0, profile="xeon")
    b = reg.register(description="camera", group=2, labels={"kind": "camera"})
    # Assert
    assert (a.id, b.id) == (0, 1)
    assert a.state is S.REGISTERED and a.registered_at == clock.t
    assert a.last_seen is None and a.resources == {} and a.removed_at is None
    assert (b.group, b.id_in_group, b.labels) == (2, None, {"kind": "camera"})


def test_register_with_explicit_id_moves_the_next_fresh_id_past_it(reg):
    # Execute
    reg.register(id=7)
    fresh = reg.register()
    # Assert
    assert fresh.id == 8


def test_an_id_at_the_top_of_the_range_leaves_fresh_ids_to_the_gaps(store, clock):
    # Prepare: ids 0 and 2 taken, then the largest id a client may choose.
    reg = DeviceRegistry(store, patience=PATIENCE, clock=clock)
    reg.register(id=0)
    reg.register(id=2)
    reg.register(id=MAX_ID)

    # Execute: fresh ids, before and after a restart over the same store.
    before = [reg.register().id for _ in range(2)]
    after = DeviceRegistry(store, patience=PATIENCE, clock=clock).register().id

    # Assert: the lowest ids never used, in order, the restart included.
    assert before == [1, 3]
    assert after == 4


def test_a_stored_id_past_the_range_does_not_stop_fresh_ids(store, clock):
    # Prepare: a record a store kept from before ids were bounded.
    store.save(DeviceRecord(id=2**63 - 1, group=0, registered_at=clock.t))
    reg = DeviceRegistry(store, patience=PATIENCE, clock=clock)

    # Execute / Assert
    assert reg.register().id == 0


@pytest.mark.parametrize("id", [-1, MAX_ID + 1, 2**63 - 1])
def test_register_refuses_ids_outside_the_range(reg, id):
    with pytest.raises(ValueError, match=str(MAX_ID)):
        reg.register(id=id)


def test_reregistering_declares_fields_anew_and_keeps_state(reg, clock):
    # Prepare: an online device with resources.
    id = reg.register(description="old", group=1, labels={"a": "1"}).id
    reg.heartbeat(id, {"cpu_busy": 0.5})
    clock.advance(5)
    # Execute
    again = reg.register(id=id, description="new", group=1, profile="jetson", labels={"b": "2"})
    # Assert
    assert (again.description, again.profile, again.labels) == ("new", "jetson", {"b": "2"})
    assert again.state is S.ONLINE
    assert again.resources == {"cpu_busy": 0.5}
    assert again.last_seen == clock.t - 5
    assert reg.register(id=id, description="new", group=1, profile="jetson", labels={"b": "2"}) == (
        again
    )


def test_reregistering_in_another_group_is_a_conflict(reg):
    # Prepare
    id = reg.register(group=1).id
    # Execute / Assert
    with pytest.raises(RegistrationConflict, match="group 1, not 2"):
        reg.register(id=id, group=2)
    assert reg.get(id).group == 1


def test_id_in_group_is_unique_among_devices_not_removed(reg):
    # Prepare
    first = reg.register(group=1, id_in_group=0).id
    # Execute / Assert: taken in group 1, free in group 2, free again once the holder is removed.
    with pytest.raises(RegistrationConflict, match="taken by device 0"):
        reg.register(group=1, id_in_group=0)
    reg.register(group=2, id_in_group=0)
    reg.remove(first)
    assert reg.register(group=1, id_in_group=0).id_in_group == 0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"id": -1},
        {"id": True},
        {"group": "1"},
        {"id_in_group": -2},
        {"labels": {"a": 1}},
        {"description": 3},
    ],
)
def test_register_rejects_malformed_fields(reg, kwargs):
    # Execute / Assert
    with pytest.raises(ValueError):
        reg.register(**kwargs)
    assert reg.list() == []


# -- heartbeats --


def test_first_heartbeat_brings_a_registered_device_online_with_its_resources(reg, clock):
    # Prepare
    id = reg.register().id
    clock.advance(2)
    # Execute
    rec = reg.heartbeat(id, {"cpu_busy": 0.25, "memory_available": 8e9, "rtt": 0.01})
    # Assert
    assert rec.state is S.ONLINE
    assert rec.last_seen == clock.t
    assert rec.resources == {"cpu_busy": 0.25, "memory_available": 8e9, "rtt": 0.01}


def test_heartbeat_merges_resources_keeping_each_last_value(reg):
    # Prepare
    id = reg.register().id
    reg.heartbeat(id, {"cpu_busy": 0.1, "bandwidth_up": 1e7})
    # Execute: the next report carries only the CPU.
    rec = reg.heartbeat(id, {"cpu_busy": 0.9})
    # Assert
    assert rec.resources == {"cpu_busy": 0.9, "bandwidth_up": 1e7}


def test_heartbeat_keeps_a_busy_device_busy(reg, clock):
    # Prepare
    id = in_state(reg, clock, S.BUSY)
    # Execute
    rec = reg.heartbeat(id, {"load": 3.0})
    # Assert
    assert rec.state is S.BUSY


def test_heartbeat_brings_an_offline_device_back_online(reg, clock):
    # Prepare
    id = in_state(reg, clock, S.OFFLINE)
    # Execute
    rec = reg.heartbeat(id)
    # Assert
    assert rec.state is S.ONLINE


@pytest.mark.parametrize(
    "resources",
    [
        {"cpu": math.nan},
        {"cpu": math.inf},
        {"cpu": "high"},
        {"cpu": True},
        {1: 2.0},
        {"memory": 1.8e19},
        {"memory": -MAX_FIGURE * 1.01},
    ],
)
def test_heartbeat_rejects_resources_that_are_not_bounded_numbers(reg, resources):
    # Prepare
    id = reg.register().id
    # Execute / Assert: refused whole, and the device is not counted as heard from.
    with pytest.raises(ValueError):
        reg.heartbeat(id, resources)
    assert reg.get(id).state is S.REGISTERED


# -- busy --


def test_set_busy_and_release(reg, clock):
    # Prepare
    id = in_state(reg, clock, S.ONLINE)
    # Execute / Assert
    assert reg.set_busy(id, True).state is S.BUSY
    assert reg.set_busy(id, False).state is S.ONLINE


@pytest.mark.parametrize(
    ("state", "busy"),
    [
        (S.REGISTERED, True),  # never heard from: not available for work
        (S.REGISTERED, False),
        (S.ONLINE, False),  # releasing a device that holds no work
        (S.BUSY, True),  # a double assignment
        (S.OFFLINE, True),
        (S.OFFLINE, False),
    ],
)
def test_set_busy_refused(reg, clock, state, busy):
    # Prepare
    id = in_state(reg, clock, state)
    # Execute
    with pytest.raises(InvalidTransition) as info:
        reg.set_busy(id, busy)
    # Assert
    assert (info.value.device, info.value.state) == (id, state)
    assert info.value.event is (E.ASSIGN if busy else E.RELEASE)
    assert reg.get(id).state is state


def test_set_busy_on_a_silent_device_finds_it_offline(reg, clock):
    # Prepare: online, then silent past patience with no sweep in between.
    id = in_state(reg, clock, S.ONLINE)
    clock.advance(PATIENCE + 1)
    # Execute / Assert
    with pytest.raises(InvalidTransition, match="cannot assign while offline"):
        reg.set_busy(id, True)


# -- patience and sweep --


@pytest.mark.parametrize("state", [S.REGISTERED, S.ONLINE, S.BUSY])
def test_sweep_moves_devices_silent_past_patience_offline(reg, clock, state):
    # Prepare
    id = in_state(reg, clock, state)
    # Execute: exactly patience is still alive; a moment more is not.
    clock.advance(PATIENCE)
    at_patience = reg.sweep()
    clock.advance(0.5)
    moved = reg.sweep()
    # Assert
    assert at_patience == []
    assert [r.id for r in moved] == [id]
    assert moved[0].state is S.OFFLINE
    assert reg.get(id).state is S.OFFLINE


def test_sweep_leaves_offline_and_removed_devices_as_they_are(reg, clock):
    # Prepare
    offline = in_state(reg, clock, S.OFFLINE)
    removed = in_state(reg, clock, S.REMOVED)
    # Execute
    clock.advance(10 * PATIENCE)
    moved = reg.sweep()
    # Assert
    assert moved == []
    assert (reg.get(offline).state, reg.get(removed).state) == (S.OFFLINE, S.REMOVED)


def test_sweep_takes_an_explicit_time(reg, clock):
    # Prepare
    id = in_state(reg, clock, S.ONLINE)
    # Execute
    moved = reg.sweep(clock.t + PATIENCE + 1)
    # Assert
    assert [r.id for r in moved] == [id]


def test_heartbeats_within_patience_keep_a_device_online(reg, clock):
    # Prepare
    id = in_state(reg, clock, S.ONLINE)
    # Execute: 4 heartbeats, each just inside patience, spanning 4x patience.
    for _ in range(4):
        clock.advance(PATIENCE - 1)
        reg.heartbeat(id)
    # Assert
    assert reg.sweep() == []
    assert reg.get(id).state is S.ONLINE


def test_reads_apply_patience_without_a_sweep(reg, clock):
    # Prepare
    a = in_state(reg, clock, S.ONLINE)
    b = in_state(reg, clock, S.BUSY)
    # Execute
    clock.advance(PATIENCE + 1)
    # Assert
    assert reg.get(a).state is S.OFFLINE
    assert [r.id for r in reg.list(state=S.OFFLINE)] == [a, b]


def test_offline_is_persisted_by_a_sweep(store, reg, clock):
    # Prepare
    id = in_state(reg, clock, S.ONLINE)
    clock.advance(PATIENCE + 1)
    # Execute
    reg.sweep()
    # Assert
    assert {r.id: r.state for r in store.load_all()} == {id: S.OFFLINE}


# -- removal --


@pytest.mark.parametrize("state", [S.REGISTERED, S.ONLINE, S.BUSY, S.OFFLINE])
def test_remove_from_any_live_state(reg, clock, state):
    # Prepare
    id = in_state(reg, clock, state)
    # Execute
    rec = reg.remove(id)
    # Assert
    assert rec.state is S.REMOVED and rec.removed_at == clock.t
    assert reg.get(id).state is S.REMOVED


def test_a_removed_device_never_revives(reg, clock):
    # Prepare
    id = in_state(reg, clock, S.ONLINE)
    removed = reg.remove(id)
    # Execute / Assert: every write is refused, and time does not move it.
    with pytest.raises(DeviceRemoved):
        reg.heartbeat(id, {"cpu_busy": 0.1})
    with pytest.raises(DeviceRemoved):
        reg.set_busy(id, True)
    with pytest.raises(DeviceRemoved):
        reg.remove(id)
    with pytest.raises(DeviceRemoved, match="not reused"):
        reg.register(id=id)
    clock.advance(10 * PATIENCE)
    assert reg.sweep() == []
    assert reg.get(id) == removed


def test_removed_ids_are_not_reused(reg, clock):
    # Prepare
    last = reg.register().id
    reg.remove(last)
    # Execute
    fresh = reg.register()
    # Assert
    assert fresh.id == last + 1


# -- unknown ids --


@pytest.mark.parametrize(
    "call",
    [
        lambda reg: reg.get(42),
        lambda reg: reg.heartbeat(42),
        lambda reg: reg.set_busy(42, True),
        lambda reg: reg.remove(42),
    ],
)
def test_unknown_device(reg, call):
    # Execute / Assert
    with pytest.raises(UnknownDevice, match="no device 42"):
        call(reg)


# -- listing and groups --


def test_list_filters_by_group_and_state_and_hides_removed(reg, clock):
    # Prepare: the devices of the paper's Fig. 3(a), groups 0-2, one of them removed.
    for group, n in ((0, 3), (1, 3), (2, 3)):
        for i in range(n):
            reg.register(group=group, id_in_group=i)
    for id in (3, 4):
        reg.heartbeat(id)
    reg.remove(8)
    # Execute / Assert
    assert [r.id for r in reg.list()] == list(range(8))
    assert [r.id for r in reg.list(group=1)] == [3, 4, 5]
    assert [r.id for r in reg.list(group=1, state=S.ONLINE)] == [3, 4]
    assert [r.id for r in reg.list(state="removed")] == [8]
    assert reg.groups() == {0: 3, 1: 3, 2: 2}


def test_records_handed_out_are_copies(reg):
    # Prepare
    rec = reg.register(labels={"a": "1"})
    # Execute
    rec.labels["a"] = "changed"
    # Assert
    assert reg.get(rec.id).labels == {"a": "1"}


# -- persistence through the store --


def test_a_new_registry_over_the_same_store_resumes(store, reg, clock):
    # Prepare
    a = in_state(reg, clock, S.BUSY)
    b = in_state(reg, clock, S.REMOVED)
    before = reg.list(state=S.BUSY) + reg.list(state=S.REMOVED)
    # Execute
    again = DeviceRegistry(store, patience=PATIENCE, clock=clock)
    # Assert: same records; the removed id stays retired and fresh ids continue after it.
    assert again.list(state=S.BUSY) + again.list(state=S.REMOVED) == before
    assert [r.id for r in before] == [a, b]
    with pytest.raises(DeviceRemoved):
        again.heartbeat(b)
    assert again.register().id == b + 1


def test_a_failing_store_leaves_the_registry_unchanged(clock):
    # Prepare: a store whose writes fail after registration.
    class Failing(MemoryRegistryStore):
        fail = False

        def save(self, record: DeviceRecord, *, durable: bool = True) -> None:
            if self.fail:
                raise OSError("disk full")
            super().save(record, durable=durable)

    store = Failing()
    reg = DeviceRegistry(store, patience=PATIENCE, clock=clock)
    id = reg.register().id
    store.fail = True
    # Execute
    with pytest.raises(OSError):
        reg.heartbeat(id)
    # Assert
    assert reg.get(id).state is S.REGISTERED


@pytest.mark.parametrize("patience", [0, -1.0])
def test_patience_must_be_positive(patience):
    # Execute / Assert
    with pytest.raises(ValueError, match="patience"):
        DeviceRegistry(MemoryRegistryStore(), patience=patience)


# -- calibration requests and their failures --

STEP = {"overhead_s": 1e-3, "per_sample_s": 2e-5, "batch_sizes": [8, 16, 32]}


def test_evaluation_step_models_join_those_reported_before_as_training_ones_do(reg):
    # Prepare: a report of digits_cnn with its evaluation step model.
    id = reg.register().id
    evaluation = {"overhead_s": 4e-4, "per_sample_s": 1.3e-5, "batch_sizes": [32, 128, 512]}
    reg.report_profile(
        id, {"steps": {"digits_cnn": STEP}, "eval_steps": {"digits_cnn": evaluation}}
    )

    # Execute: a report of another model with its own, then one (an older agent's) without.
    reg.report_profile(
        id, {"steps": {"mlp": STEP}, "eval_steps": {"mlp": {**evaluation, "overhead_s": 0.0}}}
    )
    record = reg.report_profile(id, {"steps": {"digits_cnn": STEP}})

    # Assert: every model's latest evaluation step model stays.
    assert record.measured is not None
    assert record.measured["eval_steps"] == {
        "digits_cnn": evaluation,
        "mlp": {**evaluation, "overhead_s": 0.0},
    }
    assert sorted(record.measured["steps"]) == ["digits_cnn", "mlp"]


def test_a_profile_whose_eval_steps_is_not_an_object_is_refused(reg):
    id = reg.register().id

    with pytest.raises(ValueError, match="eval_steps must be an object"):
        reg.report_profile(id, {"steps": {"digits_cnn": STEP}, "eval_steps": [1, 2]})
    assert reg.get(id).measured is None


def test_a_reported_failure_marks_the_request_failed_with_its_reason(reg, clock):
    # Prepare
    id = reg.register().id
    asked = reg.request_calibration(id, "no_such_model").calibration_request
    assert asked is not None
    clock.advance(2)

    # Execute
    record = reg.fail_calibration(id, asked.requested_at, "no_such_model is not in the zoo")

    # Assert: the request as it was, now failed, on the record that reads return too.
    failed = record.calibration_request
    assert failed is not None
    assert (failed.model, failed.requested_at) == ("no_such_model", asked.requested_at)
    assert failed.failed_at == clock.t and failed.reason == "no_such_model is not in the zoo"
    assert reg.get(id).calibration_request == failed


def test_a_new_request_replaces_a_failed_one(reg, clock):
    # Prepare
    id = reg.register().id
    asked = reg.request_calibration(id, "no_such_model").calibration_request
    assert asked is not None
    reg.fail_calibration(id, asked.requested_at, "unknown model")
    clock.advance(5)

    # Execute
    again = reg.request_calibration(id, "digits_cnn").calibration_request

    # Assert: pending again, with no trace of the failure.
    assert again is not None and again.model == "digits_cnn"
    assert again.requested_at == clock.t and again.failed_at is None and again.reason is None


@pytest.mark.parametrize("model", ["digits_cnn", None])
def test_a_profile_of_the_model_asked_for_clears_a_failed_request(reg, model):
    # Prepare: the request failed once (a busy host, say), then the device measured it.
    id = reg.register().id
    asked = reg.request_calibration(id, model).calibration_request
    assert asked is not None
    reg.fail_calibration(id, asked.requested_at, "step times did not grow")

    # Execute
    record = reg.report_profile(id, {"steps": {"digits_cnn": STEP}})

    # Assert
    assert record.calibration_request is None


def test_a_profile_of_another_model_leaves_the_failure_shown(reg):
    # Prepare
    id = reg.register().id
    asked = reg.request_calibration(id, "no_such_model").calibration_request
    assert asked is not None
    reg.fail_calibration(id, asked.requested_at, "unknown model")

    # Execute
    record = reg.report_profile(id, {"steps": {"digits_cnn": STEP}})

    # Assert
    assert record.calibration_request is not None
    assert record.calibration_request.reason == "unknown model"


def test_a_failure_of_another_request_than_the_current_one_is_stale(reg, clock):
    # Prepare: a request, then a newer one while the agent was answering the first.
    id = reg.register().id
    first = reg.request_calibration(id, "no_such_model").calibration_request
    assert first is not None
    clock.advance(1)
    reg.request_calibration(id, "digits_cnn")
    current = reg.get(id).calibration_request

    # Execute / Assert: the first one's failure is refused and changes nothing.
    with pytest.raises(StaleCalibration, match=f"device {id}"):
        reg.fail_calibration(id, first.requested_at, "unknown model")
    assert reg.get(id).calibration_request == current


def test_a_failure_with_no_request_is_stale(reg):
    id = reg.register().id

    with pytest.raises(StaleCalibration, match="the current one: none"):
        reg.fail_calibration(id, 1000.0, "unknown model")


def test_a_failure_needs_a_reason_and_a_device_that_is_not_removed(reg, clock):
    # Prepare
    id = reg.register().id
    asked = reg.request_calibration(id).calibration_request
    assert asked is not None

    # Execute / Assert
    with pytest.raises(ValueError, match="reason"):
        reg.fail_calibration(id, asked.requested_at, "")
    with pytest.raises(UnknownDevice):
        reg.fail_calibration(id + 1, asked.requested_at, "unknown model")
    reg.remove(id)
    with pytest.raises(DeviceRemoved):
        reg.fail_calibration(id, asked.requested_at, "unknown model")
