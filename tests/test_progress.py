"""What a run shows while it runs: the comparison's stages within a measured repetition, and a
federated round's updates as they come."""

from __future__ import annotations

import numpy as np

from fedsim.config import build_spec, compose, conf_dir
from fedsim.core.events import EventColumns, EventKind
from fedsim.core.experiment import compare
from fedsim.core.results import CLIENT, CLOUD
from fedsim.core.runtime import Transport
from fedsim.core.topology import Topology
from fedsim.runtimes import Needs, runtime
from fedsim.scenarios.comparison import STAGES, _showing_stages
from fedsim.scenarios.federated import SHOW_EVERY, _RoundProgress, _Tee


class Bar:
    """What a tqdm bar is told."""

    def __init__(self) -> None:
        self.postfixes: list[str] = []

    def set_postfix_str(self, text: str, refresh: bool = True) -> None:
        self.postfixes.append(text)


def test_a_repetition_names_each_scenario_as_it_starts(tmp_path):
    # Prepare: issue 15 saw a real YOLOv4 repetition sit at 0/1 for a minute, nothing shown.
    spec = build_spec(compose(["+experiment=imagenet_yolo", "repetitions=2"]), conf_dir())
    clients = list(spec.clients)
    needs = Needs(clients=clients, train_flops_per_sample=float(spec.workload.model.train_flops))
    bar = Bar()
    made: list[tuple[str, Transport]] = []

    # Execute
    with runtime("sim").open(spec, tmp_path, needs) as session:

        def make(topology: Topology, seed: np.random.SeedSequence) -> Transport:
            transport = session.transport(topology, seed)
            made.append((bar.postfixes[-1], transport))
            return transport

        outcome = compare(
            spec.topology,
            spec.workload,
            clients,
            _showing_stages(make, bar),
            repetitions=2,
            seed=0,
        )

    # Assert: each transport was made under the name of the scenario that ran on it.
    assert bar.postfixes == [*STAGES, *STAGES]
    assert len(outcome.events) == len(made) == 4
    named = {CLOUD: "cloud-based", CLIENT: "client-based"}
    for log, (stage, transport) in zip(outcome.events, made, strict=True):
        assert log.events == tuple(transport.events)
        assert stage.startswith(named[log.scenario])


class _Writer:
    """An events file that keeps nothing."""

    def row(self, *fields: object) -> None:
        pass


def test_a_round_shows_its_steps_every_thousand_at_most_twice_a_second():
    # Prepare: a round's sink that shows its counts on a bar, on a clock we move
    bar, now = Bar(), [0.0]
    shown = _RoundProgress(bar, every_s=0.5, clock=lambda: now[0])
    tee = _Tee(_Writer(), EventColumns(), shown)

    def steps(kind: EventKind, n: int) -> None:
        for i in range(n):
            tee.row(i, EventKind.AGGREGATE, 0.0, 1.0, 0, "t")  # not a device's step: not counted
            tee.row(i, kind, 1.0, 2.0, 10, "t")

    # Execute: 1,000 models out; 1,000 trainings at once (too soon); 1,000 updates after a
    # second
    steps(EventKind.MODEL_DOWNLOAD, SHOW_EVERY)
    first = list(bar.postfixes)
    steps(EventKind.TRAIN, SHOW_EVERY)
    too_soon = list(bar.postfixes)
    now[0] = 1.0
    steps(EventKind.UPDATE_UPLOAD, SHOW_EVERY)
    shown.clear()

    # Assert: shown at 1,000 and 3,000 steps (not at 2,000: within half a second), then cleared
    assert first == ["1,000 models out, 0 trained, 0 updates in"] and too_soon == first
    assert bar.postfixes[1:] == ["1,000 models out, 1,000 trained, 1,000 updates in", ""]
    assert (tee.models, tee.trained, tee.updates) == (SHOW_EVERY,) * 3


def test_a_quiet_round_leaves_the_bar_alone():
    # Prepare / Execute: a round that showed nothing ends
    bar = Bar()
    _RoundProgress(bar).clear()

    # Assert
    assert bar.postfixes == []
