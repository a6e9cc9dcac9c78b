"""``fedsim server``: its command line, the configuration it builds, and the process it runs
(plain HTTP and TLS, stopped by SIGTERM or SIGINT)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
from ports import free_port

from fedsim.certs import create
from fedsim.real.server.cli import main
from fedsim.real.server.config import ServerConfig
from tests.real.conftest import ADMIN_TOKEN


def test_config_refuses_what_cannot_work(tmp_path):
    base = {"data_dir": tmp_path, "admin_token": "a", "enrollment_token": "e"}
    for bad in (
        {"admin_token": ""},
        {"enrollment_token": "a"},  # the same as admin: every device would be admin
        {"port": 70000},
        {"patience_s": 0},
        {"max_blob_bytes": 0},
        {"cert_file": tmp_path / "cert.pem"},  # without a key
        {"client_ca_file": tmp_path / "ca.pem"},  # client certificates without TLS
        {"prometheus_url": "prometheus:9090"},
        {"history_samples": 0},
        {"history_interval_s": -1},
        {"header_read_timeout_s": 0},
        {"sd_allowed_networks": ("10.0.0.0/33",)},
        {"sd_allowed_networks": ("not-a-network",)},
        {"viewer_token": ""},
        {"viewer_token": "a"},  # the admin's: one token, two roles
        {"viewer_token": "e"},  # the enrollment token: every device could read everything
    ):
        with pytest.raises(ValueError):
            ServerConfig(**{**base, **bad})
    assert not ServerConfig(**base).tls


def test_cli_help_explains_every_option(capsys):
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    for option in (
        "--host",
        "--port",
        "--data-dir",
        "--admin-token",
        "--viewer-token",
        "--enrollment-token",
        "--patience",
        "--max-json-bytes",
        "--max-blob-bytes",
        "--body-read-timeout",
        "--header-read-timeout",
        "--sd-allow",
        "--long-poll-max",
        "--shutdown-timeout",
        "--cert",
        "--key",
        "--client-ca",
        "--prometheus-url",
        "--history-samples",
        "--history-interval",
        "--log-level",
    ):
        assert option in text
    assert "FEDSIM_ADMIN_TOKEN" in text and "FEDSIM_ENROLLMENT_TOKEN" in text
    assert "FEDSIM_VIEWER_TOKEN" in text


def test_cli_refuses_to_start_without_tokens(monkeypatch, capsys, tmp_path):
    monkeypatch.delenv("FEDSIM_ADMIN_TOKEN", raising=False)
    monkeypatch.delenv("FEDSIM_ENROLLMENT_TOKEN", raising=False)
    assert main(["--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "FEDSIM_ADMIN_TOKEN" in err
    monkeypatch.setenv("FEDSIM_ADMIN_TOKEN", ADMIN_TOKEN)
    assert main(["--data-dir", str(tmp_path)]) == 2
    assert "FEDSIM_ENROLLMENT_TOKEN" in capsys.readouterr().err
    monkeypatch.setenv("FEDSIM_ENROLLMENT_TOKEN", ADMIN_TOKEN)
    assert main(["--data-dir", str(tmp_path)]) == 2
    assert "must differ" in capsys.readouterr().err


def test_cli_never_prints_a_token_from_the_environment(monkeypatch, capsys):
    monkeypatch.setenv("FEDSIM_ADMIN_TOKEN", "do-not-print-me")
    monkeypatch.setenv("FEDSIM_VIEWER_TOKEN", "nor-me")
    main(["--help"])
    out = capsys.readouterr().out
    assert "do-not-print-me" not in out and "nor-me" not in out


def test_cli_takes_the_viewer_token_from_the_environment(monkeypatch, capsys, tmp_path):
    # Prepare: a viewer token equal to the admin's, which the configuration refuses.
    monkeypatch.setenv("FEDSIM_ADMIN_TOKEN", ADMIN_TOKEN)
    monkeypatch.setenv("FEDSIM_ENROLLMENT_TOKEN", "enrollment-for-cli-test")
    monkeypatch.setenv("FEDSIM_VIEWER_TOKEN", ADMIN_TOKEN)

    # Execute
    status = main(["--data-dir", str(tmp_path)])

    # Assert: the variable was read, and the clash named.
    assert status == 2
    assert "viewer_token must differ" in capsys.readouterr().err


def get(url: str, context: ssl.SSLContext | None = None) -> dict:
    with urllib.request.urlopen(url, timeout=2, context=context) as r:
        return json.loads(r.read())


def serve(tmp_path, *extra: str, **env_vars: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    env = {
        **os.environ,
        "FEDSIM_ADMIN_TOKEN": ADMIN_TOKEN,
        "FEDSIM_ENROLLMENT_TOKEN": "enrollment-for-cli-test",
        **env_vars,
    }
    cmd = [sys.executable, "-m", "fedsim", "server", "--port", str(port)]
    cmd += ["--data-dir", str(tmp_path / "data"), *extra]
    return subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True), port


def wait_healthy(url: str, context: ssl.SSLContext | None = None) -> dict:
    deadline = time.monotonic() + 30
    while True:
        try:
            return get(url, context)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_the_command_serves_until_sigterm_and_exits_0(tmp_path):
    process, port = serve(tmp_path)
    try:
        health = wait_healthy(f"http://127.0.0.1:{port}/api/v1/health")
        assert health["status"] == "ok"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
    finally:
        process.kill()
        process.communicate()


def test_the_command_serves_the_viewer_token_read_only(tmp_path):
    # Prepare: the viewer token from the environment, as the admin token comes.
    process, port = serve(tmp_path, FEDSIM_VIEWER_TOKEN="viewer-for-cli-test")
    base = f"http://127.0.0.1:{port}/api/v1"
    viewer = {"Authorization": "Bearer viewer-for-cli-test"}
    try:
        wait_healthy(f"{base}/health")

        # Execute: a read, then a change.
        with urllib.request.urlopen(
            urllib.request.Request(f"{base}/devices", headers=viewer), timeout=5
        ) as r:
            listed = json.loads(r.read())
        change = urllib.request.Request(
            f"{base}/models",
            data=b'{"name": "m", "architecture": "mlp"}',
            headers={**viewer, "Content-Type": "application/json"},
            method="POST",
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(change, timeout=5)
    finally:
        process.kill()
        process.communicate()

    # Assert
    assert listed == {"devices": []}
    assert refused.value.code == 403


def test_the_command_logs_requests_without_their_query_strings(tmp_path):
    # Prepare
    process, port = serve(tmp_path)
    secret = "a-token-in-a-query-string"
    try:
        wait_healthy(f"http://127.0.0.1:{port}/api/v1/health")

        # Execute: a token in a query string (refused), then stop the server.
        with pytest.raises(urllib.error.HTTPError) as refused:
            get(f"http://127.0.0.1:{port}/api/v1/devices?token={secret}")
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=20)
    finally:
        process.kill()
        _, log = process.communicate()

    # Assert: the request is in the access log by its path, the token is not.
    assert refused.value.code == 401
    assert '"GET /api/v1/devices" 401' in log, log
    assert secret not in log


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl for a certificate")
def test_the_command_serves_https_with_a_certificate(tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    process, port = serve(tmp_path, "--cert", str(cert), "--key", str(key))
    try:
        context = ssl.create_default_context(cafile=str(cert))
        health = wait_healthy(f"https://127.0.0.1:{port}/api/v1/health", context)
        assert health["status"] == "ok"
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=20) == 0
    finally:
        process.kill()
        process.communicate()


def test_the_command_requires_client_certificates_with_client_ca(tmp_path):
    # Prepare
    pki = tmp_path / "pki"
    create(pki, devices=["device-1"])
    tls = ["--cert", str(pki / "server.pem"), "--key", str(pki / "server.key")]

    # Execute
    process, port = serve(tmp_path, *tls, "--client-ca", str(pki / "ca.pem"))
    try:
        context = ssl.create_default_context(cafile=str(pki / "ca.pem"))
        context.load_cert_chain(pki / "device-1.pem", pki / "device-1.key")
        health = wait_healthy(f"https://127.0.0.1:{port}/api/v1/health", context)
        bare = ssl.create_default_context(cafile=str(pki / "ca.pem"))
        with pytest.raises(OSError):  # urllib's URLError or the connection's own error
            get(f"https://127.0.0.1:{port}/api/v1/health", bare)
        process.send_signal(signal.SIGINT)
        status = process.wait(timeout=20)
    finally:
        process.kill()
        process.communicate()

    # Assert
    assert health["status"] == "ok" and status == 0


def test_the_command_refuses_bad_tls_files_before_serving(tmp_path, capsys, monkeypatch):
    # Prepare
    monkeypatch.setenv("FEDSIM_ADMIN_TOKEN", "a")
    monkeypatch.setenv("FEDSIM_ENROLLMENT_TOKEN", "e")
    pki = tmp_path / "pki"
    create(pki)
    base = ["--data-dir", str(tmp_path / "data")]
    tls = ["--cert", str(pki / "server.pem"), "--key", str(pki / "server.key")]

    # Execute
    without_cert = main([*base, "--client-ca", str(pki / "ca.pem")])
    without_cert_err = capsys.readouterr().err
    missing = main([*base, *tls, "--client-ca", str(tmp_path / "nope.pem")])
    missing_err = capsys.readouterr().err
    not_a_ca = main([*base, *tls, "--client-ca", str(pki / "server.key")])
    not_a_ca_err = capsys.readouterr().err

    # Assert
    assert (without_cert, missing, not_a_ca) == (2, 2, 2)
    assert "client_ca_file (mutual TLS) needs cert_file" in without_cert_err
    assert "no such file" in missing_err and "nope.pem" in missing_err
    assert not_a_ca_err.startswith("fedsim server: error: TLS:")


def test_the_command_refuses_a_data_dir_that_is_a_file(tmp_path, capsys, monkeypatch):
    # Prepare
    monkeypatch.setenv("FEDSIM_ADMIN_TOKEN", "a")
    monkeypatch.setenv("FEDSIM_ENROLLMENT_TOKEN", "e")
    a_file = tmp_path / "notes.txt"
    a_file.write_text("not a directory")

    # Execute
    status = main(["--data-dir", str(a_file), "--port", "0"])

    # Assert: the error named the option, not only "[Errno 17] File exists: '...notes.txt'".
    assert status == 2
    err = capsys.readouterr().err
    assert err == f"fedsim server: error: --data-dir {a_file}: not a directory\n"
    assert a_file.read_text() == "not a directory"


def test_the_command_refuses_a_plugin_that_is_not_a_module_name(tmp_path, capsys, monkeypatch):
    # Prepare
    monkeypatch.setenv("FEDSIM_ADMIN_TOKEN", "a")
    monkeypatch.setenv("FEDSIM_ENROLLMENT_TOKEN", "e")

    # Execute
    status = main(["--data-dir", str(tmp_path / "data"), "--plugin", "my pkg/strategies"])

    # Assert
    assert status == 2
    err = capsys.readouterr().err
    assert err == (
        "fedsim server: error: --plugin 'my pkg/strategies': not a module name "
        "(pkg or pkg.module)\n"
    )
