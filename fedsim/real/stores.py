"""What a fedsim server keeps: its task board, model repository and device registry.

Opened once from a data directory by :meth:`ServerStores.open`, whoever serves them: the
``fedsim server`` command, a :class:`~fedsim.real.launch.LocalCluster` for ``mode=real``, and
the jobs and runtimes that run over a server already up.

Opening them is also where a server recovers from a crash, before it listens: the temp files
of uploads a killed server was receiving and the blobs it wrote but never recorded are
removed, and the repository's integrity is checked, all of it logged.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from fedsim.core.registry import DeviceRegistry
from fedsim.core.repository import ModelRepository
from fedsim.real.board import TaskBoard

if TYPE_CHECKING:
    from fedsim.store.sqlite import SqliteRepository

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class ServerStores:
    """A running server's board, repository and registry, shared with what runs over it."""

    board: TaskBoard
    repository: ModelRepository
    registry: DeviceRegistry

    @classmethod
    def open(cls, data_dir: Path, *, patience_s: float) -> ServerStores:
        """The stores under ``data_dir`` (created if missing; kept across restarts), with
        what a crash left behind collected; for a server that is not listening yet.

        One server per data directory: leftovers are collected without a grace period, which
        would remove the uploads in progress of another server on the same directory.
        """
        from fedsim.store.sqlite import SqliteRegistryStore, SqliteRepository

        data = Path(data_dir)
        data.mkdir(parents=True, exist_ok=True)
        repository = SqliteRepository(data / "repository")
        try:
            _recover(repository)
            registry = DeviceRegistry(SqliteRegistryStore(data / "registry"), patience=patience_s)
        except BaseException:
            repository.close()
            raise
        return cls(board=TaskBoard(), repository=repository, registry=registry)

    def close(self) -> None:
        self.repository.close()


def _recover(repository: SqliteRepository) -> None:
    """Remove a crash's leftovers and check what the repository holds, logging both."""
    # Grace 0: nothing can be uploading before the server listens, so every temp file is
    # an upload a killed server was receiving, and every unrecorded blob one it never committed.
    removed = repository.gc(grace=0)
    if removed.temp_files or removed.blobs:
        log.warning(
            "start-up: removed %d partial uploads and %d unrecorded blobs (%d bytes) "
            "that a stopped server left in %s",
            removed.temp_files,
            removed.blobs,
            removed.bytes,
            repository.root,
        )
    else:
        log.info("start-up: no leftovers in %s", repository.root)
    problems = repository.check_integrity()
    for problem in problems:
        log.error("start-up: repository integrity: %s", problem)
    if not problems:
        log.info("start-up: repository integrity check clean")
