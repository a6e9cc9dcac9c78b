"""AI Model Repository endpoints: models, streamed version uploads and downloads (ETag,
Range, If-None-Match), refusals that store nothing, and deployments."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from fedsim.store.safetensors_io import encode
from tests.real.conftest import ADMIN, API, ENROLL, blob, leftovers

pytestmark = pytest.mark.asyncio


async def versions(server, name: str = "m") -> list[int]:
    r = await server.client.get(f"{API}/models/{name}/versions", headers=ADMIN)
    assert r.status == 200
    return [v["version"] for v in (await r.json())["versions"]]


async def test_models_register_list_get_with_stats(server):
    await server.model("m", blob(1.0), blob(2.0))
    r = await server.client.post(
        f"{API}/models", json={"name": "m", "architecture": "mlp"}, headers=ADMIN
    )
    assert r.status == 409
    r = await server.client.post(
        f"{API}/models", json={"name": "../etc", "architecture": "mlp"}, headers=ADMIN
    )
    assert r.status == 422
    assert (await r.json())["error"]["field"] == "name"

    _, device = await server.register()
    r = await server.client.get(f"{API}/models", headers=device)
    assert [m["name"] for m in (await r.json())["models"]] == ["m"]
    r = await server.client.get(f"{API}/models/m", headers=device)
    stats = (await r.json())["stats"]
    assert stats["versions"] == 2 and stats["latest_version"] == 2
    assert (await server.client.get(f"{API}/models/nope", headers=ADMIN)).status == 404
    assert (await server.client.get(f"{API}/models", headers=ENROLL)).status == 403


async def test_version_upload_and_download_round_trip(server):
    data = blob(3.0, n=1000)
    sha = hashlib.sha256(data).hexdigest()
    await server.model("m")
    r = await server.client.post(
        f"{API}/models/m/versions?round=4",
        data=data,
        headers={**ADMIN, "X-Fedsim-Metrics": '{"accuracy": 0.9}'},
    )
    assert r.status == 201
    info = await r.json()
    assert info["version"] == 1 and info["sha256"] == sha and info["size"] == len(data)
    assert info["round"] == 4 and info["metrics"] == {"accuracy": 0.9}
    assert r.headers["Location"].endswith("/versions/1")

    _, device = await server.register()
    for version in ("1", "latest"):
        r = await server.client.get(f"{API}/models/m/versions/{version}", headers=device)
        assert (await r.json())["sha256"] == sha
        r = await server.client.get(f"{API}/models/m/versions/{version}/blob", headers=device)
        assert r.status == 200
        assert r.headers["ETag"] == f'"{sha}"'
        assert r.headers["Accept-Ranges"] == "bytes"
        assert await r.read() == data


async def test_download_ranges_and_conditional_requests(server):
    data = blob(5.0, n=500)
    await server.model("m", data)
    url = f"{API}/models/m/versions/1/blob"
    etag = f'"{hashlib.sha256(data).hexdigest()}"'
    size = len(data)

    for header, start, end in (  # end inclusive, as Content-Range has it
        ("bytes=100-1099", 100, 1099),
        ("bytes=1000-", 1000, size - 1),
        ("bytes=-300", size - 300, size - 1),
        (f"bytes=10-{size + 50}", 10, size - 1),  # clipped to the end
    ):
        r = await server.client.get(url, headers={**ADMIN, "Range": header})
        assert r.status == 206, header
        assert r.headers["Content-Range"] == f"bytes {start}-{end}/{size}"
        assert await r.read() == data[start : end + 1]

    r = await server.client.get(url, headers={**ADMIN, "Range": f"bytes={size}-"})
    assert r.status == 416
    assert r.headers["Content-Range"] == f"bytes */{size}"
    # A range for other content (If-Range no longer matching) gets the whole blob.
    r = await server.client.get(url, headers={**ADMIN, "Range": "bytes=0-9", "If-Range": '"old"'})
    assert r.status == 200 and await r.read() == data

    r = await server.client.get(url, headers={**ADMIN, "If-None-Match": etag})
    assert r.status == 304
    assert r.headers["ETag"] == etag
    r = await server.client.get(url, headers={**ADMIN, "If-None-Match": '"other"'})
    assert r.status == 200


async def test_non_safetensors_upload_is_422_and_stores_nothing(server):
    await server.model("m", blob(1.0))
    for bad in (b"not a model at all", b"\xff" * 8 + b"{}", blob(1.0)[:-3]):
        r = await server.client.post(f"{API}/models/m/versions", data=bad, headers=ADMIN)
        assert r.status == 422
        assert "safetensors" in (await r.json())["error"]["message"]
    assert await versions(server) == [1]
    assert leftovers(server) == []


async def test_mismatched_layout_is_422(server):
    await server.model("m", blob(1.0, n=4))
    r = await server.client.post(f"{API}/models/m/versions", data=blob(1.0, n=5), headers=ADMIN)
    assert r.status == 422
    assert "shape" in (await r.json())["error"]["message"]
    other = encode({"w": np.zeros((4, 3), np.float64), "b": np.zeros(3, np.float32)})
    r = await server.client.post(f"{API}/models/m/versions", data=other, headers=ADMIN)
    assert r.status == 422
    assert await versions(server) == [1]
    assert leftovers(server) == []


async def test_hostile_model_files_are_422_and_the_model_stays_whole(server):
    # Issue 13, items 5 and 15: a header nested 50,000 deep answered 500; NaN and infinite
    # weights were stored.
    await server.model("m", blob(1.0))
    header = b'{"w": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"
    deep = len(header).to_bytes(8, "little") + header
    nan = encode({"w": np.full((4, 3), np.nan, np.float32), "b": np.zeros(3, np.float32)})
    inf = encode({"w": np.zeros((4, 3), np.float32), "b": np.array([0, 0, -np.inf], np.float32)})
    refusals = {}
    for name, data in (("deep", deep), ("nan", nan), ("inf", inf)):
        r = await server.client.post(f"{API}/models/m/versions", data=data, headers=ADMIN)
        refusals[name] = (r.status, (await r.json())["error"]["message"])
    assert refusals == {
        "deep": (422, "not a safetensors file: header breaks a JSON limit "
                      "(nested deeper than 32 levels)"),
        "nan": (422, "tensor 'w': non-finite value nan at index [0, 0]; "
                     "weights must be finite numbers"),
        "inf": (422, "tensor 'b': non-finite value -inf at index [2]; "
                     "weights must be finite numbers"),
    }  # fmt: skip
    assert await versions(server) == [1]
    r = await server.client.get(f"{API}/models/m", headers=ADMIN)
    assert r.status == 200
    assert leftovers(server) == []


async def test_oversized_blob_is_413_declared_or_streamed(make_server):
    server = await make_server(max_blob_bytes=10_000)
    await server.model("m")
    data = blob(1.0, n=2000)  # ~32 kB
    r = await server.client.post(f"{API}/models/m/versions", data=data, headers=ADMIN)
    assert r.status == 413

    async def chunked():
        for i in range(0, len(data), 1000):
            yield data[i : i + 1000]

    r = await server.client.post(f"{API}/models/m/versions", data=chunked(), headers=ADMIN)
    assert r.status == 413
    assert await versions(server) == []
    assert leftovers(server) == []


async def test_upload_refusals_before_the_body(server):
    r = await server.client.post(f"{API}/models/nope/versions", data=blob(), headers=ADMIN)
    assert r.status == 404
    await server.model("m", blob())
    r = await server.client.post(f"{API}/models/m/versions?parent=9", data=blob(), headers=ADMIN)
    assert (await r.json())["error"]["field"] == "parent"
    r = await server.client.post(
        f"{API}/models/m/versions", data=blob(), headers={**ADMIN, "X-Fedsim-Metrics": "{bad"}
    )
    assert r.status == 400
    r = await server.client.post(
        f"{API}/models/m/versions", data=blob(), headers={**ADMIN, "X-Fedsim-Metrics": '{"a": "b"}'}
    )
    assert r.status == 422
    assert (await r.json())["error"]["field"] == "X-Fedsim-Metrics.a"
    _, device = await server.register()
    r = await server.client.post(f"{API}/models/m/versions", data=blob(), headers=device)
    assert r.status == 403
    assert await versions(server) == [1]


async def test_unknown_version_is_404(server):
    await server.model("m")
    for path in ("versions/latest", "versions/3", "versions/3/blob"):
        r = await server.client.get(f"{API}/models/m/{path}", headers=ADMIN)
        assert r.status == 404, path


# -- deployments ------------------------------------------------------------------------------


async def test_deployment_to_devices_and_groups_and_progress(server):
    await server.model("m", blob())
    a, token_a = await server.register(group=1)
    b, _ = await server.register(group=2)
    c, token_c = await server.register(group=2)
    outsider, token_x = await server.register(group=3)
    r = await server.client.post(
        f"{API}/deployments",
        json={"model": "m", "version": 1, "devices": [a], "groups": [2]},
        headers=ADMIN,
    )
    assert r.status == 201
    deployment = await r.json()
    assert deployment["devices"] == {str(a): "pending", str(b): "pending", str(c): "pending"}
    url = f"{API}/deployments/{deployment['id']}"

    r = await server.client.put(
        f"{url}/devices/{a}", json={"state": "downloading"}, headers=token_a
    )
    assert r.status == 200
    r = await server.client.put(f"{url}/devices/{a}", json={"state": "deployed"}, headers=token_a)
    assert (await r.json())["devices"][str(a)] == "deployed"
    # Final states are final; a device reports only for itself; unknown states are refused.
    r = await server.client.put(f"{url}/devices/{a}", json={"state": "failed"}, headers=token_a)
    assert r.status == 409
    r = await server.client.put(f"{url}/devices/{b}", json={"state": "failed"}, headers=token_c)
    assert r.status == 403
    r = await server.client.put(f"{url}/devices/{c}", json={"state": "done"}, headers=token_c)
    assert (await r.json())["error"]["field"] == "state"
    r = await server.client.put(
        f"{url}/devices/{outsider}", json={"state": "failed"}, headers=token_x
    )
    assert r.status == 404

    assert (await server.client.get(url, headers=token_c)).status == 200
    assert (await server.client.get(url, headers=token_x)).status == 403
    r = await server.client.get(f"{API}/deployments?model=m", headers=ADMIN)
    assert [d["id"] for d in (await r.json())["deployments"]] == [deployment["id"]]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"model": "nope", "version": 1, "devices": [0]}, "model"),
        ({"model": "m", "version": 7, "devices": [0]}, "version"),
        ({"model": "m", "version": 1, "devices": [0, 99]}, "devices[1]"),
        ({"model": "m", "version": 1, "groups": [42]}, "groups[0]"),
        ({"model": "m", "version": 1}, "devices"),
        ({"model": "m", "version": 1, "devices": [0, 0]}, "devices[1]"),
        ({"model": "m", "devices": [0]}, "version"),
    ],
)
async def test_deployment_refusals_name_the_field(server, body, field):
    await server.model("m", blob())
    await server.register(group=1)
    r = await server.client.post(f"{API}/deployments", json=body, headers=ADMIN)
    assert r.status == 422
    assert (await r.json())["error"]["field"] == field
