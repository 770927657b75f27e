"""The coordinator's private CA and its TLS server certificate."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _write_private(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    data = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _san(hostnames: list[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for name in hostnames:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            names.append(x509.DNSName(name))
    return x509.SubjectAlternativeName(names)


def create_pki(directory: Path, hostnames: list[str]) -> None:
    """A 10-year CA (what agents pin) and a server certificate for `hostnames` signed by it."""
    directory.mkdir(mode=0o700, parents=True)
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Careline coordinator CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    _write_private(directory / "ca.key", ca_key)
    (directory / "ca.pem").write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    issue_server_certificate(directory, hostnames)


def issue_server_certificate(directory: Path, hostnames: list[str] | None = None) -> dt.datetime:
    """A new server key and 825-day certificate signed by the existing CA, for `hostnames`
    (default: the current certificate's). Agents pin the CA, so none is re-enrolled.
    Written beside the old pair and renamed over it; returns the new expiry."""
    ca_key = serialization.load_pem_private_key((directory / "ca.key").read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    ca_cert = x509.load_pem_x509_certificate((directory / "ca.pem").read_bytes())
    if not hostnames:
        current = x509.load_pem_x509_certificate((directory / "server.pem").read_bytes())
        san = current.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        hostnames = [str(name.value) for name in san]
    now = dt.datetime.now(dt.UTC)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostnames[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=825))
        .add_extension(_san(hostnames), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    for name in ("server.key.new", "server.pem.new"):
        (directory / name).unlink(missing_ok=True)
    _write_private(directory / "server.key.new", server_key)
    (directory / "server.pem.new").write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    os.replace(directory / "server.key.new", directory / "server.key")
    os.replace(directory / "server.pem.new", directory / "server.pem")
    return server_cert.not_valid_after_utc


def server_context(directory: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(directory / "server.pem", directory / "server.key")
    # No TLS 1.3 session tickets: agents and the CLI never resume sessions, and with uvloop
    # a ticket sent after the handshake left about 1 in 100 requests unread until the
    # server's 10 s open timeout (see tests/e2e/test_fleet.py::test_many_short_connections).
    context.num_tickets = 0
    return context
