"""Mutual TLS: the server refuses clients without a certificate its CA signed, tokens still
apply, and a real-mode job runs over it end to end."""

from __future__ import annotations

import datetime as dt
import http.client
import json
import logging
import socket
import ssl
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fedsim.certs import Issued, create, issue, new_ca, write
from fedsim.config import ConfigError, build_spec, compose, conf_dir
from fedsim.real.launch import ServerThread
from fedsim.real.server.app import init_app
from fedsim.real.server.config import ServerConfig

ROOT = Path(__file__).resolve().parents[2]
ADMIN, ENROLLMENT = "admin-for-mtls", "enrollment-for-mtls"


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    """The CA, server, ``device-1`` and ``device-7`` of ``fedsim certs``, beside two
    certificates named ``device-1`` that the server must refuse: ``other-ca`` (signed by
    another CA) and ``expired`` (signed by the right CA, valid until two days ago)."""
    pki = tmp_path / "pki"
    create(pki, devices=["device-1", "device-7"])
    key = serialization.load_pem_private_key((pki / "ca.key").read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    ca = Issued(key=key, cert=x509.load_pem_x509_certificate((pki / "ca.pem").read_bytes()))
    other = issue(new_ca(), "device-1", client=True)
    write(other, pki / "other-ca.pem", pki / "other-ca.key")
    three_days_ago = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=3)
    expired = issue(ca, "device-1", client=True, days=1, valid_from=three_days_ago)
    write(expired, pki / "expired.pem", pki / "expired.key")
    return pki


@pytest.fixture
def server(pki: Path, tmp_path: Path) -> Iterator[ServerThread]:
    """A server requiring client certificates signed by ``pki``'s CA."""
    config = ServerConfig(
        data_dir=tmp_path / "data",
        admin_token=ADMIN,
        enrollment_token=ENROLLMENT,
        cert_file=pki / "server.pem",
        key_file=pki / "server.key",
        client_ca_file=pki / "ca.pem",
    )
    thread = ServerThread(init_app(config), ssl_context=config.ssl_context())
    thread.start()
    try:
        yield thread
    finally:
        thread.stop()


def client_context(pki: Path, cert: str | None) -> ssl.SSLContext:
    """A client trusting ``pki``'s CA that presents ``pki/CERT.pem`` when ``cert`` is given."""
    context = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    if cert is not None:
        context.load_cert_chain(pki / f"{cert}.pem", pki / f"{cert}.key")
    return context


def handshake(pki: Path, port: int, cert: str | None) -> ssl.SSLSocket:
    """A TLS 1.2 handshake with the server: there the server's verdict on the client's
    certificate ends the handshake itself (TLS 1.3 lets the client finish first)."""
    context = client_context(pki, cert)
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        return context.wrap_socket(sock, server_hostname="127.0.0.1")
    except BaseException:
        sock.close()
        raise


def get(pki: Path, port: int, cert: str | None, token: str | None) -> int:
    """The status of ``GET /api/v1/devices`` over TLS 1.3 (the default)."""
    conn = http.client.HTTPSConnection(
        "127.0.0.1", port, context=client_context(pki, cert), timeout=10
    )
    try:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        conn.request("GET", "/api/v1/devices", headers=headers)
        return conn.getresponse().status
    finally:
        conn.close()


@pytest.mark.parametrize("cert", [None, "other-ca", "expired"])
def test_a_client_without_a_certificate_of_the_ca_is_refused_in_the_handshake(pki, server, cert):
    # Execute / Assert: the handshake fails, before any HTTP
    with pytest.raises(ssl.SSLError):
        handshake(pki, server.port, cert)
    # Under TLS 1.3 the server closes the connection without an answer.
    with pytest.raises((ConnectionError, ssl.SSLError, http.client.RemoteDisconnected)):
        get(pki, server.port, cert, ADMIN)


def test_a_device_certificate_completes_the_handshake(pki, server):
    # Execute
    with handshake(pki, server.port, "device-1") as sock:
        peer = sock.getpeercert()

    # Assert: and the client verified the server against the CA, by its IP address
    assert peer is not None and ("IP Address", "127.0.0.1") in peer["subjectAltName"]


def test_a_certificate_is_no_token(pki, server):
    # Execute
    without = get(pki, server.port, "device-1", None)
    wrong = get(pki, server.port, "device-1", "not-a-token")
    admin = get(pki, server.port, "device-1", ADMIN)

    # Assert: the bearer tokens apply on top of the certificate
    assert (without, wrong, admin) == (401, 401, 200)


def agent(pki: Path, server: ServerThread, state: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "fedsim", "agent", "--server", server.url]
    cmd += ["--ca", str(pki / "ca.pem"), f"--token={ENROLLMENT}", "--state-dir", str(state)]
    cmd += ["--no-calibrate", "--probe-interval", "0", *extra]
    return subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def device_ids(pki: Path, port: int) -> list[int]:
    conn = http.client.HTTPSConnection(
        "127.0.0.1", port, context=client_context(pki, "device-1"), timeout=10
    )
    try:
        conn.request("GET", "/api/v1/devices", headers={"Authorization": f"Bearer {ADMIN}"})
        return [d["id"] for d in json.loads(conn.getresponse().read())["devices"]]
    finally:
        conn.close()


def test_an_agent_registers_with_its_certificate_and_not_without(pki, server, tmp_path, caplog):
    # Prepare
    caplog.set_level(logging.INFO, logger="fedsim.server.tls")
    cert = ["--cert", str(pki / "device-1.pem"), "--key", str(pki / "device-1.key")]

    # Execute: both start together; the one without a certificate keeps trying
    procs = [
        agent(pki, server, tmp_path / "holder", *cert, "--device-id", "1"),
        agent(pki, server, tmp_path / "stranger", "--device-id", "2"),
    ]
    try:
        deadline = time.monotonic() + 60
        while not (ids := device_ids(pki, server.port)) and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(2)  # the stranger has had as long, and retries within a second at first
        ids = device_ids(pki, server.port)
        # device 1's record, read with the certificate of device 7
        conn = http.client.HTTPSConnection(
            "127.0.0.1", server.port, context=client_context(pki, "device-7"), timeout=10
        )
        conn.request("GET", "/api/v1/devices/1", headers={"Authorization": f"Bearer {ADMIN}"})
        crossed = conn.getresponse().status
        conn.close()
    finally:
        logs = []
        for proc in procs:
            proc.terminate()
            logs.append(proc.communicate(timeout=30)[0])

    # Assert: only the certificate holder is a device; the other was told why it may fail
    assert ids == [1], logs
    assert "a server requiring mutual TLS disconnects clients" in logs[1]
    assert not (tmp_path / "stranger" / "device.json").exists()
    # The server's log ties the certificate to the device, and notices one used for another
    messages = [r.getMessage() for r in caplog.records if r.name == "fedsim.server.tls"]
    assert "device 1 registered with the client certificate of 'device-1'" in messages
    assert crossed == 200
    assert any("device 1's path with the client certificate of 'device-7'" in m for m in messages)


@pytest.mark.parametrize("cert", ["other-ca", "expired"])
def test_an_agent_whose_certificate_is_refused_is_told_what_that_looks_like(
    pki, server, tmp_path, cert
):
    # Prepare
    files = ["--cert", str(pki / f"{cert}.pem"), "--key", str(pki / f"{cert}.key")]

    # Execute: it retries within a second at first; a few tries are enough.
    proc = agent(pki, server, tmp_path / "agent", *files, "--device-id", "1")
    try:
        time.sleep(4)
    finally:
        proc.terminate()
        log = proc.communicate(timeout=30)[0]

    # Assert: the server reset the connection of a certificate another CA signed, and the
    # agent logged "[Errno 104] Connection reset by peer" alone, without the hint that a
    # missing certificate got.
    assert "failed (" in log and "a server requiring mutual TLS disconnects clients" in log, log
    assert not (tmp_path / "agent" / "device.json").exists()


def test_a_real_mode_job_runs_over_mutual_tls(tmp_path):
    # Execute
    proc = subprocess.run(
        [sys.executable, "-m", "fedsim", "+experiment=fl_digits", "mode=real", "fl.rounds=2",
         "mode.tls=mutual", f"hydra.run.dir={tmp_path}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )  # fmt: skip

    # Assert: both rounds aggregated, the agents spoke https with their own certificates
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["rounds_aggregated"] == 2
    certs = tmp_path / "certs"
    for dev in summary["clients"]:
        key = certs / f"device-{dev}.key"
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        log = (tmp_path / "agents" / str(dev) / "agent.log").read_text()
        assert "registered as device" in log and "with https://" in log


@pytest.mark.parametrize(
    ("overrides", "complaint"),
    [
        (["mode=real", "mode.tls=on"], "mode.tls: 'on' is not one of off, mutual"),
        (["mode=sim", "mode.tls=mutual"], "not mode=sim"),
        (["mode=real", "mode.tls=mutual", "mode.server_url=https://h:1"], "mode.server_url"),
    ],
)
def test_mode_tls_is_checked_with_the_config(overrides, complaint):
    # Execute / Assert
    with pytest.raises(ConfigError, match=complaint):
        build_spec(compose(["+experiment=fl_digits", *overrides]), conf_dir())
