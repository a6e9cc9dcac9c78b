"""The server's access log: one line per request, with nothing in it that could be a secret.

aiohttp's default access log writes the request line as it came, query string included, and
the ``Referer`` header. A client that puts a token in a query string (refused: tokens travel
in ``Authorization`` only) would find it written to the log, and a dashboard page's URL could
carry one in the ``Referer``. This logger writes the path alone and no header, so what a
client sends beyond the path never reaches a log.

aiohttp's own error log is kept as clean: a request it cannot even parse (a header holding a
NUL byte, say) is logged with a traceback that quotes the offending line, which may be an
``Authorization`` header; :data:`server_log` writes one line with the reason alone instead.
"""

from __future__ import annotations

import logging

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.http_exceptions import HttpProcessingError


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


class _Unparsable(logging.Filter):
    """A request aiohttp could not parse: one warning line with the reason, no traceback (which
    quotes the request's bytes) and no copy of what was sent."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, HttpProcessingError):
            record.msg = f"{record.msg}: {error.code} {error.message.splitlines()[0][:200]}"
            record.exc_info = None
            record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


server_log = logging.getLogger("fedsim.server.http")
"""What aiohttp logs of the connections it serves, requests it cannot parse as one line."""
server_log.addFilter(_Unparsable())
