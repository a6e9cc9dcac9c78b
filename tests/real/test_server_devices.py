"""Device Manager endpoints: registration, tokens and their scopes, heartbeats, removal,
groups, body limits and validation, and persistence across a restart."""

from __future__ import annotations

import pytest

from tests.real.conftest import ADMIN, API, ENROLL, bearer

pytestmark = pytest.mark.asyncio


async def error_of(response) -> dict:
    body = await response.json()
    assert body["error"]["status"] == response.status
    return body["error"]


# -- registration and tokens -------------------------------------------------------------


async def test_enrollment_registers_and_returns_a_device_token(server):
    body = {
        "description": "jetson",
        "group": 1,
        "id_in_group": 0,
        "profile": "client_i7_gtx1080",
        "labels": {"site": "lab"},
        "hardware": {"cpu_count": 12, "memory_bytes": 16e9, "gpu": "GTX 1080"},
        "endpoints": {"node_exporter": "http://10.0.0.4:9100/metrics"},
    }
    r = await server.client.post(f"{API}/devices", json=body, headers=ENROLL)
    assert r.status == 201
    data = await r.json()
    device = data["device"]
    assert device["state"] == "registered"
    assert device["group"] == 1 and device["labels"] == {"site": "lab"}
    assert device["hardware"]["cpu_count"] == 12
    assert device["endpoints"] == body["endpoints"]
    assert len(data["token"]) >= 40

    r = await server.client.get(f"{API}/devices/{device['id']}", headers=bearer(data["token"]))
    assert r.status == 200
    assert (await r.json())["description"] == "jetson"


async def test_missing_or_unknown_token_is_401_with_a_bearer_challenge(server):
    for headers in ({}, bearer("nobody-issued-this"), {"Authorization": "Basic dXNlcjpwdw=="}):
        r = await server.client.get(f"{API}/devices", headers=headers)
        assert r.status == 401
        assert r.headers["WWW-Authenticate"].startswith("Bearer")
        assert (await error_of(r))["message"]


async def test_valid_tokens_outside_their_scope_are_403(server):
    a, token_a = await server.register()
    b, _ = await server.register()
    cases = [
        ("PUT", f"{API}/devices/{b}/heartbeat", token_a, {"resources": {}}),
        ("GET", f"{API}/devices/{b}", token_a, None),
        ("GET", f"{API}/devices/{b}/tasks", token_a, None),
        ("GET", f"{API}/devices", ENROLL, None),
        ("PUT", f"{API}/devices/{a}/heartbeat", ENROLL, {"resources": {}}),
        ("POST", f"{API}/models", token_a, {"name": "m", "architecture": "x"}),
        ("DELETE", f"{API}/devices/{a}", token_a, None),
        ("GET", f"{API}/groups", token_a, None),
    ]
    for method, path, headers, body in cases:
        r = await server.client.request(method, path, headers=headers, json=body)
        assert r.status == 403, (method, path)
        await error_of(r)


async def test_re_registration_needs_the_device_token_and_replaces_it(server):
    id, old = await server.register(group=2)
    r = await server.client.put(f"{API}/devices/{id}/heartbeat", json={}, headers=old)
    assert (await r.json())["state"] == "online"

    # The enrollment token may not take over a registered id...
    r = await server.client.post(f"{API}/devices", json={"id": id, "group": 2}, headers=ENROLL)
    assert r.status == 403
    # ...nor may a device token register another id.
    r = await server.client.post(f"{API}/devices", json={"id": id + 7}, headers=old)
    assert r.status == 403

    r = await server.client.post(
        f"{API}/devices", json={"id": id, "group": 2, "description": "restarted"}, headers=old
    )
    assert r.status == 201
    data = await r.json()
    assert data["device"]["state"] == "online"  # state kept
    assert data["device"]["description"] == "restarted"
    new = bearer(data["token"])
    assert new != old
    assert (await server.client.get(f"{API}/devices/{id}", headers=old)).status == 401
    assert (await server.client.get(f"{API}/devices/{id}", headers=new)).status == 200


async def test_enrollment_may_register_an_unknown_explicit_id(server):
    r = await server.client.post(f"{API}/devices", json={"id": 40, "group": 1}, headers=ENROLL)
    assert r.status == 201
    assert (await r.json())["device"]["id"] == 40
    id, _ = await server.register()
    assert id == 41  # ids are never reused, and follow the highest


async def test_moving_a_device_to_another_group_is_409(server):
    id, token = await server.register(group=1)
    r = await server.client.post(f"{API}/devices", json={"id": id, "group": 3}, headers=token)
    assert r.status == 409


# -- heartbeats, removal, listing ----------------------------------------------------------


async def test_heartbeat_merges_resources_and_brings_the_device_online(server):
    id, token = await server.register()
    r = await server.client.put(
        f"{API}/devices/{id}/heartbeat",
        json={"resources": {"cpu_busy": 0.3, "bandwidth_up": 1e8}},
        headers=token,
    )
    assert r.status == 200
    r = await server.client.put(
        f"{API}/devices/{id}/heartbeat", json={"resources": {"cpu_busy": 0.5}}, headers=token
    )
    record = await r.json()
    assert record["state"] == "online"
    assert record["resources"] == {"cpu_busy": 0.5, "bandwidth_up": 1e8}
    assert record["last_seen"] >= record["registered_at"]


async def test_removed_device_heartbeat_is_410_and_its_id_cannot_return(server):
    id, token = await server.register()
    r = await server.client.delete(f"{API}/devices/{id}", headers=ADMIN)
    assert r.status == 200
    assert (await r.json())["state"] == "removed"
    r = await server.client.put(f"{API}/devices/{id}/heartbeat", json={}, headers=token)
    assert r.status == 410
    assert (await server.client.delete(f"{API}/devices/{id}", headers=ADMIN)).status == 410
    r = await server.client.post(f"{API}/devices", json={"id": id}, headers=ADMIN)
    assert r.status == 409
    assert (await error_of(r))["field"] == "id"


async def test_unknown_device_is_404(server):
    r = await server.client.get(f"{API}/devices/999", headers=ADMIN)
    assert r.status == 404
    r = await server.client.put(f"{API}/devices/999/heartbeat", json={}, headers=ADMIN)
    assert r.status == 404


async def test_list_filters_by_group_and_state(server):
    a, token_a = await server.register(group=1)
    await server.register(group=1)
    c, _ = await server.register(group=2)
    await server.client.put(f"{API}/devices/{a}/heartbeat", json={}, headers=token_a)
    await server.client.delete(f"{API}/devices/{c}", headers=ADMIN)

    async def ids(query: str) -> list[int]:
        r = await server.client.get(f"{API}/devices{query}", headers=ADMIN)
        assert r.status == 200
        return [d["id"] for d in (await r.json())["devices"]]

    assert await ids("") == [a, a + 1]  # removed devices are left out
    assert await ids("?group=1&state=online") == [a]
    assert await ids("?state=removed") == [c]
    for query, field in (("?state=asleep", "state"), ("?group=x", "group")):
        r = await server.client.get(f"{API}/devices{query}", headers=ADMIN)
        assert r.status == 422
        assert (await error_of(r))["field"] == field


async def test_groups_count_devices_and_live_ones(server):
    a, token = await server.register(group=1, group_description="lab")
    await server.register(group=1)  # no description: the group keeps "lab"
    await server.register(group=2)
    await server.client.put(f"{API}/devices/{a}/heartbeat", json={}, headers=token)
    r = await server.client.get(f"{API}/groups", headers=ADMIN)
    assert (await r.json())["groups"] == [
        {"id": 1, "description": "lab", "devices": 2, "online": 1},
        {"id": 2, "description": "", "devices": 1, "online": 0},
    ]
    r = await server.client.get(f"{API}/devices/{a}", headers=ADMIN)
    assert (await r.json())["group_description"] == "lab"


async def test_a_group_is_named_by_its_latest_description(server):
    await server.register(group=3, group_description="old site")
    await server.register(group=3, group_description="new site")
    r = await server.client.get(f"{API}/groups", headers=ADMIN)
    assert (await r.json())["groups"][0]["description"] == "new site"
    r = await server.client.post(
        f"{API}/devices", json={"group": 3, "group_description": 7}, headers=ENROLL
    )
    assert r.status == 422 and (await error_of(r))["field"] == "group_description"


# -- bodies: limits, syntax, schema -------------------------------------------------------


async def test_malformed_json_is_400(server):
    for data in (b"{not json", b"", b'{"resources": {"x": NaN}}'):
        r = await server.client.post(
            f"{API}/devices", data=data, headers={**ENROLL, "Content-Type": "application/json"}
        )
        assert r.status == 400, data
        await error_of(r)


async def test_oversized_json_is_413_declared_or_streamed(make_server):
    server = await make_server(max_json_bytes=1000)
    big = b'{"description": "' + b"x" * 5000 + b'"}'
    r = await server.client.post(f"{API}/devices", data=big, headers=ENROLL)
    assert r.status == 413

    async def chunked():  # no Content-Length: the limit must hold while streaming
        for i in range(0, len(big), 100):
            yield big[i : i + 100]

    r = await server.client.post(f"{API}/devices", data=chunked(), headers=ENROLL)
    assert r.status == 413
    await error_of(r)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"group": "one"}, "group"),
        ({"group": -1}, "group"),
        ({"id": True}, "id"),
        ({"labels": {"k": 3}}, "labels.k"),
        ({"hardware": {"cpu_count": 0}}, "hardware.cpu_count"),
        ({"endpoints": {"agent": "ftp://x"}}, "endpoints.agent"),
        ({"colour": "red"}, "colour"),
        ([1, 2], None),
    ],
)
async def test_schema_violations_are_422_naming_the_field(server, body, field):
    r = await server.client.post(f"{API}/devices", json=body, headers=ENROLL)
    assert r.status == 422
    error = await error_of(r)
    assert error["field"] == field
    if field:
        assert field in error["message"]


async def test_heartbeat_resources_must_be_numbers(server):
    id, token = await server.register()
    r = await server.client.put(
        f"{API}/devices/{id}/heartbeat", json={"resources": {"cpu": "busy"}}, headers=token
    )
    assert r.status == 422
    assert (await error_of(r))["field"] == "resources.cpu"


async def test_unknown_paths_and_methods_answer_json_errors(server):
    r = await server.client.get(f"{API}/nothing-here")
    assert r.status == 404
    await error_of(r)
    r = await server.client.patch(f"{API}/devices", headers=ADMIN)
    assert r.status == 405
    assert "POST" in r.headers["Allow"]
    await error_of(r)


# -- persistence ----------------------------------------------------------------------------


async def test_restart_keeps_devices_and_their_tokens(make_server):
    first = await make_server()
    id, token = await first.register(group=1, hardware={"cpu_count": 4})
    await first.client.put(f"{API}/devices/{id}/heartbeat", json={}, headers=token)
    await first.client.close()

    second = await make_server()
    r = await second.client.get(f"{API}/devices/{id}", headers=token)
    assert r.status == 200
    record = await r.json()
    assert record["state"] == "online"
    assert record["hardware"] == {"cpu_count": 4}
    r = await second.client.put(f"{API}/devices/{id}/heartbeat", json={}, headers=token)
    assert r.status == 200
    new_id, _ = await second.register()
    assert new_id == id + 1


# -- measured profiles ------------------------------------------------------------------------


def measured(model: str = "digits_cnn", overhead_s: float = 6e-4) -> dict:
    """A measured profile as an agent reports it."""
    return {
        "kind": "measured",
        "source": "fedsim agent on host, 2026-01-01, torch 2.x, 1 thread",
        "cpu_model": "AMD EPYC",
        "cpu_cores": 1,
        "memory_gb": 16.0,
        "steps": {
            model: {
                "overhead_s": overhead_s,
                "per_sample_s": 2e-5,
                "residual_s": 1e-5,
                "flops_per_sample": 2006784,
                "batch_sizes": [8, 16, 32],
            }
        },
        "serialize_bytes_per_s": 4e9,
        "load_bytes_per_s": 4e9,
    }


async def test_a_reported_profile_is_kept_and_other_models_steps_stay(server):
    # Prepare
    id, token = await server.register()

    # Execute: two reports, of two models, the first one's model again with new figures.
    r = await server.client.put(f"{API}/devices/{id}/profile", json=measured(), headers=token)
    assert r.status == 200, await r.text()
    await server.client.put(
        f"{API}/devices/{id}/profile", json=measured("mlp", overhead_s=1e-3), headers=token
    )
    record = await (await server.client.get(f"{API}/devices/{id}", headers=ADMIN)).json()

    # Assert
    assert record["measured"]["kind"] == "measured"
    assert record["measured"]["source"].startswith("fedsim agent on host")
    assert sorted(record["measured"]["steps"]) == ["digits_cnn", "mlp"]
    assert record["measured"]["steps"]["mlp"]["overhead_s"] == 1e-3
    assert record["measured_at"] >= record["registered_at"]


async def test_a_reported_profiles_evaluation_step_models_are_kept(server):
    # Prepare
    id, token = await server.register()
    evaluation = {"overhead_s": 4e-4, "per_sample_s": 1.3e-5, "batch_sizes": [32, 128, 512]}

    # Execute: a report with an evaluation step model, then one of another model without.
    r = await server.client.put(
        f"{API}/devices/{id}/profile",
        json={**measured(), "eval_steps": {"digits_cnn": evaluation}},
        headers=token,
    )
    assert r.status == 200, await r.text()
    await server.client.put(f"{API}/devices/{id}/profile", json=measured("mlp"), headers=token)
    record = await (await server.client.get(f"{API}/devices/{id}", headers=ADMIN)).json()

    # Assert
    # The server shows the figures not reported as null, as everywhere in a record.
    shown = {**evaluation, "residual_s": 0.0, "flops_per_sample": None}
    assert record["measured"]["eval_steps"] == {"digits_cnn": shown}
    assert sorted(record["measured"]["steps"]) == ["digits_cnn", "mlp"]


async def test_a_profile_is_reported_by_its_own_device_only_and_checked(server):
    id, token = await server.register()
    _, other_token = await server.register()

    r = await server.client.put(f"{API}/devices/{id}/profile", json=measured(), headers=other_token)
    assert r.status == 403
    bad = measured()
    bad["steps"]["digits_cnn"]["batch_sizes"] = [8, 16]  # two sizes cannot judge a fit
    r = await server.client.put(f"{API}/devices/{id}/profile", json=bad, headers=token)
    assert r.status == 422
    assert (await error_of(r))["field"] == "steps.digits_cnn.batch_sizes"


async def test_a_calibration_request_shows_until_a_report_for_its_model(server):
    # Prepare
    id, token = await server.register()

    # Execute: the admin asks for the mlp; the device's heartbeat answer carries the request.
    r = await server.client.post(
        f"{API}/devices/{id}/calibrate", json={"model": "mlp"}, headers=ADMIN
    )
    assert r.status == 202, await r.text()
    beat = await (
        await server.client.put(f"{API}/devices/{id}/heartbeat", json={}, headers=token)
    ).json()
    # A report of another model leaves it pending; one of the mlp clears it.
    await server.client.put(f"{API}/devices/{id}/profile", json=measured(), headers=token)
    pending = await (await server.client.get(f"{API}/devices/{id}", headers=ADMIN)).json()
    await server.client.put(f"{API}/devices/{id}/profile", json=measured("mlp"), headers=token)
    done = await (await server.client.get(f"{API}/devices/{id}", headers=ADMIN)).json()

    # Assert
    assert beat["calibration_request"]["model"] == "mlp"
    assert pending["calibration_request"]["model"] == "mlp"
    assert done["calibration_request"] is None


async def test_only_the_admin_asks_for_a_calibration_and_not_of_a_removed_device(server):
    id, token = await server.register()
    r = await server.client.post(f"{API}/devices/{id}/calibrate", json={}, headers=token)
    assert r.status == 403
    await server.client.delete(f"{API}/devices/{id}", headers=ADMIN)
    r = await server.client.post(f"{API}/devices/{id}/calibrate", json={}, headers=ADMIN)
    assert r.status == 410


async def ask_for(server, id: int, model: str) -> float:
    """The admin asks device ``id`` to time ``model``; the request's stamp."""
    r = await server.client.post(
        f"{API}/devices/{id}/calibrate", json={"model": model}, headers=ADMIN
    )
    assert r.status == 202, await r.text()
    return (await r.json())["calibration_request"]["requested_at"]


async def test_a_failed_calibration_shows_on_the_record_until_a_new_request(server):
    # Prepare: a request for a model neither the zoo nor any plug-in of the server knows:
    # accepted all the same, as the agent may have a plug-in the server lacks.
    id, token = await server.register()
    asked = await ask_for(server, id, "no_such_model")
    failure = {"requested_at": asked, "reason": "no_such_model: not one of the zoo's"}

    # Execute: the device reports it could not measure; later the admin asks again.
    r = await server.client.put(
        f"{API}/devices/{id}/calibration-failure", json=failure, headers=token
    )
    answered = await r.json()
    failed = await (await server.client.get(f"{API}/devices/{id}", headers=ADMIN)).json()
    await ask_for(server, id, "digits_cnn")
    again = await (await server.client.get(f"{API}/devices/{id}", headers=ADMIN)).json()

    # Assert
    assert r.status == 200
    assert answered["calibration_request"] == failed["calibration_request"]
    request = failed["calibration_request"]
    assert request["model"] == "no_such_model" and request["requested_at"] == asked
    assert request["reason"] == "no_such_model: not one of the zoo's"
    assert request["failed_at"] >= asked
    assert again["calibration_request"]["model"] == "digits_cnn"
    assert again["calibration_request"]["failed_at"] is None
    assert again["calibration_request"]["reason"] is None


async def test_a_failure_of_a_request_that_is_not_the_current_one_is_409(server):
    # Prepare: a request, then a newer one.
    id, token = await server.register()
    first = await ask_for(server, id, "no_such_model")
    await ask_for(server, id, "mlp")

    # Execute
    r = await server.client.put(
        f"{API}/devices/{id}/calibration-failure",
        json={"requested_at": first, "reason": "unknown model"},
        headers=token,
    )
    record = await (await server.client.get(f"{API}/devices/{id}", headers=ADMIN)).json()

    # Assert: refused, and the newer request pending as it was.
    assert r.status == 409
    assert "no calibration request of" in (await error_of(r))["message"]
    assert record["calibration_request"]["model"] == "mlp"
    assert record["calibration_request"]["failed_at"] is None


async def test_only_the_device_itself_or_the_admin_reports_a_calibration_failure(server):
    # Prepare
    id, token = await server.register()
    _, other_token = await server.register()
    asked = await ask_for(server, id, "no_such_model")
    failure = {"requested_at": asked, "reason": "unknown model"}
    path = f"{API}/devices/{id}/calibration-failure"

    # Execute
    statuses = {
        who: (await server.client.put(path, json=failure, headers=headers)).status
        for who, headers in [
            ("another device", other_token),
            ("enrollment", ENROLL),
            ("nobody", {}),
            ("the admin", ADMIN),
            ("the device", token),
        ]
    }

    # Assert
    assert statuses == {
        "another device": 403,
        "enrollment": 403,
        "nobody": 401,
        "the admin": 200,
        "the device": 200,
    }


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"reason": "unknown model"}, "requested_at"),
        ({"requested_at": 1.0}, "reason"),
        ({"requested_at": 1.0, "reason": ""}, "reason"),
        ({"requested_at": 1.0, "reason": "x" * 1025}, "reason"),
        ({"requested_at": "1.0", "reason": "unknown model"}, "requested_at"),
        ({"requested_at": 1.0, "reason": "unknown model", "model": "m"}, "model"),
    ],
)
async def test_a_bad_calibration_failure_is_422_naming_the_field(server, body, field):
    # Prepare
    id, token = await server.register()
    await ask_for(server, id, "no_such_model")

    # Execute
    r = await server.client.put(f"{API}/devices/{id}/calibration-failure", json=body, headers=token)
    record = await (await server.client.get(f"{API}/devices/{id}", headers=ADMIN)).json()

    # Assert
    assert r.status == 422
    assert (await error_of(r))["field"] == field
    assert record["calibration_request"]["failed_at"] is None


async def test_restart_keeps_a_failed_calibration(make_server):
    # Prepare
    first = await make_server()
    id, token = await first.register()
    asked = await ask_for(first, id, "no_such_model")
    await first.client.put(
        f"{API}/devices/{id}/calibration-failure",
        json={"requested_at": asked, "reason": "unknown model"},
        headers=token,
    )
    await first.client.close()

    # Execute
    second = await make_server()
    record = await (await second.client.get(f"{API}/devices/{id}", headers=ADMIN)).json()

    # Assert
    assert record["calibration_request"]["reason"] == "unknown model"
    assert record["calibration_request"]["requested_at"] == asked


async def test_restart_keeps_the_measured_profile_and_the_request(make_server):
    first = await make_server()
    id, token = await first.register()
    await first.client.put(f"{API}/devices/{id}/profile", json=measured(), headers=token)
    await first.client.post(f"{API}/devices/{id}/calibrate", json={"model": "mlp"}, headers=ADMIN)
    await first.client.close()

    second = await make_server()
    record = await (await second.client.get(f"{API}/devices/{id}", headers=ADMIN)).json()
    assert record["measured"]["steps"]["digits_cnn"]["overhead_s"] == 6e-4
    assert record["calibration_request"]["model"] == "mlp"
