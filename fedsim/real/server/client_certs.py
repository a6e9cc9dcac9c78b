"""Client certificates under mutual TLS, tied to the devices that present them in the log.

The TLS handshake has checked the certificate already (signed by ``client_ca_file``, in its
validity period); the bearer token then says which device a request speaks for. This
middleware puts the two side by side: a registration logs the certificate's common name next
to the device id it got, and a request on a device's own paths (``/devices/{id}/...``) made
with a certificate named for another device (``device-N``, as ``fedsim certs`` names them) is
logged as a warning. It refuses nothing: a certificate shared by several devices, or named
otherwise, is the operator's choice.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable

from aiohttp import web

from fedsim.real.protocol import Paths

log = logging.getLogger("fedsim.server.tls")

_DEVICE_NAME = re.compile(r"^device-(\d+)$")  # fedsim.certs.device_name's form
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def common_name(request: web.BaseRequest) -> str | None:
    """The common name of the client certificate ``request`` came with, if any."""
    transport = request.transport
    peer = transport.get_extra_info("peercert") if transport is not None else None
    if not peer:
        return None
    for rdn in peer.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None


@web.middleware
async def log_client_certificates(request: web.Request, handler: Handler) -> web.StreamResponse:
    response = await handler(request)
    name = common_name(request)
    if name is None:
        return response
    route = request.match_info.route.resource
    canonical = route.canonical if route is not None else ""
    if canonical == Paths.DEVICES and request.method == "POST" and response.status == 201:
        device = _registered_id(response)
        log.info("device %s registered with the client certificate of %r", device, name)
    elif "id" in request.match_info and canonical.startswith(Paths.DEVICES + "/"):
        named = _DEVICE_NAME.match(name)
        if named and named.group(1) != request.match_info["id"]:
            log.warning(
                "%s %s: device %s's path with the client certificate of %r",
                request.method,
                canonical,
                request.match_info["id"],
                name,
            )
    return response


def _registered_id(response: web.StreamResponse) -> object:
    """The device id in a registration's answer (``{"device": {"id": N}, ...}``)."""
    body = response.body if isinstance(response, web.Response) else None
    try:
        return json.loads(body)["device"]["id"] if isinstance(body, bytes) else "?"
    except (ValueError, KeyError, TypeError):
        return "?"
