"""Scenarios by ``experiment.kind``: what a run does, over whichever runtime it is given.

- ``comparison``: the paper's Table II, cloud-based against client-based training time
  (:mod:`fedsim.scenarios.comparison`);
- ``federated``: multi-round federated training through the round coordinator
  (:mod:`fedsim.scenarios.federated`).

Each is ``run(spec, runtime, run_dir, hooks) -> RunResult``; the pipeline picks one by kind.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from fedsim.core.results import RunResult
    from fedsim.runtimes import Runtime
    from fedsim.spec import ExperimentSpec

SCENARIOS: dict[str, str] = {
    "comparison": "fedsim.scenarios.comparison:run",
    "federated": "fedsim.scenarios.federated:run",
}


@dataclass(frozen=True, kw_only=True)
class Hooks:
    """What the caller of a run wants to hear: ``on_round`` gets each round's row as a dict
    as the round ends (and may raise to stop the run); ``progress`` shows a progress bar."""

    on_round: Callable[[dict[str, Any]], None] | None = None
    progress: bool = True


class Scenario(Protocol):
    def __call__(
        self, spec: ExperimentSpec, runtime: Runtime, run_dir: Path, hooks: Hooks
    ) -> RunResult: ...


def scenario(kind: str) -> Scenario:
    """The scenario that runs experiments of ``kind``."""
    module, name = SCENARIOS[kind].split(":")
    return getattr(import_module(module), name)
