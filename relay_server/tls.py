"""TLS for the relay: an operator's certificate, or a self-signed wildcard for testing."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

__all__ = ["make_self_signed", "server_context"]


def make_self_signed(domain: str, directory: Path) -> tuple[Path, Path]:
    """Write a certificate for ``domain`` and ``*.domain`` (plus loopback) and its key.

    Clients trust it with ``--ca-file <cert>``: the certificate is its own CA.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"*.{domain}")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=90))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName(domain),
                    x509.DNSName(f"*.{domain}"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    cert_path = directory / "relay-cert.pem"
    key_path = directory / "relay-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.touch(mode=0o600)
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A server context for the relay's certificate chain and key."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


def self_signed_context(domain: str, directory: Path | None = None) -> tuple[ssl.SSLContext, Path]:
    """A server context with a fresh self-signed wildcard; returns it and the cert's path."""
    where = directory or Path(tempfile.mkdtemp(prefix="sharetunnel-tls-"))
    cert, key = make_self_signed(domain, where)
    return server_context(cert, key), cert
