"""``fedsim certs``: a certificate authority, a server certificate and device certificates.

Mutual TLS between a fedsim server and its agents (docs/protocol.md, "Mutual TLS") needs a CA
that both sides trust, a server certificate naming the addresses agents dial, and one client
certificate per device. :func:`create` writes them into one directory:

``ca.pem`` / ``ca.key``
    the CA, self-signed; ``ca.pem`` is what the server's ``--client-ca`` and the agents'
    ``--ca`` take, ``ca.key`` signs further certificates and belongs offline.
``server.pem`` / ``server.key``
    the server's ``--cert`` and ``--key``: subject alternative names are the DNS names and IP
    addresses given (default ``localhost`` and ``127.0.0.1``), extended key usage serverAuth.
``NAME.pem`` / ``NAME.key``
    a device's ``--cert`` and ``--key``: common name ``NAME``, extended key usage clientAuth.

Keys are ECDSA P-256, written ``0600``, as unencrypted PKCS#8 PEM (the server and agents read
them unattended). Nothing is overwritten without ``force``; ``add`` signs certificates for
more devices with the CA made before.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedsim.cli_args import OneLineParser
from fedsim.files import refuse_existing

PROG = "fedsim certs"
CA_CERT, CA_KEY = "ca.pem", "ca.key"
SERVER_CERT, SERVER_KEY = "server.pem", "server.key"
DEFAULT_SERVER_NAMES = ("localhost", "127.0.0.1")
DEFAULT_DAYS = 365
# A device name becomes a file name and a certificate's common name: keep it to both's safe set.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# Clocks of devices and server differ a little; a certificate made now must already hold there.
_CLOCK_SKEW = dt.timedelta(minutes=5)


@dataclass(frozen=True)
class Issued:
    """A private key and the certificate for it."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate


def device_name(device_id: int) -> str:
    """The certificate name ``--devices N`` and the local cluster give device ``device_id``."""
    return f"device-{device_id}"


def new_ca(*, days: int = DEFAULT_DAYS, valid_from: dt.datetime | None = None) -> Issued:
    """A self-signed CA valid for ``days`` from ``valid_from`` (default: now, less clock skew)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedsim CA")])
    start = _start(valid_from)
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Issued(key=key, cert=cert)


def issue(
    ca: Issued,
    common_name: str,
    *,
    server_names: Sequence[str] = (),
    client: bool = False,
    days: int = DEFAULT_DAYS,
    valid_from: dt.datetime | None = None,
) -> Issued:
    """A certificate signed by ``ca``: a server's when ``server_names`` (DNS names or IP
    addresses, its subject alternative names) are given, a client's when ``client``."""
    if bool(server_names) == client:
        raise ValueError("a certificate is either a server's (server_names) or a client's")
    key = ec.generate_private_key(ec.SECP256R1())
    start = _start(valid_from)
    public = key.public_key()
    usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca.cert.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
    )
    if server_names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([_general_name(n) for n in server_names]), critical=False
        )
    return Issued(key=key, cert=builder.sign(ca.key, hashes.SHA256()))


def write(issued: Issued, cert_file: Path, key_file: Path, *, force: bool = False) -> None:
    """Write ``issued`` as PEM, the key readable by its owner only (``0600``)."""
    key_pem = issued.key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write_file(key_file, key_pem, mode=0o600, force=force)
    _write_file(cert_file, issued.cert.public_bytes(serialization.Encoding.PEM), 0o644, force)


def create(
    out: Path,
    *,
    server_names: Sequence[str] = DEFAULT_SERVER_NAMES,
    devices: Sequence[str] = (),
    days: int = DEFAULT_DAYS,
    force: bool = False,
    add: bool = False,
) -> list[Path]:
    """A CA, a server certificate for ``server_names`` and one client certificate per name in
    ``devices``, written into ``out`` (created if missing); returns the files written.

    ``add`` signs only the devices' certificates, with the CA that ``out`` holds already (a
    device joining a fleet). ``FileExistsError`` names every file that exists already, before
    anything is written, unless ``force``; ``ValueError`` names a bad argument.
    """
    if days < 1:
        raise ValueError(f"days must be >= 1, got {days}")
    if not server_names:
        raise ValueError("the server certificate needs at least one server name")
    for name in server_names:
        _general_name(name)  # a bad one is refused before anything is written
    for name in devices:
        if not _NAME.match(name):
            raise ValueError(
                f"device name {name!r}: expected up to 64 letters, digits, '.', '_' or '-', "
                "starting with a letter or digit"
            )
        if name in ("ca", "server"):
            raise ValueError(f"device name {name!r} would overwrite the {name}'s files")
    if len(set(devices)) != len(devices):
        raise ValueError("a device name is given twice")
    pairs = [] if add else [(CA_CERT, CA_KEY), (SERVER_CERT, SERVER_KEY)]
    pairs += [(f"{name}.pem", f"{name}.key") for name in devices]
    paths = [out / name for pair in pairs for name in pair]
    refuse_existing(paths, force=force)
    if add:
        if not devices:
            raise ValueError("--add: name the devices to add (--devices, --device)")
        ca = _load_ca(out)
    else:
        out.mkdir(parents=True, exist_ok=True)
        ca = new_ca(days=days)
        write(ca, out / CA_CERT, out / CA_KEY, force=force)
        server = issue(ca, server_names[0], server_names=server_names, days=days)
        write(server, out / SERVER_CERT, out / SERVER_KEY, force=force)
    for name in devices:
        device = issue(ca, name, client=True, days=days)
        write(device, out / f"{name}.pem", out / f"{name}.key", force=force)
    return paths


def _load_ca(out: Path) -> Issued:
    """The CA in ``out`` (``ca.pem``, ``ca.key``); ``ValueError`` saying what is missing."""
    cert_file, key_file = out / CA_CERT, out / CA_KEY
    if not cert_file.is_file() or not key_file.is_file():
        raise ValueError(f"--add: {out} holds no CA ({CA_CERT} and {CA_KEY}); make one first")
    try:
        cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
        key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    except ValueError as e:
        raise ValueError(f"--add: cannot read the CA in {out}: {e}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
        raise ValueError(f"--add: {key_file} is not the key of {cert_file}")
    return Issued(key=key, cert=cert)


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog=PROG,
        description=(
            "Create what mutual TLS between a fedsim server and its agents needs: a CA "
            "(ca.pem, ca.key), a server certificate (server.pem, server.key) and one client "
            "certificate per device (NAME.pem, NAME.key), all signed by the CA. Keys are "
            "written readable by their owner only."
        ),
    )
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="where to write them")
    p.add_argument(
        "--server-name",
        action="append",
        metavar="HOST",
        help=(
            "a DNS name or IP address agents reach the server by (repeatable; default: "
            f"{' and '.join(DEFAULT_SERVER_NAMES)})"
        ),
    )
    p.add_argument(
        "--devices",
        type=int,
        metavar="N",
        help=f"certificates for N devices named {device_name(0)} .. device-(N-1)",
    )
    p.add_argument(
        "--device",
        action="append",
        default=[],
        metavar="NAME",
        help="a certificate for the client NAME, its common name (repeatable; beside "
        "--devices: Prometheus's, a browser's)",
    )
    p.add_argument(
        "--days",
        type=int,
        default=DEFAULT_DAYS,
        metavar="D",
        help="days the certificates are valid (default: %(default)s)",
    )
    p.add_argument(
        "--add",
        action="store_true",
        help="sign only the devices' certificates, with the CA --out holds already",
    )
    p.add_argument("--force", action="store_true", help="replace files that exist already")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Write the certificates ``argv`` asks for; 0, or 2 with one line on stderr."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.devices is not None and args.devices < 0:
        parser.error(f"--devices must be >= 0, got {args.devices}")
    if args.add and args.server_name:
        parser.error("--add signs device certificates only; --server-name makes a new server's")
    devices = [device_name(i) for i in range(args.devices or 0)] + args.device
    try:
        written = create(
            args.out,
            server_names=args.server_name or DEFAULT_SERVER_NAMES,
            devices=devices,
            days=args.days,
            force=args.force,
            add=args.add,
        )
    except (ValueError, OSError) as e:  # FileExistsError is an OSError
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    return 0


def _start(valid_from: dt.datetime | None) -> dt.datetime:
    return valid_from or dt.datetime.now(dt.timezone.utc) - _CLOCK_SKEW


def _general_name(text: str) -> x509.GeneralName:
    """An IP address, else a DNS name; ``ValueError`` for neither."""
    try:
        return x509.IPAddress(ipaddress.ip_address(text))
    except ValueError:
        pass
    labels = text.rstrip(".").split(".")
    if not text or not all(
        re.fullmatch(r"(\*|[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)", x) for x in labels
    ):
        raise ValueError(f"server name {text!r}: not a DNS name or an IP address")
    return x509.DNSName(text)


def _write_file(path: Path, data: bytes, mode: int, force: bool) -> None:
    """Write ``data`` to ``path`` created with ``mode`` (a key never exists with wider rights
    for a moment); an existing file is replaced only with ``force``."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
    fd = os.open(path, flags, mode)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), mode)  # an existing file (force) keeps its old mode otherwise
        f.write(data)


if __name__ == "__main__":
    sys.exit(main())
