"""``topology.fleet`` in the config: fleets from spreads, traces and tables, availability in a
simulated run, and the example files that scripts/make_example_traces.py writes."""

from __future__ import annotations

import importlib.util
import json
import tempfile
from pathlib import Path

import numpy as np
import pytest

from fedsim.config import ConfigError, build_spec, build_topology, compose, conf_dir
from fedsim.core.traces import load_availability
from fedsim.pipeline import run
from fedsim.runtimes import runtime
from fedsim.scenarios import Hooks

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["topology.generate.groups=2", "topology.generate.devices_per_group=500"]


def fleet(*overrides: str):
    return build_topology(compose(["+experiment=fl_scale", *SMALL, *overrides]), conf_dir())


def trainer_figures(topology):
    devices = [topology.devices[d] for d in topology.trainers]
    return np.array([[d.speed, d.link.bandwidth, d.link.latency] for d in devices])


def test_spreads_in_the_config_give_the_fleet_its_spread_by_seed():
    # Prepare
    spread = ["topology.fleet.spread.speed=0.5", "topology.fleet.spread.bandwidth=0.8"]

    # Execute
    a = trainer_figures(fleet(*spread))
    b = trainer_figures(fleet(*spread))
    by_seed = trainer_figures(fleet(*spread, "seed=1"))
    own_seed = trainer_figures(fleet(*spread, "seed=1", "topology.fleet.seed=0"))

    # Assert: 1,000 trainers around lan_100m (12.5 MB/s); the fleet follows the run's seed
    # unless it has its own.
    speed, bandwidth, latency = a.T
    assert speed.mean() == pytest.approx(1.0, rel=0.06)
    assert speed.std() / speed.mean() == pytest.approx(0.5, abs=0.07)
    assert bandwidth.mean() == pytest.approx(12.5e6, rel=0.1)
    assert bandwidth.std() / bandwidth.mean() == pytest.approx(0.8, abs=0.15)
    assert (latency == 0.5e-3).all()
    assert (a == b).all() and not (a == by_seed).all() and (a == own_seed).all()


def test_without_a_fleet_section_the_trainers_keep_their_profiles():
    topology = fleet()
    assert {topology.devices[d].speed for d in topology.trainers} == {1.0}
    assert len({id(topology.devices[d].link) for d in topology.trainers}) == 1


def test_the_example_trace_fleet_takes_each_trainers_speeds_from_the_trace():
    # Prepare
    trace = json.loads((conf_dir() / "traces" / "example_device_trace.json").read_text())
    rows = list(trace.values())
    median = float(np.median([r["computation"] for r in rows]))

    # Execute
    topology = build_topology(compose(["+experiment=fl_scale", "topology=trace_fleet"]), conf_dir())

    # Assert: trainer i is client i of the trace (wrapping round), its compute speed against
    # the trace's median, its bandwidth the trace's kbit/s.
    for i, dev in enumerate(topology.trainers):
        row = rows[i % len(rows)]
        d = topology.devices[dev]
        assert d.speed == pytest.approx(median / row["computation"])
        assert d.link.bandwidth == pytest.approx(row["communication"] * 1000 / 8)
        assert d.link.name == "lan_100m"


def test_an_empirical_table_is_drawn_from_with_its_hardware():
    # Execute
    topology = fleet(
        "topology.fleet.devices.file=traces/example_device_table.csv",
        "topology.fleet.devices.assign=sample",
    )

    # Assert: every trainer is one of the table's devices, and all three kinds appear.
    table = (conf_dir() / "traces" / "example_device_table.csv").read_text().splitlines()[1:]
    rows = [line.split(",") for line in table]
    known = {(h, float(kbps) * 1000 / 8, float(ms) / 1e3) for _, h, kbps, ms in rows}
    seen = {
        (d.hardware.name, d.link.bandwidth, d.link.latency)
        for d in (topology.devices[t] for t in topology.trainers)
    }
    assert seen <= known
    assert {h for h, _, _ in seen} == {"client_i7_gtx1080", "client_i7_cpu", "rpi4"}


@pytest.mark.parametrize(
    ("overrides", "complaint"),
    [
        (["topology.fleet.devices.file=nope.csv"], "topology.fleet.devices.file: no such file"),
        (
            [
                "topology.fleet.devices.file=traces/example_device_trace.json",
                "topology.fleet.devices.assign=shuffle",
            ],
            "topology.fleet.devices.assign: must be one of order, sample",
        ),
        (["topology.fleet.spread.speed=-1"], "topology.fleet.spread.speed: must be >= 0"),
        (
            ["topology.fleet.availability.mean_online_s=60"],
            "topology.fleet.availability: give a file, or both",
        ),
        (
            [
                "topology.fleet.availability.file=traces/example_availability.json",
                "topology.fleet.availability.mean_online_s=60",
            ],
            "not both",
        ),
        (
            [
                "topology.fleet.availability.file=traces/example_availability.json",
                "mode=real",
            ],
            "in the simulator only",
        ),
    ],
)
def test_a_bad_fleet_is_refused_naming_the_field(overrides, complaint):
    with pytest.raises(ConfigError, match=complaint):
        build_spec(compose(["+experiment=fl_scale", *SMALL, *overrides]), conf_dir())


def test_a_table_naming_an_unknown_profile_is_refused(tmp_path):
    table = tmp_path / "t.csv"
    table.write_text("hardware\ntpu_v9\n")
    with pytest.raises(ConfigError, match="unknown hardware profile 'tpu_v9'"):
        fleet(f"topology.fleet.devices.file={table}")


def test_offline_trainers_stay_out_of_the_rounds_of_a_simulated_run():
    # Prepare: the example availability trace, every trainer selectable when online.
    spec = build_spec(
        compose(
            [
                "+experiment=fl_scale",
                "topology=trace_fleet",
                *("fl.rounds=4", "fl.selection=all"),
            ]
        ),
        conf_dir(),
    )
    availability = spec.faults.availability
    assert availability is not None

    # Execute
    with tempfile.TemporaryDirectory() as run_dir:
        result = run(spec, runtime("sim"), run_dir, Hooks(progress=False))

    # Assert: each round selects exactly the trainers online as it starts; some are offline.
    assert len(result.rows) == 4
    for row in result.rows:
        online = sum(availability.online(d, row.started_s) for d in spec.topology.trainers)
        assert 0 < online < len(spec.topology.trainers)
        assert row.selected == online


def test_the_script_writes_the_example_files_as_committed(tmp_path):
    # Prepare
    path = ROOT / "scripts" / "make_example_traces.py"
    spec = importlib.util.spec_from_file_location("make_example_traces", path)
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)

    # Execute
    written = script.write(tmp_path, clients=50, seed=0)

    # Assert: byte for byte the files in conf/traces, and each loads.
    for new in written:
        assert new.read_bytes() == (conf_dir() / "traces" / new.name).read_bytes()
    assert len(load_availability(tmp_path / "example_availability.json")) == 50
