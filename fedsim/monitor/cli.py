"""``fedsim prometheus-config``: write a prometheus.yml that monitors a fedsim server's devices.

Exit codes: 0 when written, 2 for a bad argument, a file that cannot be written or one that
exists already without ``--force``, in one line on stderr.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from fedsim.cli_args import OneLineParser
from fedsim.files import refuse_existing
from fedsim.monitor.prometheus_config import build_config, check_duration, render

PROG = "fedsim prometheus-config"


def _duration(text: str) -> str:
    try:
        return check_duration(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog=PROG,
        description=(
            "Write a Prometheus configuration with two scrape jobs: the fedsim server's own "
            "/metrics, and the devices' agents and node_exporters, discovered through the "
            "server's /api/v1/sd/targets (HTTP service discovery) with the viewer (or admin) "
            "token, so Prometheus follows registrations without a restart. Series from devices "
            "carry fedsim_device, fedsim_group and fedsim_role labels."
        ),
    )
    p.add_argument(
        "--server",
        required=True,
        metavar="URL",
        help="the server's base URL as Prometheus reaches it, http(s)://HOST:PORT",
    )
    p.add_argument(
        "--token-file",
        required=True,
        metavar="PATH",
        help=(
            "a file holding the server's viewer token (read-only; the admin token works "
            "too), as Prometheus will see it (relative paths are relative to the "
            "configuration file); the token is not copied into the configuration"
        ),
    )
    p.add_argument(
        "--scrape-interval",
        type=_duration,
        default="5s",
        metavar="DURATION",
        help="how often Prometheus scrapes every target, e.g. 1s, 15s, 1m (default: %(default)s)",
    )
    p.add_argument(
        "--sd-refresh-interval",
        type=_duration,
        default="30s",
        metavar="DURATION",
        help="how often Prometheus asks the server for the devices (default: %(default)s)",
    )
    p.add_argument(
        "--ca-file",
        metavar="PEM",
        help="CA certificates that verify an https server, as Prometheus will see the path",
    )
    p.add_argument(
        "--cert-file",
        metavar="PEM",
        help="a client certificate Prometheus presents to a server requiring mutual TLS "
        "(e.g. one made by fedsim certs --device prometheus); with --key-file",
    )
    p.add_argument("--key-file", metavar="PEM", help="the private key of --cert-file")
    p.add_argument(
        "--out",
        default="prometheus.yml",
        metavar="PATH",
        help="where to write the configuration; - for standard output (default: %(default)s)",
    )
    p.add_argument("--force", action="store_true", help="replace --out if it exists already")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Write the configuration ``argv`` asks for; the process's exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = build_config(
            server=args.server,
            token_file=args.token_file,
            scrape_interval=args.scrape_interval,
            sd_refresh_interval=args.sd_refresh_interval,
            ca_file=args.ca_file,
            cert_file=args.cert_file,
            key_file=args.key_file,
        )
    except ValueError as e:
        parser.error(str(e))
    text = render(config)
    if args.out == "-":
        sys.stdout.write(text)
        return 0
    out = Path(args.out)
    try:
        refuse_existing([out], force=args.force)
        out.write_text(text)
    except FileExistsError as e:
        parser.error(str(e))
    except OSError as e:
        parser.error(f"--out {args.out}: {e.strerror or e}")
    return 0
