"""``fedsim prometheus-config``: the prometheus.yml it writes, checked by promtool when present."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fedsim.monitor.cli import build_parser, main
from fedsim.monitor.prometheus_config import build_config, check_duration, render

PROMTOOL = shutil.which("promtool")


@pytest.fixture
def token_file(tmp_path) -> Path:
    path = tmp_path / "admin.token"
    path.write_text("admin-secret\n")
    return path


def job(config: dict, name: str) -> dict:
    return next(j for j in config["scrape_configs"] if j["job_name"] == name)


def test_scrapes_the_server_and_discovers_devices_through_it(token_file):
    config = build_config(server="http://10.0.0.1:8080", token_file=token_file)

    assert config["global"]["scrape_interval"] == "5s"
    server = job(config, "fedsim-server")
    assert server["metrics_path"] == "/metrics" and server["scheme"] == "http"
    assert server["static_configs"][0]["targets"] == ["10.0.0.1:8080"]
    sd = job(config, "fedsim-devices")["http_sd_configs"][0]
    assert sd["url"] == "http://10.0.0.1:8080/api/v1/sd/targets"
    assert sd["authorization"] == {"type": "Bearer", "credentials_file": str(token_file)}
    kept = [r["source_labels"] for r in job(config, "fedsim-devices")["relabel_configs"]]
    assert kept == [["fedsim_device"], ["fedsim_group"], ["fedsim_role"]]


def test_https_behind_a_path_prefix(token_file):
    config = build_config(
        server="https://fl.example/fedsim/api/v1/",
        token_file=token_file,
        ca_file="/etc/fedsim/ca.pem",
    )
    server = job(config, "fedsim-server")
    assert server["scheme"] == "https" and server["metrics_path"] == "/fedsim/metrics"
    assert server["static_configs"][0]["targets"] == ["fl.example:443"]
    assert server["tls_config"] == {"ca_file": "/etc/fedsim/ca.pem"}
    sd = job(config, "fedsim-devices")["http_sd_configs"][0]
    assert sd["url"] == "https://fl.example:443/fedsim/api/v1/sd/targets"
    assert sd["tls_config"] == {"ca_file": "/etc/fedsim/ca.pem"}


def test_a_client_certificate_for_a_server_requiring_mutual_tls(token_file):
    # Execute
    config = build_config(
        server="https://fl.example:8443",
        token_file=token_file,
        ca_file="/etc/fedsim/ca.pem",
        cert_file="/etc/fedsim/prometheus.pem",
        key_file="/etc/fedsim/prometheus.key",
    )

    # Assert: presented on the server's scrapes and on service discovery alike
    tls = {
        "ca_file": "/etc/fedsim/ca.pem",
        "cert_file": "/etc/fedsim/prometheus.pem",
        "key_file": "/etc/fedsim/prometheus.key",
    }
    assert job(config, "fedsim-server")["tls_config"] == tls
    assert job(config, "fedsim-devices")["http_sd_configs"][0]["tls_config"] == tls
    with pytest.raises(ValueError, match="cert_file and key_file"):
        build_config(server="https://h:1", token_file=token_file, cert_file="c.pem")


def test_the_tls_settings_are_written_out_in_each_job(token_file):
    # Prepare
    config = build_config(
        server="https://fl.example:8443",
        token_file=token_file,
        ca_file="pki/ca.pem",
        cert_file="pki/prometheus.pem",
        key_file="pki/prometheus.key",
    )

    # Execute
    text = render(config)

    # Assert: spelled out twice, not as a YAML anchor and an alias to it.
    assert text.count("ca_file: pki/ca.pem") == 2
    assert "&id" not in text and "*id" not in text
    assert yaml.safe_load(text) == config


@pytest.mark.parametrize("server", ["fl.example:8080", "ftp://fl.example", "http://h:port"])
def test_a_bad_server_url_is_refused(server):
    with pytest.raises(ValueError, match="server"):
        build_config(server=server, token_file="t")


@pytest.mark.parametrize("text", ["5s", "1m30s", "500ms", "2h"])
def test_prometheus_durations_pass(text):
    assert check_duration(text) == text


@pytest.mark.parametrize("text", ["", "0s", "5", "5 s", "1s1m", "-1s"])
def test_other_durations_are_refused(text):
    with pytest.raises(ValueError):
        check_duration(text)


def test_main_writes_the_file_and_keeps_the_token_out_of_it(tmp_path, token_file):
    out = tmp_path / "prometheus.yml"
    argv = ["--server", "http://127.0.0.1:8080", "--token-file", str(token_file)]
    assert main([*argv, "--scrape-interval", "1s", "--out", str(out)]) == 0
    text = out.read_text()
    assert "admin-secret" not in text
    config = yaml.safe_load(text)
    assert config["global"]["scrape_interval"] == "1s"
    assert config == build_config(
        server="http://127.0.0.1:8080", token_file=token_file, scrape_interval="1s"
    )


def test_main_to_stdout(token_file, capsys):
    assert main(["--server", "http://h:1", "--token-file", str(token_file), "--out", "-"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["scrape_configs"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--server", "nohost"], "server 'nohost'"),
        (["--server", "http://h", "--scrape-interval", "fast"], "--scrape-interval"),
        (["--server", "http://h", "--out", "/nonexistent/dir/p.yml"], "--out"),
        ([], "--server"),
    ],
)
def test_bad_arguments_exit_2_in_one_line(args, message, token_file, capsys):
    with pytest.raises(SystemExit) as exit:
        main([*args, "--token-file", str(token_file)])
    assert exit.value.code == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_every_option_has_help():
    for action in build_parser()._actions:
        assert action.help, action.dest


def test_the_fedsim_command_dispatches_to_it(tmp_path, token_file):
    out = tmp_path / "p.yml"
    run = subprocess.run(
        [
            *(sys.executable, "-m", "fedsim", "prometheus-config", "--server", "http://h:1"),
            *("--token-file", str(token_file), "--out", str(out)),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    assert yaml.safe_load(out.read_text())["scrape_configs"]


@pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed (Debian: prometheus)")
@pytest.mark.parametrize("extra", [[], ["--scrape-interval", "1s", "--sd-refresh-interval", "2s"]])
def test_promtool_accepts_the_file(tmp_path, token_file, extra):
    out = tmp_path / "prometheus.yml"
    argv = ["--server", "http://127.0.0.1:8080", "--token-file", str(token_file)]
    assert main([*argv, *extra, "--out", str(out)]) == 0
    check = subprocess.run(
        [PROMTOOL, "check", "config", str(out)], capture_output=True, text=True, timeout=60
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_an_existing_file_is_kept_without_force(tmp_path, token_file, capsys):
    # Prepare: a hand-written configuration where the command would write.
    out = tmp_path / "prometheus.yml"
    out.write_bytes(b"# mine\nglobal: {scrape_interval: 1m}\n")
    before = sorted(tmp_path.iterdir())
    argv = ["--server", "http://h:1", "--token-file", str(token_file), "--out", str(out)]

    # Execute
    with pytest.raises(SystemExit) as exit_:
        main(argv)

    # Assert: one line naming the file and --force; the file and its directory as they were.
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(out) in err and "pass --force" in err
    assert out.read_bytes() == b"# mine\nglobal: {scrape_interval: 1m}\n"
    assert sorted(tmp_path.iterdir()) == before


def test_force_replaces_an_existing_file(tmp_path, token_file):
    # Prepare
    out = tmp_path / "prometheus.yml"
    out.write_text("# mine\n")
    argv = ["--server", "http://h:1", "--token-file", str(token_file), "--out", str(out)]

    # Execute
    code = main([*argv, "--force"])

    # Assert
    assert code == 0
    assert yaml.safe_load(out.read_text())["scrape_configs"]
