"""The ``real`` runtime: a fedsim server and one ``fedsim agent`` process per client, here.

The server runs in a thread of this process; each agent is a process with its own data, as it
would be on a device. The session then works as the ``attached`` one does over the server's
stores. The fault plan's outages stop and restart agent processes on the clock of the session's
first transport (:class:`~fedsim.real.faults.OutageDriver`); dropouts are the transport's.
Everything is stopped when the run ends.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from fedsim.core.plugins import is_import_path
from fedsim.real.faults import OutageDriver
from fedsim.real.jobs import JobRunner
from fedsim.real.launch import LocalCluster
from fedsim.real.transport import HttpTransport
from fedsim.runtimes import Needs, Runtime
from fedsim.runtimes.attached import ServerSession
from fedsim.schema import ModeConf
from fedsim.spec import ExperimentSpec


@contextmanager
def cluster_session(
    spec: ExperimentSpec,
    run_dir: Path,
    needs: Needs,
    *,
    runner: JobRunner | None = None,
    mode: ModeConf | None = None,
    launcher: Callable[[int], Sequence[str]] | None = None,
    route: Callable[[int, str], str] | None = None,
) -> Iterator[tuple[LocalCluster, ServerSession]]:
    """A local cluster of ``needs.clients`` and the session over it, outages included.

    ``mode`` replaces the spec's (the emulated runtime's server address); ``launcher`` is the
    command prefix each agent starts under and ``route`` the URL it dials for the server (see
    :class:`~fedsim.real.launch.LocalCluster`).
    """
    with (
        LocalCluster(
            run_dir=run_dir,
            topology=spec.topology,
            clients=list(needs.clients),
            shards=needs.shards,
            mode=mode or spec.mode,
            data=needs.agent_data,
            runner=runner,
            launcher=launcher,
            route=route,
            plugins=agent_plugins(spec),
        ) as cluster,
        ExitStack() as outages,
    ):
        assert cluster.stores is not None

        started: list[OutageDriver] = []

        def start_outages(transport: HttpTransport) -> None:
            if spec.faults.outages and not started:
                driver = OutageDriver(cluster, spec.faults.outages, transport.now)
                started.append(outages.enter_context(driver))

        yield (
            cluster,
            ServerSession(
                stores=cluster.stores,
                topology=spec.topology,
                needs=needs,
                faults=spec.faults,
                on_transport=start_outages,
            ),
        )


def agent_plugins(spec: ExperimentSpec) -> tuple[str, ...]:
    """What the agents must be let import: the user's model, when the workload names one by
    import path (the agents build it for each task; the data comes to them as shards)."""
    name = spec.workload.model.name
    return (name,) if is_import_path(name) else ()


@dataclass(frozen=True)
class LocalRuntime:
    """Starts the server and the agents of ``needs.clients`` for the length of a session."""

    runner: JobRunner | None = None  # runs jobs posted to the local server, if given
    measured = True

    @contextmanager
    def open(self, spec: ExperimentSpec, run_dir: Path, needs: Needs) -> Iterator[ServerSession]:
        with cluster_session(spec, run_dir, needs, runner=self.runner) as (_, session):
            yield session


if TYPE_CHECKING:
    # Runtime is a Protocol: nothing else makes mypy check that this class implements it.
    _checked: type[Runtime] = LocalRuntime
