"""Hostile input to the server (issue 13): each reproduction of the attack is answered 4xx, stores
nothing, and the server stays whole (listing, registering, a restart); what it serves is JSON;
and the limits are stated in its OpenAPI document."""

from __future__ import annotations

import json
import math
import re
from dataclasses import replace
from typing import Any, ClassVar

import pytest

from fedsim.core.limits import INT64_MAX, MAX_ABS_VALUE, MAX_FIGURE, MAX_ID, MAX_JSON_DEPTH
from fedsim.real.protocol import PATH_PATTERNS
from fedsim.real.server.app import AGENTS
from fedsim.real.server.jobs_api import Jobs
from fedsim.real.server.openapi import build_openapi
from fedsim.real.server.responses import dumps
from fedsim.real.server.routes import ENDPOINTS
from fedsim.real.server.serialize import WITHHELD
from fedsim.store.sqlite import SqliteRepository
from tests.real.conftest import ADMIN, API, ENROLL

pytestmark = pytest.mark.asyncio

JSON = {"Content-Type": "application/json"}


def nested(depth: int) -> str:
    """A JSON object ``depth`` levels deep: {"a": {"a": ... 1}}."""
    return '{"a": ' * depth + "1" + "}" * depth


def strict_json(text: str) -> Any:
    """``text`` parsed as JSON proper: NaN and Infinity are not JSON."""

    def refuse(name: str) -> None:
        raise AssertionError(f"{name} served: not JSON")

    return json.loads(text, parse_constant=refuse)


async def error_of(response) -> dict:
    body = await response.json()
    assert body["error"]["status"] == response.status
    return body["error"]


async def names_of_models(server) -> list[str]:
    r = await server.client.get(f"{API}/models", headers=ADMIN)
    assert r.status == 200
    return [m["name"] for m in (await r.json())["models"]]


# -- 1: model metadata nested deep -----------------------------------------------------------


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH, 489])
async def test_deep_model_metadata_is_400_stores_nothing_and_models_survive_a_restart(
    make_server, depth
):
    # Prepare
    server = await make_server()
    await server.model("kept")
    body = '{"name": "d", "architecture": "mlp", "metadata": ' + nested(depth) + "}"

    # Execute
    r = await server.client.post(f"{API}/models", data=body, headers={**ADMIN, **JSON})

    # Assert: refused naming the limit; nothing stored; listings work, also after a restart.
    assert r.status == 400
    assert f"deeper than {MAX_JSON_DEPTH}" in (await error_of(r))["message"]
    assert await names_of_models(server) == ["kept"]
    assert (await server.client.get(f"{API}/models/d", headers=ADMIN)).status == 404
    await server.client.close()
    again = await make_server()
    assert await names_of_models(again) == ["kept"]
    assert (await again.client.get(f"{API}/models/kept", headers=ADMIN)).status == 200
    assert (await again.client.get(f"{API}/models/d", headers=ADMIN)).status == 404


async def test_metadata_within_the_depth_is_stored_and_served(server):
    # Prepare: the body is one level above the metadata.
    body = '{"name": "d", "architecture": "mlp", "metadata": ' + nested(MAX_JSON_DEPTH - 2) + "}"

    # Execute
    r = await server.client.post(f"{API}/models", data=body, headers={**ADMIN, **JSON})

    # Assert
    assert r.status == 201, await r.text()
    got = await server.client.get(f"{API}/models/d", headers=ADMIN)
    assert (await got.json())["metadata"] == json.loads(nested(MAX_JSON_DEPTH - 2))


async def test_deep_metadata_stored_before_the_limits_is_withheld_not_a_500(make_server, config):
    # Prepare: a repository written before the server refused such metadata.
    repository = SqliteRepository(config.data_dir / "repository")
    repository.register_model("d", "mlp", json.loads(nested(489)))
    repository.register_model("fine", "mlp", {"task": "digits"})
    repository.close()
    server = await make_server()

    # Execute
    listing = await server.client.get(f"{API}/models", headers=ADMIN)
    one = await server.client.get(f"{API}/models/d", headers=ADMIN)

    # Assert: both models listed; the deep metadata replaced by the reason.
    assert listing.status == 200 and one.status == 200
    models = {m["name"]: m["metadata"] for m in (await listing.json())["models"]}
    assert models["fine"] == {"task": "digits"}
    assert f"deeper than {MAX_JSON_DEPTH}" in models["d"][WITHHELD]
    assert (await one.json())["metadata"] == models["d"]


async def test_deep_hardware_stored_before_the_limits_is_withheld_not_a_500(server):
    # Prepare: a device whose declaration a server without the limits stored.
    id, _ = await server.register(hardware={"cpu_count": 4})
    server.app[AGENTS].enroll(id, hardware={"extra": json.loads(nested(300))})

    # Execute
    listing = await server.client.get(f"{API}/devices", headers=ADMIN)

    # Assert
    assert listing.status == 200
    (device,) = (await listing.json())["devices"]
    assert f"deeper than {MAX_JSON_DEPTH}" in device["hardware"][WITHHELD]


# -- 2: client-chosen device ids -------------------------------------------------------------


async def test_an_id_past_the_json_safe_range_is_422_and_registration_keeps_working(
    make_server,
):
    # Prepare
    server = await make_server()

    # Execute: the attack, then the top of the range, then registrations without an id.
    attack = await server.client.post(
        f"{API}/devices", json={"id": INT64_MAX, "group": 1}, headers=ENROLL
    )
    refusal = await error_of(attack)
    top = await server.client.post(
        f"{API}/devices", json={"id": MAX_ID, "group": 1}, headers=ENROLL
    )
    fresh, _ = await server.register(group=1)
    await server.client.close()
    restarted = await make_server()
    after_restart, _ = await restarted.register(group=1)

    # Assert
    assert attack.status == 422
    assert refusal["field"] == "id"
    assert top.status == 201
    assert (fresh, after_restart) == (0, 1)
    r = await restarted.client.get(f"{API}/devices", headers=ADMIN)
    assert sorted(d["id"] for d in (await r.json())["devices"]) == [0, 1, MAX_ID]


@pytest.mark.parametrize(
    "body, field",
    [
        ({"group": MAX_ID + 1}, "group"),
        ({"group": 1, "id_in_group": 2**64}, "id_in_group"),
    ],
)
async def test_other_ids_past_the_range_are_refused(server, body, field):
    r = await server.client.post(f"{API}/devices", json=body, headers=ENROLL)
    assert r.status in (400, 422)
    r = await server.client.get(f"{API}/devices", headers=ADMIN)
    assert (await r.json())["devices"] == []


# -- 3: integers past the store's range in a path --------------------------------------------

HUGE = (INT64_MAX + 1, 2**64, 470189590465851883520)
_PATH_BODIES: dict[str, Any] = {
    "devices.heartbeat": {"resources": {}},
    "devices.calibrate": {},
    "deployments.set_device_state": {"state": "deployed"},
}
_INT_ENDPOINTS = [
    e
    for e in ENDPOINTS
    if any(
        PATH_PATTERNS.get(p) in (r"\d+", r"\d+|latest") for p in re.findall(r"\{(\w+)\}", e.path)
    )
]


@pytest.mark.parametrize(
    "endpoint", _INT_ENDPOINTS, ids=[f"{e.method} {e.path}" for e in _INT_ENDPOINTS]
)
async def test_integers_past_the_store_in_any_path_are_4xx(server, endpoint):
    # Prepare: a model to hang versions on, a device whose token tries the paths too.
    await server.model("m1")
    _, device = await server.register()
    for huge in HUGE:
        values = {"name": "m1", "id": huge, "device": huge, "version": huge}
        url = endpoint.path.format_map(values)
        for headers in (ADMIN, device):
            # Execute
            r = await server.client.request(
                endpoint.method, url, json=_PATH_BODIES.get(endpoint.handler), headers=headers
            )

            # Assert
            assert 400 <= r.status < 500, (url, r.status, await r.text())
            await error_of(r)


# -- 4 and 15: heartbeat figures -------------------------------------------------------------


@pytest.mark.parametrize(
    "text, status, words",
    [
        ('{"resources": {"cpu_busy": 1e999}}', 400, "resources.cpu_busy: number out of range"),
        ('{"resources": {"cpu_busy": NaN}}', 400, "NaN"),
        ('{"resources": {"memory": 1.8e19}}', 422, "resources.memory"),
        ('{"resources": {"memory": -1.8e19}}', 422, "resources.memory"),
        ('{"resources": {"cpu_busy": 0.1}, "resources": {}}', 400, "'resources' appears twice"),
        ('{"resources": {"cpu\\u0000busy": 0.1}}', 400, "control characters"),
    ],
)
async def test_heartbeat_figures_out_of_range_are_4xx_and_change_nothing(
    server, text, status, words
):
    # Prepare
    id, token = await server.register()

    # Execute
    r = await server.client.put(
        f"{API}/devices/{id}/heartbeat", data=text, headers={**token, **JSON}
    )

    # Assert: refused naming the figure; the device not heard from.
    assert r.status == status
    assert words in (await error_of(r))["message"]
    record = await (await server.client.get(f"{API}/devices/{id}", headers=token)).json()
    assert record["state"] == "registered" and record["resources"] == {}


async def test_heartbeat_figures_at_the_bound_are_kept(server):
    id, token = await server.register()
    resources = {"memory_available": MAX_FIGURE, "offset": -MAX_FIGURE}
    r = await server.client.put(
        f"{API}/devices/{id}/heartbeat", json={"resources": resources}, headers=token
    )
    assert r.status == 200
    assert (await r.json())["resources"] == resources


# -- 15: duplicate keys and control characters in bodies --------------------------------------


@pytest.mark.parametrize(
    "text, words",
    [
        ('{"name": "a", "name": "b", "architecture": "mlp"}', "key 'name' appears twice"),
        ('{"name": "a", "architecture": "ml\\u0000p"}', "architecture: control characters"),
        ('{"name": "a", "architecture": "mlp", "metadata": {"k\\u0007": 1}}', "control"),
    ],
)
async def test_models_with_duplicate_keys_or_control_characters_are_400(server, text, words):
    r = await server.client.post(f"{API}/models", data=text, headers={**ADMIN, **JSON})
    assert r.status == 400
    assert words in (await error_of(r))["message"]
    assert await names_of_models(server) == []


@pytest.mark.parametrize(
    "text",
    [
        '{"group": 1, "group": 2}',
        '{"group": 1, "description": "jet\\u0000son"}',
        '{"group": 1, "labels": {"site": "lab\\u001b[31m"}}',
    ],
)
async def test_registrations_with_duplicate_keys_or_control_characters_are_400(server, text):
    r = await server.client.post(f"{API}/devices", data=text, headers={**ENROLL, **JSON})
    assert r.status == 400
    await error_of(r)
    r = await server.client.get(f"{API}/devices", headers=ADMIN)
    assert (await r.json())["devices"] == []


# -- 6: what the server writes is JSON --------------------------------------------------------


class DivergedJobs(Jobs):
    """A job manager whose one job had a round with a NaN evaluation loss."""

    JOB: ClassVar[dict[str, Any]] = {
        "id": "j1",
        "kind": "federated",
        "state": "failed",
        "rounds": [
            {"round": 1, "eval_loss": 0.5, "accuracy": 0.9},
            {"round": 2, "eval_loss": math.nan, "train_loss": math.inf, "accuracy": 0.1},
        ],
    }

    def start(self, kind: str, config: dict[str, Any]) -> dict[str, Any]:
        raise ValueError("this manager starts nothing")

    def get(self, job_id: str) -> dict[str, Any] | None:
        return self.JOB if job_id == "j1" else None

    def cancel(self, job_id: str) -> dict[str, Any] | None:
        return self.get(job_id)

    def list(self) -> list[dict[str, Any]]:
        return [self.JOB]

    def watch_rounds(self, listener) -> None:
        pass  # no rounds run


async def test_a_nan_round_metric_is_served_as_null(make_server):
    # Prepare
    server = await make_server(jobs=DivergedJobs())

    # Execute
    listing = await server.client.get(f"{API}/jobs", headers=ADMIN)
    one = await server.client.get(f"{API}/jobs/j1", headers=ADMIN)

    # Assert: JSON proper; the non-finite figures null, the finite ones kept.
    assert listing.status == 200 and one.status == 200
    jobs = strict_json(await listing.text())["jobs"]
    assert strict_json(await one.text()) == jobs[0]
    assert jobs[0]["rounds"][0] == {"round": 1, "eval_loss": 0.5, "accuracy": 0.9}
    assert jobs[0]["rounds"][1] == {
        "round": 2,
        "eval_loss": None,
        "train_loss": None,
        "accuracy": 0.1,
    }


async def test_the_writer_turns_non_finite_numbers_into_null_and_keeps_the_rest():
    # Prepare
    value = {"a": [1.5, math.nan, {"b": -math.inf}], "c": (math.inf, 2), "d": "NaN", "e": 3}

    # Execute
    text = dumps(value)

    # Assert
    assert strict_json(text) == {"a": [1.5, None, {"b": None}], "c": [None, 2], "d": "NaN", "e": 3}


# -- the limits, stated in the OpenAPI document ------------------------------------------------


async def test_openapi_document_states_the_limits_of_the_server_it_describes(make_server, config):
    # Prepare: a server with sizes of its own.
    custom = replace(config, max_json_bytes=4096, max_blob_bytes=1 << 20, body_read_timeout_s=7.0)
    server = await make_server(
        max_json_bytes=custom.max_json_bytes,
        max_blob_bytes=custom.max_blob_bytes,
        body_read_timeout_s=custom.body_read_timeout_s,
    )

    # Execute
    served = await (await server.client.get(f"{API}/openapi.json")).json()

    # Assert: the served document carries these limits; the library's document the defaults.
    assert served == build_openapi(custom)
    limits = served["info"]["x-fedsim-limits"]
    assert limits["json"]["max_bytes"] == 4096
    assert limits["json"]["max_depth"] == MAX_JSON_DEPTH
    assert limits["json"]["integers"] == {"minimum": -INT64_MAX, "maximum": INT64_MAX}
    assert limits["blob_max_bytes"] == 1 << 20
    assert limits["ids"]["maximum"] == MAX_ID
    assert limits["path_ids"]["maximum"] == INT64_MAX
    assert (limits["figures"]["minimum"], limits["figures"]["maximum"]) == (-MAX_FIGURE, MAX_FIGURE)
    assert limits["updates"]["max_abs_value"] == MAX_ABS_VALUE
    timeouts = limits["timeouts_s"]
    assert timeouts["body_read_timeout_s"] == 7.0
    assert timeouts["header_read_timeout_s"] == config.header_read_timeout_s
    assert timeouts["shutdown_timeout_s"] == config.shutdown_timeout_s
    assert build_openapi()["info"]["x-fedsim-limits"]["json"]["max_bytes"] == config.max_json_bytes


async def test_openapi_schemas_carry_the_id_and_figure_bounds():
    # Execute
    schemas = build_openapi()["components"]["schemas"]

    # Assert
    registration = schemas["DeviceRegistration"]["properties"]
    for name in ("id", "id_in_group"):
        assert registration[name]["anyOf"][0]["maximum"] == MAX_ID
    assert registration["group"]["maximum"] == MAX_ID
    resources = schemas["Heartbeat"]["properties"]["resources"]["anyOf"][0]
    figure = resources["additionalProperties"]
    assert (figure["minimum"], figure["maximum"]) == (-MAX_FIGURE, MAX_FIGURE)
    assert resources["maxProperties"] == 64
