"""What a run shows while it runs: the comparison's stages within a measured repetition."""

from __future__ import annotations

import numpy as np

from fedsim.config import build_spec, compose, conf_dir
from fedsim.core.experiment import compare
from fedsim.core.results import CLIENT, CLOUD
from fedsim.core.runtime import Transport
from fedsim.core.topology import Topology
from fedsim.runtimes import Needs, runtime
from fedsim.scenarios.comparison import STAGES, _showing_stages


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
