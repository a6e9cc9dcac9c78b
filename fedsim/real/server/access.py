"""The server's access log: one line per request, with nothing in it that could be a secret.

aiohttp's default access log writes the request line as it came, query string included, and
the ``Referer`` header. A client that puts a token in a query string (refused: tokens travel
in ``Authorization`` only) would find it written to the log, and a dashboard page's URL could
carry one in the ``Referer``. This logger writes the path alone and no header, so what a
client sends beyond the path never reaches a log.
"""

from __future__ import annotations

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger


class AccessLogger(AbstractAccessLogger):
    """``REMOTE "METHOD PATH" STATUS BYTES SECONDS``: the path without its query string."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info(
            '%s "%s %s" %d %d %.3fs',
            request.remote,
            request.method,
            request.rel_url.raw_path,  # raw: percent-escapes kept, so a line stays one line
            response.status,
            response.body_length,
            time,
        )
