"""Prometheus HTTP service discovery: the metrics endpoints of the registered devices.

Each device declares at registration where it serves metrics (``endpoints``: role -> URL, e.g.
``agent`` and ``node_exporter``). ``GET /api/v1/sd/targets`` turns them into Prometheus's
``http_sd_configs`` format, one target group per device and role, so that Prometheus follows
registrations and removals without a restart. Offline devices stay listed, so an endpoint that
stopped answering shows as down (``up == 0``) instead of vanishing; removed devices are left
out.

Anyone with the enrollment token can register, so a declared URL is not trusted: Prometheus
would fetch whatever it names (a cloud's link-local metadata address, an internal service).
An endpoint is listed only when its scheme is http or https and its host is an IP address
that is the one the device registered from, or lies in a network the operator allowed
(``sd_allowed_networks``, ``--sd-allow``). A host name is never listed: what it resolves to
can change after the check. Endpoints left out are logged once each.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from fedsim.core.registry import DeviceRegistry
from fedsim.real.server.agents import AgentBook
from fedsim.real.server.offload import Offload
from fedsim.real.server.responses import json_response

log = logging.getLogger(__name__)

_DEFAULT_PORTS = {"http": 80, "https": 443}

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class DiscoveryHandlers:
    """``/sd/targets``."""

    def __init__(
        self,
        *,
        registry: DeviceRegistry,
        agents: AgentBook,
        offload: Offload,
        allowed_networks: Sequence[IPNetwork] = (),
    ) -> None:
        self._registry = registry
        self._agents = agents
        self._offload = offload
        self._allowed_networks = tuple(allowed_networks)
        self._reported: set[tuple[int, str, str]] = set()  # (device, role, url) logged as left out

    async def targets(self, request: web.Request) -> web.Response:
        return json_response(await self._offload(self._target_groups))

    def _target_groups(self) -> list[dict[str, Any]]:
        groups = []
        for record in self._registry.list():  # removed devices are left out
            details = self._agents.details(record.id)
            for role, url in sorted(details.endpoints.items()):
                labels = {"fedsim_device": str(record.id), "fedsim_group": str(record.group)}
                refusal = endpoint_refusal(url, details.address, self._allowed_networks)
                group = None if refusal else target_group(url, role=role, labels=labels)
                if group is not None:
                    groups.append(group)
                elif (record.id, role, url) not in self._reported:
                    # Prometheus asks every refresh interval: one line per endpoint is enough.
                    self._reported.add((record.id, role, url))
                    log.warning(
                        "device %d: its %s endpoint %r is not listed for scraping: %s",
                        record.id,
                        role,
                        url,
                        refusal or "no host or port to scrape",
                    )
        return groups


def endpoint_refusal(url: str, address: str, allowed: Sequence[IPNetwork]) -> str | None:
    """Why service discovery must not hand ``url`` to Prometheus, or None when it may: the
    scheme is http(s) and the host is an IP address, either ``address`` (where the device
    registered from) or one in an ``allowed`` network."""
    parts = urlsplit(url)
    if parts.scheme not in _DEFAULT_PORTS:
        return f"scheme {parts.scheme!r} is not http or https"
    try:
        host = _plain(ipaddress.ip_address(parts.hostname or ""))
    except ValueError:
        return "its host is not an IP address"
    try:
        registered = _plain(ipaddress.ip_address(address))
    except ValueError:
        registered = None  # registered before addresses were kept, or from a Unix socket
    if host == registered or any(host in network for network in allowed):
        return None
    where = f"the address it registered from ({address})" if address else "an unknown address"
    return f"{host} is neither {where} nor in a network allowed by --sd-allow"


def _plain(ip: IPAddress) -> IPAddress:
    """An IPv4 address seen through an IPv6 socket (``::ffff:a.b.c.d``) as the IPv4 one."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def target_group(url: str, *, role: str, labels: dict[str, str]) -> dict[str, Any] | None:
    """The http_sd target group that scrapes ``url``, labelled with ``labels`` and ``role``.

    The URL's scheme and path become Prometheus's ``__scheme__`` and ``__metrics_path__``; a URL
    without a port gets its scheme's default one. A query string is not carried over (a scrape's
    parameters belong to the scrape config). None for a URL Prometheus could not scrape (no
    host, a port that is not a number): registration checks only the scheme, and one bad
    declaration must not hide every other target.
    """
    parts = urlsplit(url)
    try:
        port = parts.port if parts.port is not None else _DEFAULT_PORTS.get(parts.scheme)
    except ValueError:
        return None
    if not parts.hostname or port is None:
        return None
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return {
        "targets": [f"{host}:{port}"],
        "labels": {
            **labels,
            "fedsim_role": role,
            "__scheme__": parts.scheme,
            "__metrics_path__": parts.path or "/metrics",
        },
    }
