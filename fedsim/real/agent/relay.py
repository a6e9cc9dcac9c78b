"""Model versions a group's aggregator holds for its members: the agent's side of a relay task.

In a hierarchical round the aggregator downloads the version from the server once, and the
members of its group fetch it from the aggregator's agent instead of from the server, over the
agent's own HTTP server (the one that serves ``/metrics``). Each held version is guarded by the
token its relay task carried; the members' tasks carry the same token, so only the devices the
coordinator sent there can fetch it.
"""

from __future__ import annotations

import hmac
from collections import OrderedDict
from urllib.parse import quote

from aiohttp import web

# A round relays one version; the one before stays for members still fetching it.
KEEP_VERSIONS = 2
PATH = "/models/{name}/versions/{version}/blob"


class HeldModels:
    """The versions this agent relays, newest last; serves them at :data:`PATH`."""

    def __init__(self, *, keep: int = KEEP_VERSIONS) -> None:
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self._keep = keep
        self._held: OrderedDict[tuple[str, str], tuple[bytes, str]] = OrderedDict()

    def hold(self, name: str, version: int, blob: bytes, token: str) -> str:
        """Keep ``blob`` for callers presenting ``token``; returns its path on the server."""
        if not token:
            raise ValueError("a held model needs a token to guard it")
        key = (name, str(version))
        self._held.pop(key, None)
        self._held[key] = (blob, token)
        while len(self._held) > self._keep:
            self._held.popitem(last=False)
        return PATH.format(name=quote(name, safe=""), version=version)

    def __len__(self) -> int:
        return len(self._held)

    async def serve(self, request: web.Request) -> web.Response:
        """``GET`` of a held version, with ``Authorization: Bearer <its relay token>``."""
        key = (request.match_info["name"], request.match_info["version"])
        held = self._held.get(key)
        presented = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if held is None:
            raise web.HTTPNotFound(text=f"this device holds no version {key[1]} of {key[0]}")
        blob, token = held
        if not hmac.compare_digest(presented.encode(), token.encode()):
            raise web.HTTPUnauthorized(text="a held model needs its relay task's token")
        return web.Response(body=blob, content_type="application/octet-stream")
