"""What a fedsim server keeps: its task board, model repository and device registry.

Opened once from a data directory by :meth:`ServerStores.open`, whoever serves them: the
``fedsim server`` command, a :class:`~fedsim.real.launch.LocalCluster` for ``mode=real``, and
the jobs and runtimes that run over a server already up.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fedsim.core.registry import DeviceRegistry
from fedsim.core.repository import ModelRepository
from fedsim.real.board import TaskBoard


@dataclass(frozen=True, kw_only=True)
class ServerStores:
    """A running server's board, repository and registry, shared with what runs over it."""

    board: TaskBoard
    repository: ModelRepository
    registry: DeviceRegistry

    @classmethod
    def open(cls, data_dir: Path, *, patience_s: float) -> ServerStores:
        """The stores under ``data_dir`` (created if missing; kept across restarts)."""
        from fedsim.store.sqlite import SqliteRegistryStore, SqliteRepository

        data = Path(data_dir)
        data.mkdir(parents=True, exist_ok=True)
        return cls(
            board=TaskBoard(),
            repository=SqliteRepository(data / "repository"),
            registry=DeviceRegistry(SqliteRegistryStore(data / "registry"), patience=patience_s),
        )

    def close(self) -> None:
        self.repository.close()
