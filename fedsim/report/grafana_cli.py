"""``fedsim grafana-dashboards DIR``: write fedsim's Grafana dashboards and provisioning files.

Exit codes: 0 when written, 2 for a bad argument, a directory that cannot be written or files
in it that exist already without ``--force``, in one line on stderr.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from fedsim.cli_args import OneLineParser
from fedsim.files import refuse_existing, write_text_atomic
from fedsim.report.grafana import DASHBOARDS_PATH, grafana_files

PROG = "fedsim grafana-dashboards"


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog=PROG,
        description=(
            "Write three Grafana dashboards (devices, monitoring, models) for the Prometheus "
            "that `fedsim prometheus-config` configures, as DIR/dashboards/*.json, and the "
            "provisioning files Grafana reads at start-up as DIR/provisioning/: a Prometheus "
            "datasource and a dashboard provider. Copy or mount DIR/provisioning to "
            "/etc/grafana/provisioning and DIR/dashboards to --dashboards-path."
        ),
    )
    p.add_argument("dir", metavar="DIR", help="where to write; created if missing")
    p.add_argument(
        "--prometheus-url",
        default="http://localhost:9090",
        metavar="URL",
        help="the Prometheus server as Grafana reaches it (default: %(default)s)",
    )
    p.add_argument(
        "--dashboards-path",
        default=DASHBOARDS_PATH,
        metavar="PATH",
        help="where Grafana will find the dashboards' JSON files (default: %(default)s)",
    )
    p.add_argument("--force", action="store_true", help="replace files in DIR that exist already")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Write the files ``argv`` asks for; the process's exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        files = grafana_files(
            prometheus_url=args.prometheus_url, dashboards_path=args.dashboards_path
        )
    except ValueError as e:
        parser.error(str(e))
    root = Path(args.dir)
    try:
        refuse_existing([root / relative for relative in files], force=args.force)
        for relative, text in files.items():
            write_text_atomic(root / relative, text)
    except FileExistsError as e:
        parser.error(str(e))
    except OSError as e:
        parser.error(f"{args.dir}: {e.strerror or e}")
    print(f"wrote {len(files)} files under {root}")
    return 0
