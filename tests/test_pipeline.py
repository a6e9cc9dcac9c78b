"""The pipeline's own steps: a measured run's prediction, scaled by an emulation's slow-down."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

from fedsim.config import ConfigError, build_spec, compose, conf_dir
from fedsim.core.critical_path import critical_path
from fedsim.core.events import Event, EventKind
from fedsim.core.results import TIME_FIELDS
from fedsim.core.rounds.base import NO_RESULT
from fedsim.pipeline import Jobs, _with_emulation, predict, prediction_spec, run, run_and_write
from fedsim.runtimes import runtime
from fedsim.scenarios import Hooks


@pytest.fixture(scope="module")
def simulated(tmp_path_factory: pytest.TempPathFactory):
    spec = build_spec(
        compose(["+experiment=fl_digits", "fl.training=modelled", "fl.rounds=3"]), conf_dir()
    )
    # Simulated as a prediction simulates (latency paid per request, as the agents pay it).
    as_predicted = replace(spec, mode=replace(spec.mode, polling=True))
    where = tmp_path_factory.mktemp("sim")
    result = run(as_predicted, runtime("sim"), where, Hooks(progress=False))
    return spec, result


def slowed(result, factor: float):
    """``result`` as an emulation running ``factor`` times slower would have measured it."""
    rows = [
        replace(r, **{k: getattr(r, k) * factor for k in TIME_FIELDS if k != "bytes_moved"})
        for r in result.rows
    ]
    summary = {**result.summary, "emulation": {"slowdown_factor": factor}}
    return replace(result, rows=rows, summary=summary)


def held(quotas: dict[str, float], periods: dict[str, float], **more: object) -> dict:
    """An emulation's description holding agents to ``quotas`` (cores) over ``periods`` (s) on
    a host of two cores, with netem, at the profiles' speed unless ``more`` says otherwise."""
    return {
        "slowdown_factor": 1.0,
        "latency_and_loss_emulated": True,
        "cpu_quota_cores": quotas,
        "cpu_period_s": periods,
        "cores": 2,
        **more,
    }


def test_a_sim_run_carries_no_prediction(simulated):
    _, result = simulated
    assert result.fidelity == [] and "fidelity" not in result.summary


def test_the_prediction_of_an_emulated_run_is_slowed_by_its_factor(simulated):
    # Prepare: the simulation's own rows, measured 4 times slower by an emulation.
    spec, result = simulated
    measured = slowed(result, 4.0)

    # Execute
    predicted = predict(spec, measured)

    # Assert: the prediction, slowed by the same factor, matches every round.
    assert len(predicted.fidelity) == 3
    assert predicted.summary["fidelity"]["pairs"] == 3
    for record in predicted.fidelity:
        assert record.predicted_s == pytest.approx(record.measured_s, rel=1e-9)


def test_without_the_factor_the_same_rows_are_four_times_off(simulated):
    spec, result = simulated
    measured = slowed(result, 4.0)
    measured = replace(
        measured, summary={k: v for k, v in measured.summary.items() if k != "emulation"}
    )

    predicted = predict(spec, measured)

    for record in predicted.fidelity:
        assert record.predicted_s == pytest.approx(record.measured_s / 4.0, rel=1e-9)


def test_an_emulation_without_netem_is_predicted_without_latency_and_loss(simulated):
    # Prepare: an emulation that shaped rates but could not delay or drop packets.
    spec, _ = simulated
    emulation = {"slowdown_factor": 1.0, "latency_and_loss_emulated": False}

    # Execute
    as_run = prediction_spec(spec, emulation)
    with_netem = prediction_spec(spec, {**emulation, "latency_and_loss_emulated": True})

    # Assert: the links keep their rates and lose their latency, jitter and loss; with netem
    # the topology is the spec's own.
    assert as_run.mode.name == "sim"
    assert any(p.latency > 0 for p in spec.topology.link_profiles())
    for before, after in zip(
        spec.topology.link_profiles(), as_run.topology.link_profiles(), strict=True
    ):
        assert after.bandwidth == before.bandwidth
        assert (after.latency, after.latency_jitter, after.loss) == (0.0, 0.0, 0.0)
    assert with_netem.topology == spec.topology


def test_an_emulation_whose_latency_a_relay_emulated_is_predicted_with_latency(simulated):
    # Prepare: no netem; the relay held each direction's bytes for the links' latency.
    spec, _ = simulated
    emulation = {
        "slowdown_factor": 1.0,
        "latency_and_loss_emulated": False,
        "latency_mechanism": "relay",
    }

    # Execute
    as_run = prediction_spec(spec, emulation)

    # Assert: rates and latency stay; jitter and loss, which the relay does not make, go.
    assert any(p.latency > 0 for p in spec.topology.link_profiles())
    for before, after in zip(
        spec.topology.link_profiles(), as_run.topology.link_profiles(), strict=True
    ):
        assert (after.bandwidth, after.latency) == (before.bandwidth, before.latency)
        assert (after.latency_jitter, after.loss) == (0.0, 0.0)


def test_an_emulation_with_cpu_quotas_is_predicted_with_the_same_quotas(simulated):
    # Prepare: an emulation 2 times slower than the profiles, holding two trainers to CFS
    # quotas, over periods of 10 and 2 ms.
    spec, _ = simulated
    emulation = held({"3": 0.1, "8": 0.5}, {"3": 0.01, "8": 0.002}, slowdown_factor=2.0)

    # Execute
    as_run = prediction_spec(spec, emulation)
    without = prediction_spec(spec, {**emulation, "cpu_quota_cores": {}})

    # Assert: the two trainers are held to their quota, in their periods / 2 (the
    # prediction runs at the profiles' speed and is slowed afterwards), sharing the host's two
    # cores; no other device is held.
    devices = as_run.topology.devices
    assert (devices[3].cpu_quota.cores, devices[3].cpu_quota.period_s) == (0.1, 0.005)
    assert (devices[8].cpu_quota.cores, devices[8].cpu_quota.period_s) == (0.5, 0.001)
    assert devices[3].cpu_quota.host_cores == devices[8].cpu_quota.host_cores == 2
    assert all(d.cpu_quota is None for i, d in devices.items() if i not in (3, 8))
    assert all(d.cpu_quota is None for d in without.topology.devices.values())


def test_what_the_quota_costs_each_agents_step_slows_it_in_the_prediction(simulated):
    # Prepare: the emulation measured that held, device 3's step costs 1.5 times the
    # processor it costs alone, device 8's 1.25 times.
    spec, _ = simulated
    emulation = held(
        {"3": 0.1, "8": 0.5}, {"3": 0.02, "8": 0.004}, cpu_inflation={"3": 1.5, "8": 1.25}
    )
    # Execute
    as_run = prediction_spec(spec, emulation)
    # Assert: they compute that many times slower; the others as their profiles say.
    before, after = spec.topology.devices, as_run.topology.devices
    assert after[3].speed == pytest.approx(before[3].speed / 1.5)
    assert after[8].speed == pytest.approx(before[8].speed / 1.25)
    assert all(after[i].speed == d.speed for i, d in before.items() if i not in (3, 8))


def test_a_host_slower_than_its_measured_profile_slows_the_prediction_too(simulated, tmp_path):
    # Prepare: held, device 3's step costs 1.5 times its processor alone; alone, the host took
    # 1.1 times the processor per step that device 3's measured profile (its quota) assumed.
    spec, result = simulated
    emulation = held({"3": 0.1}, {"3": 0.02}, cpu_inflation={"3": 1.5}, host_drift={"3": 1.1})
    (tmp_path / "emulation.json").write_text(json.dumps(emulation))
    # Execute
    as_run = prediction_spec(spec, emulation)
    described = _with_emulation(result, tmp_path)
    # Assert: both slow the device; the report's assumptions say by how much the host drifted.
    assert as_run.topology.devices[3].speed == pytest.approx(
        spec.topology.devices[3].speed / (1.5 * 1.1)
    )
    assert any("took this host 1.10 times the processor" in a for a in described.assumptions)


def test_an_emulated_run_without_netem_is_predicted_at_link_rates_alone(simulated, tmp_path):
    # Prepare: the rounds of the latency-free simulation, as an emulation without netem measures.
    spec, _ = simulated
    emulation = {"slowdown_factor": 1.0, "latency_and_loss_emulated": False}
    rates_only = prediction_spec(spec, emulation)
    result = run(rates_only, runtime("sim"), tmp_path, Hooks(progress=False))
    measured = replace(result, summary={**result.summary, "emulation": emulation})

    # Execute
    predicted = predict(spec, measured)

    # Assert: every round is predicted exactly, as it would not be with the links' latency.
    for record in predicted.fidelity:
        assert record.predicted_s == pytest.approx(record.measured_s, rel=1e-9)


def test_real_training_on_a_data_set_it_does_not_know_is_refused_before_running():
    # Prepare: fl_digits, but the workload names ImageNet.
    cfg = compose(["+experiment=fl_digits", "workload.dataset.name=imagenet"])

    # Execute / Assert: the spec is refused, naming the field.
    with pytest.raises(ConfigError, match=r"^workload\.dataset\.name: .*'imagenet'"):
        build_spec(cfg, conf_dir())


def test_real_training_on_the_synthetic_set_runs_through_the_pipeline(tmp_path):
    # Prepare: fl_synthetic shrunk to 2 groups x 5 devices, 2,000 samples and 2 short rounds.
    cfg = compose(
        [
            "+experiment=fl_synthetic",
            "topology.generate.groups=2",
            "topology.generate.devices_per_group=5",
            "workload.dataset.samples=2000",
            "fl.rounds=2",
            "fl.local_epochs=1",
        ]
    )
    spec = build_spec(cfg, conf_dir())

    # Execute
    result = run(spec, runtime("sim"), tmp_path, Hooks(progress=False))

    # Assert: every client trained on its share of the 1,600 training images, and the server
    # evaluated each round on the 400 held out.
    assert [row.completed for row in result.rows] == [10, 10]
    assert all(row.accuracy is not None for row in result.rows)
    assert sorted(sum(counts) for counts in result.label_counts.values()) == [160] * 10
    assert "synthetic images" in " ".join(result.assumptions)


def _image_folder_spec(root: Path, levels: dict[str, int], *, broken: str | None = None):
    """One round of fl_digits on an image folder at ``root``: a class of ten 6x6 grey PNGs
    per entry of ``levels`` (name: first grey level), and a text file named ``broken`` (a
    path below ``root``) where one is asked for."""
    from PIL import Image

    for name, level in levels.items():
        (root / name).mkdir(parents=True)
        for i in range(10):
            Image.new("L", (6, 6), level + i).save(root / name / f"{i}.png")
    if broken is not None:
        (root / broken).write_text("not an image")
    cfg = compose(
        [
            "+experiment=fl_digits",
            "workload=image_folder_cnn",
            f"workload.dataset.path={root}",
            "partition.kind=iid",
            "fl.rounds=1",
        ]
    )
    return build_spec(cfg, conf_dir())


def test_real_training_reads_an_image_folder_the_workload_names(tmp_path):
    # Prepare: two classes of ten 6x6 PNGs each, dark and light.
    spec = _image_folder_spec(tmp_path / "images", {"dark": 30, "light": 220})

    # Execute
    result = run(spec, runtime("sim"), tmp_path / "run", Hooks(progress=False))

    # Assert: the 16 training images are shared among the testbed's 3 trainers.
    assert sum(sum(counts) for counts in result.label_counts.values()) == 16
    assert result.rows[0].accuracy is not None


def test_an_image_folder_holding_a_file_that_is_no_image_is_a_config_error(tmp_path):
    # Prepare: two classes of ten PNGs, and one ".png" that is text. The config check counts
    # files without decoding them, so the run met it; the command line printed a traceback.
    spec = _image_folder_spec(tmp_path / "images", {"a": 10, "b": 100}, broken="a/broken.png")

    # Execute / Assert
    with pytest.raises(ConfigError, match=r"^workload\.dataset: cannot read image .*broken\.png"):
        run(spec, runtime("sim"), tmp_path / "run", Hooks(progress=False))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["workload=image_folder_cnn"], r"^workload\.dataset\.path: .*root folder"),
        (
            ["workload=image_folder_cnn", "workload.dataset.path=/nonexistent/images"],
            r"^workload\.dataset: image folder /nonexistent/images does not exist",
        ),
        (
            ["workload=synthetic_cnn", "workload.dataset.samples=40"],
            r"^experiment\.clients: 3 clients need 48 .*the synthetic training split has 30",
        ),
        (
            ["workload=synthetic_cnn", "workload.dataset.samples=20"],
            r"^workload\.dataset: a test_fraction of 0\.2 holds out no sample of the 20",
        ),
    ],
)
def test_a_data_set_real_training_cannot_use_is_refused_before_running(overrides, message):
    # Prepare
    cfg = compose(["+experiment=fl_digits", *overrides])

    # Execute / Assert
    with pytest.raises(ConfigError, match=message):
        build_spec(cfg, conf_dir())


def test_a_round_with_fewer_updates_than_krum_needs_fails_and_the_run_goes_on(tmp_path):
    # Prepare: 8 trainers, 4 of them offline throughout, under Krum with f = 1 (5 updates).
    # aggregate_fit raised, and the command line printed a traceback.
    away = ", ".join(f"{{device: {d}, start_s: 0, end_s: 1000}}" for d in (1, 2, 5, 6))
    cfg = compose(
        [
            "+experiment=fl_digits",
            "experiment.clients=[1,2,3,4,5,6,7,8]",
            *("strategy=krum", "strategy.f=1", "fl.rounds=2", "fl.deadline_s=5"),
            f"faults.outages=[{away}]",
        ]
    )
    spec = build_spec(cfg, conf_dir())

    # Execute
    result = run(spec, runtime("sim"), tmp_path / "run", Hooks(progress=False))

    # Assert: both rounds ran, neither aggregated; the version stays.
    assert [r.aggregated for r in result.rows] == [False, False]
    assert result.summary["rounds_failed"] == 2


def test_krum_with_fewer_clients_than_it_needs_is_refused_before_running():
    # Prepare: Krum with f = 2 needs 7 updates; the testbed has 3 trainers.
    cfg = compose(["+experiment=fl_digits", "strategy=krum", "strategy.f=2"])

    # Execute / Assert
    with pytest.raises(ConfigError, match=r"^strategy: krum needs at least 7 updates a round"):
        build_spec(cfg, conf_dir())


@pytest.mark.parametrize(
    ("groups", "overrides", "message"),
    [
        # Krum (f = 1) needs 5 updates: the cloud gets 6, one a group, but each group of the
        # edge fleet combines its 4 members by the same rule.
        (
            6,
            ["strategy=krum", "strategy.f=1"],
            r"^strategy: krum needs at least 5 updates a round, and the run has 4 clients in "
            r"group \d+ \(fl.hierarchical\)",
        ),
        # The groups combine by FedAvg; the cloud's Krum gets one update from each of 3 groups.
        (
            3,
            ["strategy=krum", "strategy.f=1", "+strategy@group_strategy=fedavg"],
            r"^strategy: krum needs at least 5 updates a round, and the run has 3 groups",
        ),
        (
            3,
            ["+strategy@group_strategy=krum", "group_strategy.f=1"],
            r"^group_strategy: krum needs at least 5 updates a round, and the run has 4 clients",
        ),
    ],
    ids=["groups-by-strategy", "cloud", "group-strategy"],
)
def test_hierarchical_rules_that_never_get_enough_updates_are_refused(groups, overrides, message):
    # Prepare: groups of 4 trainers, hierarchical rounds.
    cfg = compose(
        [
            "+experiment=fl_digits",
            "topology=edge_fleet",
            f"topology.generate.groups={groups}",
            "topology.generate.devices_per_group=4",
            "fl.hierarchical=true",
            *overrides,
        ]
    )

    # Execute / Assert
    with pytest.raises(ConfigError, match=message):
        build_spec(cfg, conf_dir())


def test_a_federated_run_streams_its_events_to_the_run_directory(tmp_path):
    # Prepare: a modelled round of 20 trainers, and one that may write only 10 events.
    base = [
        "+experiment=fl_scale",
        "topology.generate.groups=2",
        "topology.generate.devices_per_group=10",
        "topology.fleet.spread.bandwidth=0.8",
        "fl.rounds=2",
        "fl.fraction_per_round=1.0",
    ]
    spec = build_spec(compose(base))
    capped = build_spec(compose([*base, "fl.max_events=10"]))
    # Execute
    result = run(spec, runtime("sim"), tmp_path / "all", Hooks(progress=False))
    few = run(capped, runtime("sim"), tmp_path / "capped", Hooks(progress=False))
    # Assert: every event is in the run's events.csv, none in memory, and the rows are the
    # same whether the file takes them all or 10.
    events = pd.read_csv(result.events_file)
    assert result.events_file == tmp_path / "all" / "events.csv"
    assert result.events == [] and result.all_events() == []
    # 20 trainers x (download, train, upload) + aggregate and publish, in each of 2 rounds.
    assert len(events) == result.summary["events_recorded"] == 2 * (20 * 3 + 2)
    assert result.summary["events_not_recorded"] == 0
    kinds = {"model_download", "train", "update_upload", "aggregate", "publish"}
    assert set(events["kind"]) == kinds
    assert (events["end_s"].diff().dropna() >= 0).all()  # written as they happened
    assert len(pd.read_csv(few.events_file)) == few.summary["events_recorded"] == 10
    assert few.summary["events_not_recorded"] == 2 * (20 * 3 + 2) - 10
    assert few.rows == result.rows
    first = events[events["end_s"] <= result.rows[0].finished_s + 1e-9]
    assert result.rows[0].bytes_moved == first["bytes"].sum()


@pytest.mark.parametrize(("override", "plots"), [([], True), (["report.plots=false"], False)])
def test_report_plots_decides_whether_a_run_writes_its_plots(override, plots, tmp_path):
    # Prepare: a modelled round of 4 trainers.
    overrides = [
        "+experiment=fl_digits",
        "fl.training=modelled",
        "fl.rounds=1",
        "topology=edge_fleet",
        "topology.generate.groups=1",
        "topology.generate.devices_per_group=4",
        *override,
    ]
    spec = build_spec(compose(overrides))

    # Execute
    run_and_write(spec, runtime("sim"), tmp_path, Hooks(progress=False))

    # Assert
    assert (tmp_path / "plots").is_dir() is plots
    assert (tmp_path / "runs.csv").is_file() and (tmp_path / "report.md").is_file()


def test_a_large_fleet_is_described_by_profile_not_by_client(tmp_path):
    # Prepare: 60 trainers (over the 50 the report names one by one), each at its own speed.
    from fedsim.scenarios.federated import CLIENT_LINES_MAX

    overrides = [
        "+experiment=fl_scale",
        "topology.generate.groups=2",
        "topology.generate.devices_per_group=30",
        "topology.fleet.spread.speed=0.5",
        "fl.rounds=1",
    ]
    spec = build_spec(compose(overrides))
    # Execute
    result = run(spec, runtime("sim"), tmp_path, Hooks(progress=False))
    # Assert: no line per client, a line per hardware profile whose counts cover the fleet.
    lines = [a for a in result.assumptions if " clients on " in a]
    assert len(spec.clients) > CLIENT_LINES_MAX
    assert not [a for a in result.assumptions if a.startswith("Client ")]
    profiles = {spec.topology.devices[d].hardware.name for d in spec.clients}
    assert len(lines) == len(profiles)
    assert sum(int(a.split(" clients on ")[0].replace(",", "")) for a in lines) == 60
    assert all("each at its own speed" in a for a in lines)


def test_a_round_time_split_leaves_out_the_steps_of_devices_that_never_answered(tmp_path):
    # Prepare: trainers that drop out of a round with probability 0.4 (train, send nothing),
    # rounds cut at their deadline: a dropped device's steps are logged, its result never comes.
    spec = build_spec(
        compose(
            [
                "+experiment=fl_digits",
                "fl.training=modelled",
                "fl.rounds=8",
                "faults.dropout=0.4",
                "fl.deadline_s=2",
                "fl.min_fit=1",
            ]
        )
    )
    # Execute
    result = run(spec, runtime("sim"), tmp_path, Hooks(progress=False))
    # Assert: each round's split is that of its answered devices' steps and the server's;
    # rounds with a dropped device wait for it, as a measured run (which never hears of its
    # steps) splits them, and the dropped device's bytes still count as moved.
    events = pd.read_csv(result.events_file)
    lost = {(rnd, dev) for rnd, dev, why in result.failures if why == NO_RESULT}
    moved = 0
    for row in result.rows:
        inside = events[
            (events["start_s"] >= row.started_s - 1e-9) & (events["end_s"] <= row.finished_s + 1e-9)
        ]
        gone = {dev for rnd, dev in lost if rnd == row.round}
        answered = inside[~inside["device"].isin(gone)]
        path = critical_path(as_events(answered), row.started_s, row.finished_s)
        split = (row.transfer_s, row.compute_s, row.aggregation_s, row.waiting_s)
        assert split == pytest.approx(
            (path.transfer, path.compute, path.aggregation, path.waiting), abs=1e-12
        )
        assert row.bytes_moved == inside["bytes"].sum()
        if gone:
            everything = critical_path(as_events(inside), row.started_s, row.finished_s)
            moved += everything.waiting < row.waiting_s - 1e-9  # a dropped step was on it
    assert moved >= 1


def as_events(frame: pd.DataFrame) -> list[Event]:
    """The rows of an ``events.csv`` as events."""
    return [
        Event(
            device=int(r.device),
            kind=EventKind(r.kind),
            start=float(r.start_s),
            end=float(r.end_s),
            nbytes=int(r.bytes),
        )
        for r in frame.itertuples()
    ]


def test_a_job_naming_code_the_server_does_not_allow_is_refused_before_it_runs(tmp_path):
    # Prepare: a server as fedsim server starts it (no --plugin), and a job whose selection
    # policy is os.system: it ran the command, then was refused for its result's type.
    from fedsim.core.plugins import restrict

    mark = tmp_path / "ran"
    job = {
        "experiment": {"name": "fl_digits"},
        "fl": {"selection": {"_target_": "os.system", "command": f"touch {mark}"}},
    }
    restrict([])
    try:
        # Execute
        with pytest.raises(ConfigError) as refused:
            Jobs().prepare("federated", job)
    finally:
        restrict(None)

    # Assert
    assert "fl.selection: os.system is not a plug-in this server loads" in str(refused.value)
    assert not mark.exists()


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (
            {"fl": {"rounds": "many"}},
            "config.fl.rounds: Value 'many' of type 'str' could not be converted to Integer",
        ),
        ({"fl": {"roundz": 1}}, "config.fl.roundz: Key 'roundz' not in 'FLConf'"),
        ({"bogus": 1}, "config.bogus: Key 'bogus' not in 'Config'"),
    ],
)
def test_a_jobs_config_off_the_schema_is_refused_in_one_line_naming_the_key(config, message):
    # Prepare: what POST /api/v1/jobs hands the server's job runner.
    job = {"experiment": {"name": "fl_digits"}, **config}

    # Execute
    with pytest.raises(ConfigError) as refused:
        Jobs().prepare("federated", job)

    # Assert: the server answered 422 with OmegaConf's full_key, reference_type and
    # object_type lines after the message.
    assert str(refused.value) == message
