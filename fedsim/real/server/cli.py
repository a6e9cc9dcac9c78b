"""``fedsim server``: serve the Device Manager and the AI Model Repository.

``main(argv)`` takes the arguments after ``server``; ``fedsim/__main__.py`` dispatches to it.
Tokens come from the environment by preference (a command line is visible to every user of
the machine through ``ps``), and the server refuses to start without the admin and enrollment
tokens; the read-only viewer token is optional.
"""

from __future__ import annotations

import argparse
import logging
import os
import ssl
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedsim.cli_args import add_log_level
from fedsim.core.plugins import is_dotted_name, restrict
from fedsim.real.server.config import ServerConfig

if TYPE_CHECKING:
    from fedsim.real.jobs import JobRunner

ADMIN_ENV = "FEDSIM_ADMIN_TOKEN"
ENROLLMENT_ENV = "FEDSIM_ENROLLMENT_TOKEN"
VIEWER_ENV = "FEDSIM_VIEWER_TOKEN"


def parser() -> argparse.ArgumentParser:
    defaults = ServerConfig(data_dir=Path("."), admin_token="a", enrollment_token="e")
    p = argparse.ArgumentParser(
        prog="fedsim server",
        description="Serve fedsim's REST API (docs/protocol.md): devices register and "
        "heartbeat, models and their versions are stored and downloaded, agents long-poll "
        "for tasks and upload their results. Stops gracefully on SIGINT or SIGTERM.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--host", default=defaults.host, help="address to listen on")
    p.add_argument("--port", type=int, default=defaults.port, help="TCP port to listen on")
    p.add_argument(
        "--data-dir",
        type=Path,
        default=Path("fedsim-data"),
        help="directory for the device registry, device tokens, model repository and "
        "uploads in progress; created if missing, kept across restarts; what a crash left "
        "in it is removed at start-up. One server per directory",
    )
    p.add_argument(
        "--admin-token",
        # No default shown: --help must not print a secret from the environment.
        default=argparse.SUPPRESS,
        help=f"the operator's bearer token, allowed everything; read from ${ADMIN_ENV} "
        "when not given (prefer the variable: a command line is visible to other users)",
    )
    p.add_argument(
        "--viewer-token",
        default=argparse.SUPPRESS,
        help="a read-only bearer token: the dashboard and the API's reads (devices, groups, "
        "monitoring, models, deployments, jobs, service discovery), 403 on every change; "
        f"read from ${VIEWER_ENV} when not given; none by default",
    )
    p.add_argument(
        "--enrollment-token",
        default=argparse.SUPPRESS,
        help="the bearer token devices present to register, which returns each its own "
        f"device token; read from ${ENROLLMENT_ENV} when not given",
    )
    p.add_argument(
        "--patience",
        type=float,
        default=defaults.patience_s,
        help="seconds without a heartbeat after which a device counts as offline",
    )
    p.add_argument(
        "--max-json-bytes",
        type=int,
        default=defaults.max_json_bytes,
        help="largest JSON request body accepted; larger ones are answered 413",
    )
    p.add_argument(
        "--max-blob-bytes",
        type=int,
        default=defaults.max_blob_bytes,
        help="largest model version, update or data upload accepted; larger ones are answered 413",
    )
    p.add_argument(
        "--body-read-timeout",
        type=float,
        default=defaults.body_read_timeout_s,
        help="seconds to wait for the next bytes of a request body before answering 408",
    )
    p.add_argument(
        "--header-read-timeout",
        type=float,
        default=defaults.header_read_timeout_s,
        help="seconds a connection has to send a whole request line and headers, from its "
        "opening or its previous response; an idle keep-alive connection is closed after as long",
    )
    p.add_argument(
        "--long-poll-max",
        type=float,
        default=defaults.long_poll_max_s,
        help="longest an agent's GET .../tasks?wait= is held open, in seconds",
    )
    p.add_argument(
        "--shutdown-timeout",
        type=float,
        default=defaults.shutdown_timeout_s,
        help="seconds a stopping server lets requests in flight finish before cancelling them",
    )
    p.add_argument(
        "--prometheus-url",
        metavar="URL",
        help="the Prometheus that scrapes this server's devices (fedsim prometheus-config); "
        "the dashboard's monitoring charts query it, else the server's own heartbeat history",
    )
    p.add_argument(
        "--history-samples",
        type=int,
        default=defaults.history_samples,
        help="heartbeat readings the server keeps per device for the dashboard",
    )
    p.add_argument(
        "--history-interval",
        type=float,
        default=defaults.history_interval_s,
        help="seconds between the heartbeat readings kept per device",
    )
    p.add_argument(
        "--sd-allow",
        metavar="CIDR",
        action="append",
        default=[],
        help="a network whose addresses devices may declare as metrics endpoints (repeatable); "
        "by default service discovery lists only http(s) endpoints on the address a device "
        "registered from",
    )
    p.add_argument(
        "--plugin",
        metavar="MODULE",
        action="append",
        default=[],
        help="a module or package whose classes and factories the experiments posted as jobs "
        "may name by import path (_target_, docs/plugins.md); repeatable. By default a job may "
        "name none: a plug-in is code this server runs",
    )
    p.add_argument("--cert", type=Path, help="TLS certificate chain (PEM); with --key, serve HTTPS")
    p.add_argument("--key", type=Path, help="TLS private key (PEM) for --cert")
    p.add_argument(
        "--client-ca",
        type=Path,
        metavar="FILE",
        help="CA certificates (PEM, e.g. fedsim certs' ca.pem): mutual TLS, every client must "
        "present a certificate signed by one of them or the TLS handshake fails; bearer "
        "tokens are still required. Needs --cert and --key",
    )
    add_log_level(p)
    return p


def _served(config: ServerConfig, runner: JobRunner | None) -> dict[str, Any]:
    """The stores the server keeps, and the job manager when it is handed a job runner."""
    from fedsim.real.jobs import JobManager
    from fedsim.real.stores import ServerStores

    stores = ServerStores.open(config.data_dir, patience_s=config.patience_s)
    jobs = None
    if runner is not None:
        jobs = JobManager(data_dir=Path(config.data_dir), stores=stores, runner=runner)
    return {
        "jobs": jobs,
        "board": stores.board,
        "registry": stores.registry,
        "repository": stores.repository,
    }


def main(argv: list[str], runner: JobRunner | None = None) -> int:
    """Run the server; returns the process exit status (2 for a configuration error).

    ``runner`` runs the experiments users post as jobs (``fedsim`` hands it its pipeline);
    without one the server answers job requests as unavailable.
    """
    try:
        args = parser().parse_args(argv)
    except SystemExit as e:  # --help, or a usage error argparse has printed
        return e.code if isinstance(e.code, int) else 0
    admin = getattr(args, "admin_token", None) or os.environ.get(ADMIN_ENV)
    enrollment = getattr(args, "enrollment_token", None) or os.environ.get(ENROLLMENT_ENV)
    viewer = getattr(args, "viewer_token", None) or os.environ.get(VIEWER_ENV) or None
    if not admin:
        return _error(f"no admin token: set {ADMIN_ENV} or pass --admin-token")
    if not enrollment:
        return _error(f"no enrollment token: set {ENROLLMENT_ENV} or pass --enrollment-token")
    try:
        config = ServerConfig(
            host=args.host,
            port=args.port,
            data_dir=args.data_dir,
            admin_token=admin,
            enrollment_token=enrollment,
            viewer_token=viewer,
            patience_s=args.patience,
            max_json_bytes=args.max_json_bytes,
            max_blob_bytes=args.max_blob_bytes,
            body_read_timeout_s=args.body_read_timeout,
            header_read_timeout_s=args.header_read_timeout,
            long_poll_max_s=args.long_poll_max,
            shutdown_timeout_s=args.shutdown_timeout,
            cert_file=args.cert,
            key_file=args.key,
            client_ca_file=args.client_ca,
            prometheus_url=args.prometheus_url,
            history_samples=args.history_samples,
            history_interval_s=args.history_interval,
            sd_allowed_networks=tuple(args.sd_allow),
        )
    except ValueError as e:
        return _error(str(e))
    for path in (config.cert_file, config.key_file, config.client_ca_file):
        if path is not None and not path.is_file():
            return _error(f"no such file: {path}")
    if Path(config.data_dir).exists() and not Path(config.data_dir).is_dir():
        return _error(f"--data-dir {config.data_dir}: not a directory")
    try:
        ssl_context = config.ssl_context()  # a bad certificate or key: said before serving
    except (OSError, ssl.SSLError) as e:
        return _error(f"TLS: {e}")
    bad = [m for m in args.plugin if not is_dotted_name(m)]
    if bad:
        return _error(f"--plugin {bad[0]!r}: not a module name (pkg or pkg.module)")
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(message)s")
    from fedsim.real.server.app import run_server  # aiohttp loads only when serving

    # A job names plug-ins in a config that comes over the network: only those allowed load.
    restrict(args.plugin)
    try:
        run_server(config, ssl_context=ssl_context, **_served(config, runner))
    except OSError as e:  # the port is taken, the data directory is not writable, ...
        return _error(str(e))
    finally:
        restrict(None)
    return 0


def _error(message: str) -> int:
    print(f"fedsim server: error: {message}", file=sys.stderr)
    return 2
