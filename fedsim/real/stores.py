"""What a fedsim server keeps: its task board, model repository and device registry.

Opened once from a data directory by :meth:`ServerStores.open`, whoever serves them: the
``fedsim server`` command, a :class:`~fedsim.real.launch.LocalCluster` for ``mode=real``, and
the jobs and runtimes that run over a server already up.

Opening them is also where a server recovers from a crash, before it listens: the temp files
of uploads a killed server was receiving and the blobs it wrote but never recorded are
removed, and the repository's integrity is checked, all of it logged. That is safe only if no
other server is using the directory, so the stores hold an exclusive lock on it
(``data_dir/server.lock``) until closed or the process ends.
"""

from __future__ import annotations

import fcntl
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

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
    _lock: BinaryIO | None = field(default=None, repr=False)  # holds the directory's lock

    @classmethod
    def open(cls, data_dir: Path, *, patience_s: float) -> ServerStores:
        """The stores under ``data_dir`` (created if missing; kept across restarts), with
        what a crash left behind collected; for a server that is not listening yet.

        Raises ``OSError`` if another process holds the stores of ``data_dir``: leftovers are
        collected without a grace period, which would remove that server's uploads in progress.
        """
        from fedsim.store.sqlite import SqliteRegistryStore, SqliteRepository

        data = Path(data_dir)
        data.mkdir(parents=True, exist_ok=True)
        lock = _lock(data / "server.lock")
        opened: list[Callable[[], None]] = [lock.close]  # closers, in opening order
        try:
            repository = SqliteRepository(data / "repository")
            opened.append(repository.close)
            _recover(repository)
            registry = DeviceRegistry(SqliteRegistryStore(data / "registry"), patience=patience_s)
        except BaseException:
            for close in reversed(opened):
                close()
            raise
        return cls(board=TaskBoard(), repository=repository, registry=registry, _lock=lock)

    def close(self) -> None:
        self.repository.close()
        if self._lock is not None:
            self._lock.close()  # releases the lock


def _lock(path: Path) -> BinaryIO:
    """``path`` opened, holding an exclusive lock on it; ``OSError`` if another holds it."""
    file = path.open("ab")  # not inherited by child processes (PEP 446)
    try:
        fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        file.close()
        raise OSError(f"{path.parent} is in use by another fedsim server") from None
    return file


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
