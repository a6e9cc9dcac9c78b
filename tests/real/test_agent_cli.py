"""``fedsim agent``'s command line: its help, the config it builds, one-line errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedsim.real.agent import cli

OPTIONS = (
    "--probe-interval",
    "--probe-bytes",
    "--max-transfer-bytes",
    "--server",
    "--token",
    "--device-id",
    "--description",
    "--group",
    "--group-description",
    "--id-in-group",
    "--profile",
    "--label",
    "--data",
    "--input-size",
    "--state-dir",
    "--heartbeat-interval",
    "--poll-wait",
    "--ca",
    "--cafile",
    "--cert",
    "--key",
    "--insecure",
    "--threads",
    "--torch-device",
    "--metrics-port",
    "--metrics-host",
    "--node-exporter",
    "--calibrate",
    "--no-calibrate",
    "--calibrate-model",
    "--calibrate-input-size",
    "--calibrate-num-classes",
    "--plugin",
    "--log-level",
)
URL = "http://127.0.0.1:8080"
HTTPS = "https://127.0.0.1:8443"


def test_help_exits_0_and_explains_every_option(capsys):
    # Execute
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--help"])

    # Assert
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for option in OPTIONS:
        assert option in out
    assert "FEDSIM_ENROLLMENT_TOKEN" in out and "synthetic:N" in out
    parser_options = {s for a in cli.build_parser()._actions for s in a.option_strings}
    assert parser_options - {"-h", "--help"} == set(OPTIONS)


def test_options_become_the_agent_config(tmp_path, monkeypatch):
    # Prepare
    monkeypatch.setenv("FEDSIM_ENROLLMENT_TOKEN", "from-env")
    data = tmp_path / "shard.npz"
    np.savez(data, X=np.zeros((2, 1, 8, 8), np.float32), y=np.zeros(2, np.int64))
    argv = [
        "--server", URL, "--device-id", "4", "--description", "pi", "--group", "2",
        "--id-in-group", "1", "--profile", "rpi4", "--label", "site=lab", "--label", "rack=3",
        "--data", str(data), "--state-dir", str(tmp_path / "s"), "--heartbeat-interval", "0.5",
        "--poll-wait", "10", "--insecure", "--threads", "1", "--log-level", "debug",
        "--node-exporter", "http://10.0.0.5:9100/metrics", "--no-calibrate",
        "--calibrate-model", "digits_mlp", "--max-transfer-bytes", "1000000",
        "--plugin", "byo_fl", "--plugin=lab.models.Net",
    ]  # fmt: skip

    # Execute
    config, level = cli.parse_config(argv)

    # Assert
    assert config.server == URL and config.enrollment_token == "from-env"
    assert (config.device_id, config.group, config.id_in_group) == (4, 2, 1)
    assert config.description == "pi" and config.profile == "rpi4"
    assert config.labels == {"site": "lab", "rack": "3"}
    assert config.data_spec.kind == "npz" and config.data_spec.path == data
    assert config.state_dir == tmp_path / "s"
    assert config.heartbeat_interval == 0.5 and config.poll_wait == 10
    assert config.insecure and config.threads == 1 and level == "debug"
    assert config.node_exporter == "http://10.0.0.5:9100/metrics"
    assert not config.calibrate and config.calibrate_model == "digits_mlp"
    assert config.max_transfer_bytes == 1_000_000
    assert config.plugins == ("byo_fl", "lab.models.Net")


def test_a_users_model_under_a_plugin_is_calibrated_at_the_shape_given(tmp_path):
    # Prepare
    argv = ["--server", URL, "--token", "t", "--state-dir", str(tmp_path), "--plugin", "byo_fl"]
    argv += ["--calibrate-model", "byo_fl.model.TinyNet"]
    argv += ["--calibrate-input-size", "8", "--calibrate-num-classes", "4"]

    # Execute
    config, _ = cli.parse_config(argv)

    # Assert
    assert config.calibrate_model == "byo_fl.model.TinyNet"
    assert config.calibrate_shape == (8, 4)


def test_a_saved_device_token_stands_in_for_the_enrollment_token(tmp_path, monkeypatch):
    # Prepare
    monkeypatch.delenv("FEDSIM_ENROLLMENT_TOKEN", raising=False)
    (tmp_path / "device.json").write_text('{"device_id": 3, "token": "t"}')

    # Execute
    config, _ = cli.parse_config(["--server", URL, "--state-dir", str(tmp_path)])

    # Assert: and by default the agent measures itself for the digits CNN.
    assert config.enrollment_token is None
    assert config.calibrate and config.calibrate_model == "digits_cnn"


def test_the_tls_files_become_the_agent_config(tmp_path):
    # Prepare
    for name in ("ca.pem", "device-1.pem", "device-1.key"):
        (tmp_path / name).write_text("")
    argv = ["--server", HTTPS, "--token", "t", "--state-dir", str(tmp_path)]
    argv += ["--ca", str(tmp_path / "ca.pem"), "--cert", str(tmp_path / "device-1.pem")]
    argv += ["--key", str(tmp_path / "device-1.key")]

    # Execute
    config, _ = cli.parse_config(argv)

    # Assert
    assert config.cafile == str(tmp_path / "ca.pem")
    assert config.cert_file == str(tmp_path / "device-1.pem")
    assert config.key_file == str(tmp_path / "device-1.key")


def test_synthetic_data_needs_no_file(tmp_path):
    config, _ = cli.parse_config(
        ["--server", URL, "--token", "t", "--state-dir", str(tmp_path), "--data", "synthetic:64"]
    )

    assert config.data_spec.kind == "synthetic" and config.data_spec.count == 64


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        ([], "--server"),
        (["--server", "ftp://host"], "--server"),
        (["--server", URL, "--device-id", "four"], "--device-id"),
        (["--server", URL, "--poll-wait", "61"], "--poll-wait"),
        (["--server", URL, "--heartbeat-interval", "0"], "--heartbeat-interval"),
        (["--server", URL, "--label", "no-value"], "--label"),
        (["--server", URL, "--data", "synthetic:0"], "synthetic:N"),
        (["--server", URL, "--data", "/no/such/shard.npz"], "no such file"),
        (["--server", URL, "--data", "NOT_NPZ"], "not an .npz archive"),
        (["--server", URL, "--data", "NPZ_WITHOUT_Y"], "no array y (needs X and y)"),
        (["--server", URL, "--threads", "0"], "--threads"),
        (["--server", URL, "--log-level", "loud"], "--log-level"),
        (["--server", URL, "--insecure", "--cafile", "CAFILE"], "--insecure"),
        (["--server", URL, "--ca", "/no/such/ca.pem"], "--ca '/no/such/ca.pem': no such file"),
        (["--server", HTTPS, "--cert", "CAFILE"], "needs both --cert and --key"),
        (["--server", URL, "--cert", "CAFILE", "--key", "CAFILE"], "needs an https --server"),
        (["--server", URL, "--node-exporter", "10.0.0.5:9100"], "--node-exporter"),
        (["--server", URL, "--node-exporter", "http://:9100/metrics"], "--node-exporter"),
        (["--server", URL, "--calibrate-model", "gpt"], "--calibrate-model"),
        (
            ["--server", URL, "--calibrate-model", "byo_fl.model.TinyNet"],
            "not under this agent's --plugin paths (none given)",
        ),
        (
            ["--server", URL, "--plugin", "byo_fl", "--calibrate-model", "byo_flx.Net"],
            "not under this agent's --plugin paths (byo_fl)",
        ),
        (
            ["--server", URL, "--plugin", "byo_fl", "--calibrate-model", "byo_fl.model.TinyNet"],
            "needs --calibrate-input-size and --calibrate-num-classes",
        ),
        (["--server", URL, "--calibrate-input-size", "0"], "--calibrate-input-size must be >= 1"),
        (["--server", URL, "--max-transfer-bytes", "0"], "--max-transfer-bytes"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(tmp_path, capsys, args, complaint):
    # Prepare
    cafile = tmp_path / "ca.pem"
    cafile.write_text("")
    not_npz = tmp_path / "text.npz"
    not_npz.write_text("X,y\n0.5,3\n")
    without_y = tmp_path / "x-only.npz"
    np.savez(without_y, X=np.zeros((2, 1, 8, 8), np.float32))
    files = {"CAFILE": cafile, "NOT_NPZ": not_npz, "NPZ_WITHOUT_Y": without_y}
    argv = [str(files[a]) if a in files else a for a in args]
    argv += ["--token", "t", "--state-dir", str(tmp_path)]

    # Execute
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)

    # Assert
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and complaint in err
    assert err.startswith("fedsim agent: error: ")


def test_no_token_and_no_saved_identity_is_a_bad_argument(tmp_path, capsys, monkeypatch):
    # Prepare
    monkeypatch.delenv("FEDSIM_ENROLLMENT_TOKEN", raising=False)

    # Execute
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--server", URL, "--state-dir", str(Path(tmp_path) / "empty")])

    # Assert
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "FEDSIM_ENROLLMENT_TOKEN" in err
