"""``fedsim certs``: the CA, server and device certificates it writes, and what it refuses."""

from __future__ import annotations

import ipaddress
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedsim.certs import create, main

ROOT = Path(__file__).resolve().parents[1]


def cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def common_name(c: x509.Certificate) -> str:
    return str(c.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def usages(c: x509.Certificate) -> list[x509.ObjectIdentifier]:
    return list(c.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def test_the_command_writes_a_ca_a_server_and_devices_signed_by_it(tmp_path):
    # Prepare
    out = tmp_path / "pki"
    argv = ["certs", "--out", str(out), "--server-name", "fl.example.org"]
    argv += ["--server-name", "10.0.0.5", "--devices", "2", "--days", "7"]

    # Execute: through `python -m fedsim`, as a user types it
    proc = subprocess.run(
        [sys.executable, "-m", "fedsim", *argv], cwd=ROOT, capture_output=True, text=True
    )

    # Assert
    assert proc.returncode == 0, proc.stderr
    names = {"ca", "server", "device-0", "device-1"}
    assert {p.name for p in out.iterdir()} == {f"{n}.{x}" for n in names for x in ("pem", "key")}
    for name in names:
        assert stat.S_IMODE((out / f"{name}.key").stat().st_mode) == 0o600
    ca = cert(out / "ca.pem")
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    server = cert(out / "server.pem")
    server.verify_directly_issued_by(ca)
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["fl.example.org"]
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.5")]
    assert usages(server) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert (server.not_valid_after_utc - server.not_valid_before_utc).days == 7
    for i in (0, 1):
        device = cert(out / f"device-{i}.pem")
        device.verify_directly_issued_by(ca)
        assert common_name(device) == f"device-{i}"
        assert usages(device) == [ExtendedKeyUsageOID.CLIENT_AUTH]


def test_the_server_is_named_localhost_and_127_0_0_1_by_default(tmp_path):
    # Execute
    create(tmp_path, devices=["edge-a"])

    # Assert
    sans = cert(tmp_path / "server.pem").extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    assert sans.value.get_values_for_type(x509.DNSName) == ["localhost"]
    assert sans.value.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert common_name(cert(tmp_path / "edge-a.pem")) == "edge-a"


def test_nothing_is_overwritten_without_force(tmp_path, capsys):
    # Prepare
    assert main(["--out", str(tmp_path), "--device", "edge-a"]) == 0
    before = (tmp_path / "ca.key").read_bytes()
    capsys.readouterr()

    # Execute
    refused = main(["--out", str(tmp_path), "--device", "edge-a"])
    err = capsys.readouterr().err
    forced = main(["--out", str(tmp_path), "--device", "edge-a", "--force"])

    # Assert: refused whole, naming the files; replaced with --force, keys still 0600
    assert refused == 2
    assert err.startswith("fedsim certs: error: exists already") and "ca.key" in err
    assert "edge-a.pem" in err and len(err.strip().splitlines()) == 1
    assert forced == 0
    assert (tmp_path / "ca.key").read_bytes() != before
    assert stat.S_IMODE((tmp_path / "ca.key").stat().st_mode) == 0o600


def test_add_signs_more_devices_with_the_ca_made_before(tmp_path):
    # Prepare
    assert main(["--out", str(tmp_path), "--devices", "1"]) == 0
    ca_before = (tmp_path / "ca.pem").read_bytes()
    server_before = (tmp_path / "server.pem").read_bytes()

    # Execute
    clash = main(["--out", str(tmp_path), "--add", "--devices", "2", "--device", "prometheus"])
    written_after_clash = (tmp_path / "prometheus.pem").exists()
    added = main(
        ["--out", str(tmp_path), "--add", "--device", "device-1", "--device", "prometheus"]
    )

    # Assert: device-0 existed, so nothing was written; without it the others are signed
    assert clash == 2 and not written_after_clash
    assert added == 0
    ca = cert(tmp_path / "ca.pem")
    for name in ("device-1", "prometheus"):
        cert(tmp_path / f"{name}.pem").verify_directly_issued_by(ca)
        assert stat.S_IMODE((tmp_path / f"{name}.key").stat().st_mode) == 0o600
    assert (tmp_path / "ca.pem").read_bytes() == ca_before
    assert (tmp_path / "server.pem").read_bytes() == server_before


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["--server-name", "not a host"], "server name 'not a host'"),
        (["--device", "../escape"], "device name '../escape'"),
        (["--device", "server"], "would overwrite"),
        (["--device", "a", "--device", "a"], "twice"),
        (["--days", "0"], "days must be >= 1"),
        (["--devices", "-1"], "--devices must be >= 0"),
        (["--devices", "2", "--device", "device-1"], "twice"),
        (["--add", "--device", "late"], "holds no CA"),
        (["--add", "--device", "late", "--server-name", "h"], "device certificates only"),
    ],
)
def test_bad_arguments_exit_2_with_one_line_and_write_nothing(tmp_path, capsys, args, complaint):
    # Prepare
    out = tmp_path / "pki"

    # Execute
    try:
        status = main(["--out", str(out), *args])
    except SystemExit as e:  # argparse's own checks
        status = e.code

    # Assert
    assert status == 2
    err = capsys.readouterr().err
    assert err.startswith("fedsim certs: error: ") and complaint in err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()
