"""``/dashboard/``: the built-in Data Visualizer's static files, served from the package.

The page and its assets are public, like any login page: they hold no data. Everything they
show comes from the REST API with the token the user enters (admin, or the read-only viewer
token, which is all the page needs), so the dashboard has no access the API would not give.
Responses carry a Content-Security-Policy that allows nothing but this server, so the page
cannot load or send anything elsewhere.
"""

from __future__ import annotations

import mimetypes
from importlib.resources import files
from pathlib import Path

from aiohttp import web

from fedsim.real.server.errors import ApiError

ROOT = Path(str(files("fedsim.real.server") / "dashboard"))
HEADERS = {
    # uPlot positions its elements with inline styles; scripts come only from this server.
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # Small files; always revalidated, so an upgraded server serves its own dashboard.
    "Cache-Control": "no-cache",
}


class DashboardHandlers:
    """``GET /dashboard`` (redirect), ``GET /dashboard/`` and ``GET /dashboard/{path}``."""

    def __init__(self, root: Path = ROOT) -> None:
        self._root = root.resolve()

    async def redirect(self, request: web.Request) -> web.Response:
        raise web.HTTPPermanentRedirect("/dashboard/")

    async def index(self, request: web.Request) -> web.StreamResponse:
        return self._file(self._root / "index.html")

    async def asset(self, request: web.Request) -> web.StreamResponse:
        path = (self._root / request.match_info["path"]).resolve()
        if not path.is_relative_to(self._root) or not path.is_file():
            raise ApiError(404, f"no dashboard file {request.match_info['path']!r}")
        return self._file(path)

    def _file(self, path: Path) -> web.StreamResponse:
        if not path.is_file():
            raise ApiError(404, "the dashboard is not installed with this server")
        kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        if path.suffix == ".js":
            kind = "text/javascript"
        headers = {
            **HEADERS,
            "Content-Type": f"{kind}; charset=utf-8" if kind.startswith("text/") else kind,
        }
        return web.FileResponse(path, headers=headers)
