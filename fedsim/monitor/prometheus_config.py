"""A ``prometheus.yml`` that monitors a fedsim deployment.

Two scrape jobs: the server's own ``/metrics``, and the devices, which Prometheus discovers
through the server (``GET /api/v1/sd/targets``, ``http_sd_configs``) with the viewer token (or
the admin token) read from a file, so that it follows registrations and removals without a
restart. The discovered targets carry ``fedsim_device``, ``fedsim_group`` and ``fedsim_role``
labels, which every scraped series keeps; :mod:`fedsim.monitor.promql` queries by them.
"""

from __future__ import annotations

import re
from pathlib import PurePath
from typing import Any
from urllib.parse import urlsplit

import yaml

from fedsim.real.protocol import API, Paths

SERVER_JOB = "fedsim-server"
DEVICES_JOB = "fedsim-devices"
# Prometheus's duration syntax (units largest first, each at most once), e.g. 5s, 1m30s, 500ms.
_DURATION = re.compile(r"^((\d+)y)?((\d+)w)?((\d+)d)?((\d+)h)?((\d+)m)?((\d+)s)?((\d+)ms)?$")


def check_duration(text: str) -> str:
    """``text`` if Prometheus accepts it as a non-zero duration; ``ValueError`` otherwise."""
    if not text or not _DURATION.match(text) or not any(c in "123456789" for c in text):
        raise ValueError(f"{text!r} is not a Prometheus duration such as 5s, 1m or 500ms")
    return text


def build_config(
    *,
    server: str,
    token_file: str | PurePath,
    scrape_interval: str = "5s",
    sd_refresh_interval: str = "30s",
    ca_file: str | PurePath | None = None,
    cert_file: str | PurePath | None = None,
    key_file: str | PurePath | None = None,
) -> dict[str, Any]:
    """The configuration as a mapping; ``render`` writes it as YAML.

    ``server`` is the server's base URL (``http(s)://host:port``, a trailing ``/api/v1``
    accepted). ``token_file`` holds the viewer (or admin) token; Prometheus reads it on every
    refresh, so a rotated token needs no reload (a relative path is relative to the
    configuration file).
    ``ca_file`` verifies an https server; ``cert_file`` and ``key_file`` are the client
    certificate Prometheus presents to a server that requires mutual TLS (``--client-ca``),
    on its scrapes of the server and its service-discovery requests; the devices' own
    endpoints are scraped as discovered. ``ValueError`` names a bad argument.
    """
    parts = urlsplit(server)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"server {server!r}: expected http(s)://HOST[:PORT]")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise ValueError(f"server {server!r}: the port is not a number") from None
    check_duration(scrape_interval)
    check_duration(sd_refresh_interval)
    prefix = parts.path.rstrip("/").removesuffix(API)  # a server behind a path prefix
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    address = f"{host}:{port}"
    base = f"{parts.scheme}://{address}{prefix}"
    if (cert_file is None) != (key_file is None):
        raise ValueError("a client certificate needs both cert_file and key_file")
    files = {"ca_file": ca_file, "cert_file": cert_file, "key_file": key_file}
    settings = {name: str(value) for name, value in files.items() if value is not None}

    def tls() -> dict[str, dict[str, str]]:
        # A copy for each place: one dict in two places would be written as a YAML anchor
        # and an alias to it (&id001, *id001), which a reader of the file resolves by hand.
        return {"tls_config": dict(settings)} if settings else {}

    server_job = {
        "job_name": SERVER_JOB,
        "scheme": parts.scheme,
        "metrics_path": f"{prefix}/metrics",
        "static_configs": [{"targets": [address], "labels": {"fedsim_role": "server"}}],
        **tls(),
    }
    devices_job = {
        "job_name": DEVICES_JOB,
        "http_sd_configs": [
            {
                "url": f"{base}{Paths.SD_TARGETS}",
                "refresh_interval": sd_refresh_interval,
                "authorization": {"type": "Bearer", "credentials_file": str(token_file)},
                **tls(),
            }
        ],
        # The discovered labels are target labels already and so kept on every series; these
        # rules drop anything discovered without them, which fedsim.monitor.promql could not
        # attribute to a device. A device's own endpoints use their scheme and path from
        # discovery (__scheme__, __metrics_path__), so no scheme is set here.
        "relabel_configs": [
            {"source_labels": ["fedsim_device"], "regex": r"\d+", "action": "keep"},
            {"source_labels": ["fedsim_group"], "regex": r"-?\d+", "action": "keep"},
            {"source_labels": ["fedsim_role"], "regex": ".+", "action": "keep"},
        ],
    }
    return {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
        "scrape_configs": [server_job, devices_job],
    }


def render(config: dict[str, Any]) -> str:
    """``config`` as the text of a ``prometheus.yml``."""
    header = (
        "# Written by `fedsim prometheus-config`. The devices job discovers the agents and\n"
        "# node_exporters that devices declared at registration, through the fedsim server.\n"
    )
    return header + yaml.safe_dump(config, sort_keys=False, default_flow_style=False)
