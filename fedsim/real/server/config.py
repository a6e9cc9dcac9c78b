"""The server's configuration: one frozen dataclass, built by the CLI or by tests."""

from __future__ import annotations

import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path

MiB = 1 << 20
GiB = 1 << 30


@dataclass(frozen=True, kw_only=True)
class ServerConfig:
    """Everything ``init_app`` and ``run_server`` need; checked on construction.

    ``data_dir`` holds ``registry/`` (devices, device tokens) and ``repository/`` (models,
    versions, deployments) and ``uploads/`` (task results being received). TLS is on when both
    ``cert_file`` and ``key_file`` are given; ``client_ca_file`` makes it mutual: a client
    must present a certificate signed by that CA, or the handshake fails (tokens still apply).
    """

    data_dir: Path
    admin_token: str
    enrollment_token: str
    # Reads what the admin reads (the dashboard, devices, models, jobs), changes nothing.
    viewer_token: str | None = None
    host: str = "127.0.0.1"
    port: int = 8080
    patience_s: float = 30.0  # a device silent for longer is offline
    max_json_bytes: int = MiB
    max_blob_bytes: int = 2 * GiB
    # The longest wait for the next bytes of a request body; a slow link may take much
    # longer for the whole body, a stalled one never sends more.
    body_read_timeout_s: float = 60.0
    # The longest a connection may take to deliver a whole request line and headers, counted
    # from its opening or its previous response; also how long an idle one is kept open.
    header_read_timeout_s: float = 10.0
    cert_file: Path | None = None
    key_file: Path | None = None
    client_ca_file: Path | None = None
    long_poll_max_s: float = 60.0
    # How long a stopping server lets requests in flight (uploads) finish before cancelling.
    shutdown_timeout_s: float = 30.0
    # The dashboard's monitoring: Prometheus's base URL when there is one, else the server's
    # own heartbeat history, at most one reading per device every history_interval_s and
    # history_samples of them (1440 at 5 s: two hours).
    prometheus_url: str | None = None
    history_samples: int = 1440
    history_interval_s: float = 5.0
    # Networks whose addresses a device may declare as metrics endpoints beside the address
    # it registered from; service discovery hands Prometheus no other (CIDR strings).
    sd_allowed_networks: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "data_dir", Path(self.data_dir))
        for name in ("cert_file", "key_file", "client_ca_file"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, Path(value))
        if not self.admin_token or not self.enrollment_token:
            raise ValueError("admin_token and enrollment_token must be non-empty")
        if self.admin_token == self.enrollment_token:
            # Every device holds the enrollment token; it must not open the admin endpoints.
            raise ValueError("admin_token and enrollment_token must differ")
        if self.viewer_token is not None:
            if not self.viewer_token:
                raise ValueError("viewer_token must be non-empty when given")
            # Each token names one role: a shared one would take the other's rights.
            if self.viewer_token in (self.admin_token, self.enrollment_token):
                raise ValueError("viewer_token must differ from admin_token and enrollment_token")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in 0..65535, got {self.port}")
        positive = ("patience_s", "body_read_timeout_s", "header_read_timeout_s", "long_poll_max_s")
        for name in positive:
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.shutdown_timeout_s < 0:
            raise ValueError(f"shutdown_timeout_s must be >= 0, got {self.shutdown_timeout_s}")
        for name in ("max_json_bytes", "max_blob_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.prometheus_url is not None and not self.prometheus_url.startswith(
            ("http://", "https://")
        ):
            raise ValueError(
                f"prometheus_url {self.prometheus_url!r}: expected http(s)://HOST:PORT"
            )
        if self.history_samples < 1:
            raise ValueError(f"history_samples must be >= 1, got {self.history_samples}")
        if self.history_interval_s < 0:
            raise ValueError(f"history_interval_s must be >= 0, got {self.history_interval_s}")
        object.__setattr__(self, "sd_allowed_networks", tuple(self.sd_allowed_networks))
        for cidr in self.sd_allowed_networks:
            try:
                ipaddress.ip_network(cidr)
            except ValueError as e:
                raise ValueError(f"sd_allowed_networks: {e}") from None
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("TLS needs both cert_file and key_file, or neither")
        if self.client_ca_file is not None and self.cert_file is None:
            # Client certificates are asked for in the TLS handshake: no TLS, no handshake.
            raise ValueError("client_ca_file (mutual TLS) needs cert_file and key_file")

    @property
    def tls(self) -> bool:
        return self.cert_file is not None

    @property
    def mutual_tls(self) -> bool:
        return self.client_ca_file is not None

    def ssl_context(self) -> ssl.SSLContext | None:
        """The server's TLS context, None without TLS; requires client certificates signed
        by ``client_ca_file`` when it is given. ``OSError``/``ssl.SSLError`` for an unreadable
        or mismatched file."""
        if self.cert_file is None or self.key_file is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert_file, self.key_file)
        if self.client_ca_file is not None:
            context.load_verify_locations(cafile=self.client_ca_file)
            context.verify_mode = ssl.CERT_REQUIRED
        return context

    @property
    def sd_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        return tuple(ipaddress.ip_network(cidr) for cidr in self.sd_allowed_networks)
