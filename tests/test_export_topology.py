"""``fedsim export-topology`` from a local calibration, and its one-line errors (the export from
a live server is tests/real/test_export_recorded_fleet.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedsim.config import build_topology, compose, conf_dir, load_hardware_profile
from fedsim.export_topology import main

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
        assert topology.devices[t].link.bandwidth == pytest.approx(20e6 / 8)
        assert topology.devices[t].link.latency == pytest.approx(0.05)
    assert topology.devices[topology.server].hardware.name == "cloud_vm_8c"


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
