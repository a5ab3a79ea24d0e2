"""TLS for the relay: an operator's certificate, or a self-signed wildcard for testing."""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import logging
import os
import ssl
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

__all__ = [
    "SELF_SIGNED_CERT",
    "SELF_SIGNED_KEY",
    "load_or_create_self_signed",
    "make_self_signed",
    "self_signed_names",
    "server_context",
]

logger = logging.getLogger(__name__)

SELF_SIGNED_CERT = "relay-selfsigned-cert.pem"
SELF_SIGNED_KEY = "relay-selfsigned-key.pem"

VALIDITY = datetime.timedelta(days=365)
RENEW_BEFORE = datetime.timedelta(days=7)
"""A kept certificate this close to its end is replaced at the next start."""


def self_signed_names(domain: str) -> list[x509.GeneralName]:
    """The names visitors and clients use: the domain (``localhost`` by default) and its
    wildcard, plus the loopback addresses (``--relay https://127.0.0.1:8443``)."""
    return [
        x509.DNSName(domain),
        x509.DNSName(f"*.{domain}"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ]


def make_self_signed(
    domain: str,
    directory: Path,
    *,
    cert_name: str = "relay-cert.pem",
    key_name: str = "relay-key.pem",
) -> tuple[Path, Path]:
    """Write a certificate for ``domain`` and ``*.domain`` (plus loopback) and its key.

    Clients trust it with ``--ca-file <cert>``: the certificate is its own CA. The key is
    written mode 0600, each file whole or not at all (a temporary file, then a rename).
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
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.SubjectAlternativeName(self_signed_names(domain)), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    key_path = directory / key_name
    cert_path = directory / cert_name
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write_atomically(key_path, key_pem, 0o600)
    _write_atomically(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return cert_path, key_path


def _write_atomically(path: Path, data: bytes, mode: int) -> None:
    """``path`` holds ``data`` with ``mode``, or is untouched; nothing else is left behind."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as file:
            os.fchmod(file.fileno(), mode)  # whatever the umask
            file.write(data)
        tmp.replace(path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def load_or_create_self_signed(domain: str, directory: Path) -> tuple[Path, Path, bool]:
    """The self-signed certificate and key kept in ``directory``, made if needed.

    A kept pair is reused while it names ``domain`` as :func:`self_signed_names` does,
    its key matches and it has a week left; otherwise a new pair replaces it. Returns
    the two paths and whether the pair was made now.
    """
    cert_path = directory / SELF_SIGNED_CERT
    key_path = directory / SELF_SIGNED_KEY
    if _usable(cert_path, key_path, domain):
        return cert_path, key_path, False
    cert_path, key_path = make_self_signed(
        domain, directory, cert_name=SELF_SIGNED_CERT, key_name=SELF_SIGNED_KEY
    )
    return cert_path, key_path, True


def _usable(cert_path: Path, key_path: Path, domain: str) -> bool:
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, TypeError, x509.ExtensionNotFound):
        return False
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    encoding = serialization.Encoding.DER
    same_key = key.public_key().public_bytes(encoding, public) == cert.public_key().public_bytes(
        encoding, public
    )
    fresh = cert.not_valid_after_utc - datetime.datetime.now(datetime.UTC) > RENEW_BEFORE
    return same_key and fresh and set(self_signed_names(domain)) <= set(names)


def server_context(cert: Path, key: Path, domain: str | None = None) -> ssl.SSLContext:
    """A server context for the relay's certificate chain and key.

    With ``domain`` of one label (``localhost``) and a certificate that is its own CA
    (``--self-signed``): TLS clients refuse a wildcard right above a top-level name
    (``*.localhost``), so each link's name gets a certificate of its own, issued by that
    CA when a client first asks for the name. Whoever trusts the CA trusts them.
    """
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    if domain is not None and "." not in domain.strip("."):
        issuer = _SelfSignedIssuer.load(cert, key, domain)
        if issuer is not None:
            context.sni_callback = issuer.choose
    return context


class _SelfSignedIssuer:
    """Certificates for ``<label>.<domain>`` names, signed by a self-signed CA's key."""

    CACHE = 512
    """Contexts kept for names already asked for (the oldest are dropped beyond this)."""

    def __init__(
        self, ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, key_path: Path, domain: str
    ) -> None:
        self._ca = ca
        self._ca_key = ca_key
        self._key_path = key_path
        self._suffix = "." + domain.strip(".").lower()
        self._contexts: dict[str, ssl.SSLContext] = {}

    @classmethod
    def load(cls, cert_path: Path, key_path: Path, domain: str) -> _SelfSignedIssuer | None:
        """An issuer if the certificate is its own CA (else None: nothing to issue with)."""
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        try:
            is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        except x509.ExtensionNotFound:
            is_ca = False
        if (
            not is_ca
            or cert.issuer != cert.subject
            or not isinstance(key, ec.EllipticCurvePrivateKey)
        ):
            return None
        return cls(cert, key, key_path, domain)

    def choose(self, sock: ssl.SSLObject, server_name: str | None, _: ssl.SSLContext) -> None:
        """The SNI callback: a link's name gets its own certificate; others the CA's."""
        if server_name is None:
            return
        name = server_name.lower()
        label = name.removesuffix(self._suffix)
        if label == name or not label or "." in label:
            return
        context = self._contexts.get(name)
        if context is None:
            try:
                context = self._context_for(name)
            except (OSError, ValueError, ssl.SSLError) as exc:
                # The CA's own certificate still answers (a client may refuse it).
                logger.warning("cannot issue a certificate for %s: %s", name, exc)
                return
            self._contexts[name] = context
            if len(self._contexts) > self.CACHE:
                del self._contexts[next(iter(self._contexts))]
        sock.context = context

    def _context_for(self, name: str) -> ssl.SSLContext:
        ca = self._ca
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca.subject)
            .public_key(self._ca_key.public_key())  # the CA's key: one key file serves all
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(ca.not_valid_after_utc)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(self._ca_key, hashes.SHA256())
        )
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        # ssl loads certificates from files only: one that lives for this call.
        with tempfile.NamedTemporaryFile(prefix="sharetunnel-leaf-", suffix=".pem") as file:
            file.write(cert.public_bytes(serialization.Encoding.PEM))
            file.flush()
            context.load_cert_chain(file.name, self._key_path)
        return context
