"""``fedsim export-topology`` from a local calibration, and its one-line errors (the export from
a live server is tests/real/test_export_recorded_fleet.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from fedsim import export_topology
from fedsim.config import build_spec, build_topology, compose, conf_dir, load_hardware_profile
from fedsim.core.calibration import StepModel
from fedsim.core.traces import load_device_table
from fedsim.export_topology import (
    Fleet,
    Link,
    Recorded,
    _profile_file,
    fleet_from_server,
    main,
    write,
)
from fedsim.real.protocol import Paths

MEASURED_VM = conf_dir() / "hardware" / "measured_vm.yaml"


def replayed(out: Path, *overrides: str):
    cfg = compose(["+experiment=fl_digits", f"hydra.searchpath=[file://{out}]", *overrides])
    return build_topology(cfg, conf_dir())


def test_a_calibration_exports_a_fleet_of_its_hardware(tmp_path, capsys):
    # Prepare
    out = tmp_path / "conf"

    # Execute
    code = main(
        [
            *("--calibration", str(MEASURED_VM), "--name", "vm", "--out", str(out)),
            *("--devices", "4", "--bandwidth-mbps", "20", "--latency-ms", "50"),
        ]
    )
    topology = replayed(out, "topology=vm")

    # Assert: four trainers measured as the file says, on the links asked for, and a server.
    assert code == 0 and "topology=vm" in capsys.readouterr().out
    expected = load_hardware_profile(MEASURED_VM)
    assert len(topology.trainers) == 4
    for t in topology.trainers:
        hw = topology.devices[t].hardware
        assert hw.kind == "measured" and hw.source == expected.source
        assert hw.steps == expected.steps
        # The per-request cost and round overhead travel with the profile.
        assert hw.request_cpu_s == expected.request_cpu_s > 0
        assert hw.round_overhead_s == expected.round_overhead_s > 0
        assert topology.devices[t].link.bandwidth == pytest.approx(20e6 / 8)
        assert topology.devices[t].link.latency == pytest.approx(0.05)
    assert topology.devices[topology.server].hardware.name == "cloud_vm_8c"


def test_an_exported_calibration_carries_its_evaluation_step_models(tmp_path):
    # Prepare: the VM's profile with an evaluation step model, as `fedsim calibrate` writes now.
    calibration = tmp_path / "evaluated_vm.yaml"
    evaluation = {"overhead_s": 4e-4, "per_sample_s": 1.3e-5, "batch_sizes": [32, 128, 512]}
    document = OmegaConf.load(MEASURED_VM)
    document.eval_steps = {"digits_cnn": evaluation}
    calibration.write_text(OmegaConf.to_yaml(document))
    out = tmp_path / "conf"

    # Execute
    code = main(["--calibration", str(calibration), "--name", "vm", "--out", str(out)])
    topology = replayed(out, "topology=vm")

    # Assert: every trainer's profile times the server-side evaluation as the file says.
    assert code == 0
    expected = load_hardware_profile(calibration).eval_steps
    assert expected == {"digits_cnn": StepModel(overhead_s=4e-4, per_sample_s=1.3e-5)}
    assert all(topology.devices[t].hardware.eval_steps == expected for t in topology.trainers)


@pytest.mark.parametrize(
    "eval_steps",
    [
        None,
        {
            "digits_cnn": {
                "overhead_s": 4e-4,
                "per_sample_s": 1.3e-5,
                "residual_s": 0.0,
                "flops_per_sample": None,
                "batch_sizes": [32, 128, 512],
            }
        },
    ],
)
def test_a_servers_record_exports_a_profile_that_loads_with_or_without_eval_steps(
    tmp_path, monkeypatch, eval_steps
):
    # Prepare: a server whose one device reported the VM's profile, shown as the server shows
    # a record: the figures not reported (eval_steps from an older agent, say) as null.
    measured = {k: v for k, v in _profile_file(MEASURED_VM).items() if k != "persist_cpu_s"}
    measured.update(persist_cpu_s=None, eval_steps=eval_steps)
    device = {"id": 1, "description": "pi", "group": 1, "id_in_group": 0, "measured": measured}
    device["resources"] = {"bandwidth_up": 1e6, "bandwidth_down": 2e6, "rtt": 0.02}
    answers = {
        Paths.DEVICES: {"devices": [device]},
        Paths.GROUPS: {"groups": [{"id": 1, "description": "lab"}]},
    }
    monkeypatch.setattr(export_topology, "_get", lambda url, token: answers[url[len("http://s") :]])
    out = tmp_path / "conf"

    # Execute
    write(fleet_from_server("http://s", "token"), "lab", out, "test")
    hw = load_hardware_profile(out / "hardware" / "lab_dev1.yaml")

    # Assert: the profile loads; the evaluation step model travels when reported.
    assert hw.steps == load_hardware_profile(MEASURED_VM).steps
    assert hw.persist_cpu_s == 0.0
    if eval_steps is None:
        assert hw.eval_steps == {}
    else:
        assert hw.eval_steps == {"digits_cnn": StepModel(overhead_s=4e-4, per_sample_s=1.3e-5)}


def test_the_printed_command_at_scale_runs_a_thousand_trainers(tmp_path, capsys):
    # Prepare: the export prints how to replay its fleet at scale; with fl_digits (real
    # training on 1,797 images) a thousand trainers were refused for want of samples.
    out = tmp_path / "conf"
    main(["--calibration", str(MEASURED_VM), "--name", "vm", "--out", str(out)])
    [line] = [x for x in capsys.readouterr().out.splitlines() if x.startswith("at scale:")]
    words = line.split("python -m fedsim ", 1)[1].split()
    assert words[:2] == ["--config-dir", str(out)]
    sizes = {"topology.generate.groups=G": "=10", "topology.generate.devices_per_group=N": "=100"}
    overrides = [w[:-2] + sizes[w] if w in sizes else w for w in words]

    # Execute
    cfg = compose([*overrides[2:], f"hydra.searchpath=[file://{out}]"])
    spec = build_spec(cfg, conf_dir())

    # Assert
    assert len(spec.clients) == 1000


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["--server", "http://127.0.0.1:9"], "--token-file"),
        (["--calibration", str(conf_dir() / "hardware" / "rpi4.yaml")], "not a measured"),
        (["--calibration", "/no/such.yaml"], "/no/such.yaml"),
        (["--calibration", str(MEASURED_VM), "--server-hardware", "nope"], "--server-hardware"),
        (["--calibration", str(MEASURED_VM), "--devices", "0"], "--devices"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(tmp_path, capsys, args, complaint):
    # Prepare
    token = tmp_path / "token"
    token.write_text("t")

    # Execute
    with pytest.raises(SystemExit) as exit_:
        main([*args, "--name", "x", "--out", str(tmp_path / "out")])

    # Assert
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert err.startswith("fedsim export-topology: error: ") and err.count("\n") == 1
    assert complaint in err


def test_a_second_export_into_the_same_directory_needs_force(tmp_path, capsys):
    # Prepare: an export, then one of its files edited and another one removed.
    out = tmp_path / "conf"
    argv = ["--calibration", str(MEASURED_VM), "--name", "vm", "--out", str(out)]
    assert main(argv) == 0
    edited, removed = out / "topology" / "vm.yaml", out / "topology" / "vm_fleet.yaml"
    edited.write_text("# mine\n")
    removed.unlink()
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    capsys.readouterr()

    # Execute
    with pytest.raises(SystemExit) as exit_:
        main(argv)

    # Assert: one line naming the files that exist and --force; every file as it was, and
    # the removed one not written either.
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("fedsim export-topology: error: ") and err.count("\n") == 1
    assert "pass --force" in err and str(edited) in err and str(removed) not in err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before

    # Execute: with --force, the export replaces them.
    assert main([*argv, "--force"]) == 0

    # Assert
    assert edited.read_text() != "# mine\n" and removed.is_file()
    assert replayed(out, "topology=vm").trainers


def test_the_exported_fleet_draws_its_trainers_from_the_recorded_devices(tmp_path):
    # Prepare: three recorded devices with links of their own, as from a live server.
    profile = _profile_file(MEASURED_VM)
    links = {1: (20.0, 50.0), 2: (100.0, 5.0), 3: (4.0, 120.0)}
    fleet = Fleet(
        devices=[
            Recorded(
                id=i,
                description=f"device {i}",
                group=1,
                id_in_group=i - 1,
                hardware=profile,
                link=Link(bandwidth_mbps=mbps, latency_ms=ms, description="probed"),
            )
            for i, (mbps, ms) in links.items()
        ],
        groups={1: "recorded"},
        origin="a test",
    )
    out = tmp_path / "conf"

    # Execute: the recorded fleet scaled to 300 trainers.
    write(fleet, "lab", out, "test")
    scaled = replayed(
        out,
        "topology=lab_fleet",
        "topology.generate.groups=3",
        "topology.generate.devices_per_group=100",
    )

    # Assert: each trainer is one of the recorded devices (its profile and its link), drawn
    # at random by the seed, and all three appear; the table loads as any device table does.
    recorded = {(f"lab_dev{i}", mbps * 1e6 / 8, ms / 1e3) for i, (mbps, ms) in links.items()}
    seen = [
        (d.hardware.name, round(d.link.bandwidth, 3), round(d.link.latency, 9))
        for d in (scaled.devices[t] for t in scaled.trainers)
    ]
    assert len(seen) == 300
    assert set(seen) == {(h, round(b, 3), round(lat, 9)) for h, b, lat in recorded}
    assert seen != sorted(seen)
    assert len(load_device_table(out / "traces" / "lab_devices.csv")) == 3
