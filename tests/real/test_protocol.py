"""The wire protocol's messages: tasks parsed strictly, fingerprints, paths, update headers."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from fedsim.real.protocol import (
    AgentCpu,
    FitTask,
    Headers,
    MeasuredProfile,
    Paths,
    ProtocolError,
    SecAggMasking,
    SecAggSettings,
    SecAggTask,
    TaskModel,
    Timings,
    UpdateMeta,
    UploadDataTask,
    parse_task,
    path,
    task_digest,
    task_id_of,
    task_json,
)


def fit_json(**fields) -> dict:
    return {
        "id": "r1-d1",
        "kind": "fit",
        "model": {"name": "digits_cnn", "version": 4, "nbytes": 100},
        "samples": 10,
        "epochs": 1,
        "batch_size": 5,
        "config": {"a": 1, "b": 2},
        **fields,
    }


def secagg_json(**fields) -> dict:
    return {
        "id": "r1-secagg-advertise-d1",
        "kind": "secagg",
        "session": "r1",
        "stage": "advertise",
        "settings": {"bits": 32, "clip": 10.0, "threshold": 0.5},
        **fields,
    }


def test_a_task_survives_its_trip_through_json():
    # Prepare
    url = path(Paths.BLOB, name="m", version=7)
    model = TaskModel(name="m", version=3, nbytes=12, sha256="ab" * 32, url=url)
    tasks = [
        FitTask(id="j:r1-d2", model=model, samples=4, epochs=2, batch_size=2, config={"lr": 0.1}),
        UploadDataTask(id="r0-d2", samples=4, nbytes=1 << 40),
        FitTask(
            id="r1-d3",
            model=model,
            samples=4,
            epochs=1,
            batch_size=2,
            secagg=SecAggMasking(session="j:r1", scale=1e5, nbytes=48),
        ),
        SecAggTask(
            id="r1-secagg-share-d3",
            session="j:r1",
            stage="share",
            settings=SecAggSettings(bits=32, clip=10.0, threshold=0.5, neighbours=2),
            message='{"1":{"c":"ab","s":"cd"}}',
        ),
    ]

    # Execute
    back = [parse_task(json.loads(json.dumps(task_json(t)))) for t in tasks]

    # Assert
    assert back == tasks
    assert task_json(tasks[0])["model"]["url"] == "/api/v1/models/m/versions/7/blob"


@pytest.mark.parametrize(
    ("data", "field", "words"),
    [
        ({"id": "t", "kind": "dance"}, "kind", "'dance'"),
        ({"id": "t"}, "kind", "None"),
        (fit_json(model=None), "model", "model"),
        ({k: v for k, v in fit_json().items() if k != "samples"}, "samples", "required"),
        (fit_json(samples=-1), "samples", "greater than or equal to 0"),
        (fit_json(samples="10"), "samples", "integer"),
        (fit_json(epochs=True), "epochs", "integer"),
        (fit_json(flops=float("inf")), "flops", "finite"),
        (fit_json(model={"name": "m", "version": 1, "nbytes": 1, "sha": 1}), "model.sha", "not"),
        (fit_json(dance=True), "dance", "not a known field"),
        (fit_json(drop="yes"), "drop", "boolean"),
        ({"id": "", "kind": "upload_data", "nbytes": 1}, "id", "match pattern"),
        ({"id": "..", "kind": "upload_data", "nbytes": 1}, "id", "got '..'"),
        ({"id": "r1/../d2", "kind": "upload_data", "nbytes": 1}, "id", "match pattern"),
        ({"id": "x" * 257, "kind": "upload_data", "nbytes": 1}, "id", "match pattern"),
        ([1, 2], None, "JSON object"),
        (secagg_json(stage="dance"), "stage", "'dance'"),
        (secagg_json(settings={"bits": 8, "clip": 1.0, "threshold": 0.5}), "settings.bits", "16"),
        (
            secagg_json(settings={"bits": 32, "clip": 1.0, "threshold": 2}),
            "settings.threshold",
            "1",
        ),
        (secagg_json(session="a/b"), "session", "match pattern"),
        (fit_json(secagg={"session": "r1", "scale": 0.5, "nbytes": 4}), "secagg.scale", "1"),
    ],
)
def test_a_malformed_task_is_an_error_naming_the_field(data, field, words):
    # Execute
    with pytest.raises(ProtocolError) as caught:
        parse_task(data)

    # Assert
    assert caught.value.field == field
    assert words in str(caught.value)


@pytest.mark.parametrize(
    "task_id",
    ["r3-d4", "a7-d2", "r0-relay-g1", "r2-forward-g3", "5f2c9a0e1b3d4c6f:0:r3-d4", "x" * 256],
)
def test_the_ids_the_coordinator_gives_are_task_ids(task_id):
    # Execute
    task = parse_task(fit_json(id=task_id))

    # Assert
    assert task.id == task_id and task_id_of(fit_json(id=task_id)) == task_id


@pytest.mark.parametrize(
    "data",
    [{"id": ".."}, {"id": "."}, {"id": "a/b"}, {"id": 7}, {"id": [[["r1"]]]}, {}, ["r1-d1"], None],
)
def test_a_task_without_a_well_formed_id_has_none_to_report_under(data):
    assert task_id_of(data) is None


def test_a_task_digest_names_the_work_not_the_wording():
    # Prepare
    task = parse_task(fit_json())
    reordered = parse_task(dict(reversed(fit_json(config={"b": 2, "a": 1}).items())))
    other = parse_task(fit_json(samples=11))

    # Execute / Assert
    assert task_digest(task) == task_digest(reordered)
    assert task_digest(task) != task_digest(other)


def test_paths_quote_each_parameter_whole():
    assert path(Paths.HEARTBEAT, id=3) == "/api/v1/devices/3/heartbeat"
    assert path(Paths.TASK_UPDATE, task_id="a1:r1/d2") == "/api/v1/tasks/a1%3Ar1%2Fd2/update"


def test_update_headers_round_trip():
    # Prepare
    meta = UpdateMeta(
        num_examples=480, metrics={"loss": 0.25}, timings=Timings(download_s=0.5, train_s=2.0)
    )
    padding = UpdateMeta(num_examples=0, timing_only=True)

    # Execute
    headers = meta.headers()
    back = UpdateMeta.from_headers(headers)

    # Assert
    assert back == meta and Headers.TIMING_ONLY not in headers
    assert UpdateMeta.from_headers(padding.headers()).timing_only


def test_the_agents_processor_seconds_travel_in_a_header_of_their_own():
    # Prepare: an update that counts its agent's processor seconds, and one that does not.
    counted = UpdateMeta(num_examples=10, cpu=AgentCpu(task_s=0.3, train_s=0.2, between_s=0.05))
    uncounted = UpdateMeta(num_examples=10)

    # Execute
    headers = counted.headers()
    back = UpdateMeta.from_headers(headers)

    # Assert: the figures come back whole, in their own header (which a server that does not
    # know it ignores); without them the header is absent and the figures are None.
    assert back == counted
    assert set(headers) - set(uncounted.headers()) == {Headers.CPU}
    assert UpdateMeta.from_headers(uncounted.headers()).cpu is None


@pytest.mark.parametrize(
    ("headers", "field", "malformed"),
    [
        ({}, Headers.NUM_EXAMPLES, False),
        ({Headers.CPU: '{"task_s": -0.1}'}, f"{Headers.CPU}.task_s", False),
        ({Headers.NUM_EXAMPLES: "many"}, Headers.NUM_EXAMPLES, True),
        ({Headers.NUM_EXAMPLES: str(2**63)}, Headers.NUM_EXAMPLES, False),
        ({Headers.METRICS: "{"}, Headers.METRICS, True),
        ({Headers.METRICS: '{"loss": NaN}'}, Headers.METRICS, True),
        ({Headers.METRICS: '{"loss": "0.2"}'}, f"{Headers.METRICS}.loss", False),
        ({Headers.TIMINGS: '{"train_s": -1}'}, f"{Headers.TIMINGS}.train_s", False),
        ({Headers.TIMINGS: '{"idle_s": 1}'}, f"{Headers.TIMINGS}.idle_s", False),
        ({Headers.TIMING_ONLY: "yes"}, Headers.TIMING_ONLY, True),
    ],
)
def test_bad_update_headers_name_the_header(headers, field, malformed):
    # Prepare
    given = {Headers.NUM_EXAMPLES: "1", **headers} if headers else {}

    # Execute
    with pytest.raises(ProtocolError) as caught:
        UpdateMeta.from_headers(given)

    # Assert
    assert (caught.value.field, caught.value.malformed) == (field, malformed)


def measured_profile(**fields) -> dict:
    """A measured profile as an agent reports it, training steps only."""
    step = {"overhead_s": 6e-4, "per_sample_s": 2e-5, "batch_sizes": [8, 16, 32]}
    return {"source": "fedsim agent on host", "memory_gb": 16.0, "steps": {"m": step}, **fields}


def test_a_reported_profile_may_carry_evaluation_step_models():
    # Prepare
    evaluation = {"overhead_s": 4e-4, "per_sample_s": 1.3e-5, "batch_sizes": [32, 128, 512]}

    # Execute
    with_them = MeasuredProfile.model_validate(measured_profile(eval_steps={"m": evaluation}))
    without = MeasuredProfile.model_validate(measured_profile())

    # Assert: kept as sent (with the residual's default); an older agent's report has none,
    # and the document the server keeps has no eval_steps key for it.
    dumped = with_them.model_dump(mode="json", exclude_none=True)
    assert dumped["eval_steps"] == {"m": {**evaluation, "residual_s": 0.0}}
    assert "eval_steps" not in without.model_dump(mode="json", exclude_none=True)


@pytest.mark.parametrize(
    ("eval_steps", "field"),
    [
        ({"m": {"overhead_s": 1e-3, "per_sample_s": 1e-5, "batch_sizes": [32, 64]}}, "batch_sizes"),
        (
            {"m": {"overhead_s": -1e-3, "per_sample_s": 1e-5, "batch_sizes": [1, 2, 3]}},
            "overhead_s",
        ),
        ({"m": {"per_sample_s": 1e-5, "batch_sizes": [1, 2, 3]}}, "overhead_s"),
    ],
)
def test_a_malformed_evaluation_step_model_is_refused_naming_it(eval_steps, field):
    # Execute / Assert
    with pytest.raises(ValidationError) as refused:
        MeasuredProfile.model_validate(measured_profile(eval_steps=eval_steps))
    assert refused.value.errors()[0]["loc"] == ("eval_steps", "m", field)
