"""One pipeline: a typed experiment spec -> a runtime -> the scenario's run -> one result.

``python -m fedsim`` (the composition root in :mod:`fedsim.__main__`), the jobs a server runs
(:class:`Jobs`, handed to ``fedsim server``) and the tests all run experiments through
:func:`run` and write them with :func:`fedsim.report.write.write_run`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedsim.config import ConfigError, build_spec, compose_job, conf_dir
from fedsim.core.results import RunResult
from fedsim.real.stores import ServerStores
from fedsim.runtimes import Runtime, runtime
from fedsim.scenarios import Hooks, scenario
from fedsim.spec import ExperimentSpec


def run(spec: ExperimentSpec, rt: Runtime, run_dir: Path, hooks: Hooks | None = None) -> RunResult:
    """Run ``spec`` over ``rt``; what the run keeps (repository, agents' logs) goes in
    ``run_dir``. The result is not written: see :func:`run_and_write`."""
    return scenario(spec.kind)(spec, rt, Path(run_dir), hooks or Hooks())


def run_and_write(
    spec: ExperimentSpec, rt: Runtime, run_dir: Path, hooks: Hooks | None = None
) -> RunResult:
    """:func:`run`, then the run directory's files."""
    from fedsim.report.write import write_run

    result = run(spec, rt, run_dir, hooks)
    write_run(Path(run_dir), result)
    return result


@dataclass(frozen=True)
class _Job:
    spec: ExperimentSpec

    @property
    def model(self) -> str:
        return self.spec.workload.model.name

    @property
    def rounds(self) -> int:
        return self.spec.fl.rounds

    def run(
        self,
        run_dir: Path,
        stores: ServerStores,
        *,
        channel: str,
        on_round: Callable[[dict[str, Any]], None],
    ) -> None:
        rt = runtime("attached", stores=stores, channel=channel)
        run_and_write(self.spec, rt, run_dir, Hooks(on_round=on_round, progress=False))


class Jobs:
    """The job runner ``fedsim server`` is handed: a job is an experiment config, checked
    against the CLI's schema and run over the server's own stores (the ``attached`` runtime)."""

    kinds = ("federated",)

    def prepare(self, kind: str, config: Mapping[str, Any]) -> _Job:
        spec = build_spec(compose_job(config), conf_dir())
        if spec.kind != kind:
            raise ConfigError(f"kind: the config's experiment.kind is {spec.kind!r}, not {kind!r}")
        if spec.faults.outages:
            raise ConfigError(
                "faults.outages: a running server cannot stop its devices' agents; "
                "run the experiment with mode=real on one host to inject outages"
            )
        return _Job(spec)
