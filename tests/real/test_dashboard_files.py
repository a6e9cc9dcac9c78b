"""The dashboard's static files: served without a token from the package, nothing outside it,
with headers that keep the page to this server."""

from __future__ import annotations

import pytest

from fedsim.real.server.handlers.dashboard import ROOT

pytestmark = pytest.mark.asyncio


async def test_the_page_is_served_from_the_package_without_a_token(server):
    r = await server.client.get("/dashboard/")
    assert r.status == 200
    assert r.headers["Content-Type"].startswith("text/html")
    assert await r.read() == (ROOT / "index.html").read_bytes()
    policy = r.headers["Content-Security-Policy"]
    assert "default-src 'self'" in policy and "connect-src 'self'" in policy
    assert r.headers["X-Content-Type-Options"] == "nosniff"


async def test_the_bare_path_redirects_to_the_page(server):
    r = await server.client.get("/dashboard", allow_redirects=False)
    assert r.status == 308 and r.headers["Location"] == "/dashboard/"


async def test_every_shipped_file_is_served_with_its_type(server):
    shipped = [p for p in ROOT.rglob("*") if p.is_file()]
    assert any(p.suffix == ".js" for p in shipped)
    for path in shipped:
        r = await server.client.get(f"/dashboard/{path.relative_to(ROOT).as_posix()}")
        assert r.status == 200, path
        assert await r.read() == path.read_bytes()
        if path.suffix == ".js":
            assert r.headers["Content-Type"].startswith("text/javascript")


@pytest.mark.parametrize(
    "path", ["nothing.js", "..%2f..%2fapp.py", "%2e%2e/%2e%2e/app.py", "vendor/../../app.py"]
)
async def test_nothing_outside_the_dashboard_is_served(server, path):
    r = await server.client.get(f"/dashboard/{path}")
    assert r.status == 404


async def test_the_data_still_needs_the_admin_token(server):
    r = await server.client.get("/api/v1/devices")
    assert r.status == 401
