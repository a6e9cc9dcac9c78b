"""``fedsim agent``: run a device agent against a fedsim server until interrupted.

Exit codes: 0 after SIGINT/SIGTERM, 1 when the server refuses the device for good (a rejected
enrollment token, a removed device), 2 for bad arguments, always in one line on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from fedsim.cli_args import OneLineParser, add_log_level
from fedsim.real.agent.config import (
    DEFAULT_MAX_TRANSFER_BYTES,
    MAX_POLL_WAIT,
    AgentConfig,
    default_state_dir,
    parse_labels,
)
from fedsim.real.agent.state import StateDir

if TYPE_CHECKING:
    from fedsim.real.agent.agent import Agent

PROG = "fedsim agent"
TOKEN_ENV = "FEDSIM_ENROLLMENT_TOKEN"


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog=PROG,
        description=(
            "Run a device agent: register this device with a fedsim server, send heartbeats, "
            "and run the tasks the server hands it (train a model on local data and upload "
            "the update, or upload the data). Stops cleanly on Ctrl-C or SIGTERM."
        ),
    )
    p.add_argument(
        "--server", required=True, metavar="URL", help="the server's base URL, http(s)://HOST:PORT"
    )
    p.add_argument(
        "--token",
        metavar="T",
        default=os.environ.get(TOKEN_ENV),
        help=(
            f"the enrollment token (default: ${TOKEN_ENV}); needed on first registration and "
            "after the server lost its state, not when --state-dir holds a device token"
        ),
    )
    p.add_argument(
        "--device-id",
        type=int,
        metavar="N",
        help="register under this device id (default: the saved one, else the server assigns)",
    )
    p.add_argument(
        "--description",
        default=socket.gethostname(),
        help="a human-readable description of the device (default: the host name)",
    )
    p.add_argument("--group", type=int, metavar="N", help="the device's group id")
    p.add_argument(
        "--group-description",
        default="",
        metavar="TEXT",
        help="what the device's group is, e.g. its site or network; shown by the server",
    )
    p.add_argument("--id-in-group", type=int, metavar="N", help="the device's id within its group")
    p.add_argument(
        "--profile", metavar="NAME", help="the hardware profile name the device corresponds to"
    )
    p.add_argument(
        "--label",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a label for the device (repeatable)",
    )
    p.add_argument(
        "--data",
        metavar="PATH",
        help=(
            "training data: an .npz file with arrays X and y; or a directory of class "
            "folders (root/<class>/<image>) read at --input-size; or synthetic:N for N "
            "random ImageNet-shaped images sized by the task's input_size and num_classes. "
            "Without it the agent runs only timing-only and upload_data tasks"
        ),
    )
    p.add_argument(
        "--input-size",
        type=int,
        metavar="PX",
        help="image side for a --data directory (default: the task's input_size)",
    )
    p.add_argument(
        "--state-dir",
        type=Path,
        default=default_state_dir(),
        metavar="DIR",
        help=(
            "where the device token and the ids of finished tasks are kept, so a restarted "
            "agent keeps its identity and never trains a task twice; one per agent "
            "(default: %(default)s)"
        ),
    )
    p.add_argument(
        "--heartbeat-interval",
        type=float,
        default=5.0,
        metavar="S",
        help="seconds between heartbeats (default: %(default)g)",
    )
    p.add_argument(
        "--poll-wait",
        type=int,
        default=25,
        metavar="S",
        help=f"seconds a task poll waits at the server, 1..{MAX_POLL_WAIT} (default: %(default)s)",
    )
    p.add_argument(
        "--ca",
        "--cafile",
        dest="cafile",
        metavar="PEM",
        help="CA certificates to verify an https server with (fedsim certs' ca.pem)",
    )
    p.add_argument(
        "--cert",
        metavar="PEM",
        help="this device's client certificate, for a server that requires mutual TLS "
        "(fedsim certs' NAME.pem); with --key",
    )
    p.add_argument("--key", metavar="PEM", help="the private key of --cert")
    p.add_argument(
        "--insecure",
        action="store_true",
        help="do not verify the https server's certificate (testing only)",
    )
    p.add_argument(
        "--threads", type=int, metavar="N", help="torch threads for training (default: torch's)"
    )
    p.add_argument(
        "--torch-device",
        default="auto",
        metavar="DEV",
        help="where to train: cpu, cuda, cuda:1, ... (default: auto, the GPU when there is one)",
    )
    p.add_argument(
        "--probe-interval",
        type=float,
        default=60.0,
        metavar="S",
        help=(
            "measure upload and download throughput and round-trip time to the server every S "
            "seconds, reported with heartbeats and as metrics; 0: never (default: %(default)s)"
        ),
    )
    p.add_argument(
        "--probe-bytes",
        type=int,
        default=256 * 1024,
        metavar="N",
        help="bytes each probe sends and receives; small so it does not disturb training "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--max-transfer-bytes",
        type=int,
        default=DEFAULT_MAX_TRANSFER_BYTES,
        metavar="N",
        help=(
            "the most bytes one task may make this agent download or send (a model, an "
            "update, training data); a task asking for more fails (default: %(default)s)"
        ),
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        default=0,
        metavar="PORT",
        help=(
            "serve the agent's Prometheus metrics at http://HOST:PORT/metrics and tell the "
            "server where (default: 0, no metrics)"
        ),
    )
    p.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        metavar="HOST",
        help=(
            "the address --metrics-port listens on; 0.0.0.0 for every interface, advertised "
            "as the address this host reaches the server from (default: %(default)s)"
        ),
    )
    p.add_argument(
        "--node-exporter",
        default=None,
        metavar="URL",
        help=(
            "the node_exporter running beside this agent, e.g. http://10.0.0.5:9100/metrics; "
            "declared to the server so that Prometheus scrapes it as this device's "
            "(default: none)"
        ),
    )
    p.add_argument(
        "--calibrate",
        action=argparse.BooleanOptionalAction,
        default=True,
        help=(
            "after registering, time a few training steps of --calibrate-model, safetensors "
            "serialization and loading, and report the measured profile to the server (a "
            "second or two for the digits nets); the server may ask again either way "
            "(default: on)"
        ),
    )
    p.add_argument(
        "--plugin",
        action="append",
        default=[],
        metavar="PATH",
        help=(
            "a package, module or import path whose models a task may name by import path "
            "(workload.model._target_, docs/plugins.md); repeatable. It must be importable "
            "here (installed, or on PYTHONPATH). Without it the agent builds only the zoo's "
            "models, so a server cannot make it import other code"
        ),
    )
    p.add_argument(
        "--calibrate-model",
        default="digits_cnn",
        metavar="NAME|PATH",
        help=(
            "the model to time: one of the zoo's, or a user's by import path under a "
            "--plugin, with --calibrate-input-size and --calibrate-num-classes "
            "(default: %(default)s)"
        ),
    )
    p.add_argument(
        "--calibrate-input-size",
        type=int,
        default=None,
        metavar="PX",
        help="the image side to time a model named by import path at (its workload's)",
    )
    p.add_argument(
        "--calibrate-num-classes",
        type=int,
        default=None,
        metavar="N",
        help="the class count of a model named by import path (its workload's)",
    )
    add_log_level(p)
    return p


def parse_config(argv: Sequence[str] | None = None) -> tuple[AgentConfig, str]:
    """The :class:`AgentConfig` and log level ``argv`` asks for; exits 2 on a bad argument."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        labels = parse_labels(args.label)
        config = AgentConfig(
            server=args.server,
            state_dir=args.state_dir,
            enrollment_token=args.token or None,
            device_id=args.device_id,
            description=args.description,
            group=args.group,
            group_description=args.group_description,
            id_in_group=args.id_in_group,
            profile=args.profile,
            labels=labels,
            data=args.data,
            input_size=args.input_size,
            heartbeat_interval=args.heartbeat_interval,
            poll_wait=args.poll_wait,
            cafile=args.cafile,
            cert_file=args.cert,
            key_file=args.key,
            insecure=args.insecure,
            threads=args.threads,
            torch_device=args.torch_device,
            metrics_host=args.metrics_host,
            metrics_port=args.metrics_port,
            probe_interval=args.probe_interval,
            probe_bytes=args.probe_bytes,
            max_transfer_bytes=args.max_transfer_bytes,
            node_exporter=args.node_exporter,
            calibrate=args.calibrate,
            calibrate_model=args.calibrate_model,
            calibrate_input_size=args.calibrate_input_size,
            calibrate_num_classes=args.calibrate_num_classes,
            plugins=tuple(args.plugin),
        )
    except ValueError as e:
        parser.error(str(e))
    if config.enrollment_token is None and StateDir(config.state_dir).load_identity() is None:
        parser.error(
            f"no enrollment token: pass --token or set {TOKEN_ENV} "
            f"({config.state_dir} holds no device token yet)"
        )
    return config, args.log_level


def main(argv: Sequence[str] | None = None) -> int:
    """Run the agent as ``argv`` says; the process's exit code."""
    config, level = parse_config(argv)
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    from fedsim.real.agent.agent import Agent, AgentError  # torch loads here, after --help

    agent = Agent(config=config)
    try:
        asyncio.run(_serve(agent))
    except AgentError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 1
    return 0


async def _serve(agent: Agent) -> None:
    loop = asyncio.get_running_loop()
    stopping: set[asyncio.Task] = set()  # the loop keeps only weak references to tasks
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda: stopping.add(asyncio.ensure_future(agent.stop())))
    await agent.run()


if __name__ == "__main__":
    sys.exit(main())
