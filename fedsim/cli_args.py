"""What fedsim's subcommands share on the command line."""

from __future__ import annotations

import argparse
from typing import NoReturn


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad argument in one line (no usage block) and exits 2, so a
    mistake reads as ``fedsim <command>: error: <what is wrong>``."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


# The logging thresholds every command accepts, spelled alike; any case is taken.
LOG_LEVELS = ("debug", "info", "warning", "error")


def add_log_level(parser: argparse.ArgumentParser, default: str = "info") -> None:
    """``--log-level`` with :data:`LOG_LEVELS`; the value parsed is the lower-case name."""
    parser.add_argument(
        "--log-level",
        type=str.lower,
        choices=LOG_LEVELS,
        default=default,
        help="how much to log (default: %(default)s)",
    )
