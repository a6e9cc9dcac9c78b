"""The ``real`` runtime: a fedsim server and one ``fedsim agent`` process per client, here.

The server runs in a thread of this process; each agent is a process with its own data, as it
would be on a device. The session then works as the ``attached`` one does over the server's
stores; everything is stopped when the run ends.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from fedsim.real.jobs import JobRunner
from fedsim.real.launch import LocalCluster
from fedsim.runtimes import Needs, Runtime
from fedsim.runtimes.attached import ServerSession
from fedsim.spec import ExperimentSpec


@dataclass(frozen=True)
class LocalRuntime:
    """Starts the server and the agents of ``needs.clients`` for the length of a session."""

    runner: JobRunner | None = None  # runs jobs posted to the local server, if given
    measured = True

    @contextmanager
    def open(self, spec: ExperimentSpec, run_dir: Path, needs: Needs) -> Iterator[ServerSession]:
        with LocalCluster(
            run_dir=run_dir,
            topology=spec.topology,
            clients=list(needs.clients),
            shards=needs.shards,
            mode=spec.mode,
            data=needs.agent_data,
            runner=self.runner,
        ) as cluster:
            assert cluster.stores is not None
            yield ServerSession(stores=cluster.stores, topology=spec.topology, needs=needs)


if TYPE_CHECKING:
    # Runtime is a Protocol: nothing else makes mypy check that this class implements it.
    _checked: type[Runtime] = LocalRuntime
