"""``tunnel-relay --self-signed``: one certificate, kept beside the lease key and reused,
naming what visitors and clients use; no key material left anywhere else."""

from __future__ import annotations

import re
import socket
import ssl
from pathlib import Path

import pytest
from cryptography import x509

from tests.processes import Origin, RelayProcess, run_relay, run_tunnel

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]


def _names(cert: Path) -> set[str]:
    loaded = x509.load_pem_x509_certificate(cert.read_bytes())
    names = loaded.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    dns = set(names.get_values_for_type(x509.DNSName))
    return dns | {str(ip) for ip in names.get_values_for_type(x509.IPAddress)}


def _announced(relay: RelayProcess) -> tuple[Path, str]:
    # Waited for: the test reads the relay's stderr in a thread of its own.
    line = relay.wait_logged("self-signed certificate for ")
    match = re.search(r"self-signed certificate for \S+: (\S+) \((made now|reused);", line)
    assert match, f"no certificate line in {relay.lines}"
    return Path(match.group(1)), match.group(2)


def test_the_certificate_is_kept_beside_the_lease_key_and_reused(
    origin: Origin, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    lease_key = state / "lease.pem"
    temp = tmp_path / "tmp"  # the relay's TMPDIR: nothing may be left there
    temp.mkdir()
    args = ("--self-signed", "--lease-key", str(lease_key))
    with run_relay(*args, env={"TMPDIR": str(temp)}) as relay:
        cert, how = _announced(relay)
        assert how == "made now"
        key = cert.with_name("relay-selfsigned-key.pem")
        assert cert == state / "relay-selfsigned-cert.pem"
        assert key.stat().st_mode & 0o777 == 0o600
        assert {"localhost", "*.localhost", "127.0.0.1"} <= _names(cert)
        clients = f"clients: tunnel PORT --relay https://127.0.0.1:{relay.port} --ca-file {cert}"
        # Printed after the ready file is written: wait for it.
        assert relay.wait_logged(clients) == clients, relay.lines
        with run_tunnel(origin.port, "--ca-file", str(cert), relay=relay) as tunnel:
            assert tunnel.url.startswith("https://")
        first = cert.read_bytes(), key.read_bytes()
    with run_relay(*args, env={"TMPDIR": str(temp)}) as relay:
        assert _announced(relay) == (cert, "reused")
        # A client that trusted it once still does.
        with run_tunnel(origin.port, "--ca-file", str(cert), relay=relay) as tunnel:
            assert tunnel.url.startswith("https://")
    assert (cert.read_bytes(), key.read_bytes()) == first
    assert sorted(p.name for p in state.iterdir()) == [
        "lease.pem",
        "relay-selfsigned-cert.pem",
        "relay-selfsigned-key.pem",
    ]
    assert list(temp.iterdir()) == []


def test_a_domain_gets_its_names_and_another_domain_a_new_certificate(tmp_path: Path) -> None:
    lease_key = tmp_path / "lease.pem"
    args = ("--self-signed", "--lease-key", str(lease_key))
    with run_relay(*args, "--domain", "share.test") as relay:
        cert, how = _announced(relay)
        assert how == "made now"
        assert {"share.test", "*.share.test"} <= _names(cert)
        assert "localhost" not in _names(cert)
    # Another domain: the kept certificate does not name it, so a new one replaces it.
    with run_relay(*args) as relay:
        assert _announced(relay) == (cert, "made now")
        assert {"localhost", "*.localhost", "127.0.0.1"} <= _names(cert)


def _get_by_name(port: int, host: str, ca: Path) -> tuple[int, bytes, list[str]]:
    """GET / over TLS as a browser would: SNI and name check for the link's own name."""
    name = host.rsplit(":", 1)[0]
    context = ssl.create_default_context(cafile=str(ca))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=name) as tls,
    ):
        peer = tls.getpeercert()
        tls.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        answer = b""
        while chunk := tls.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    names = [value for kind, value in peer["subjectAltName"] if kind == "DNS"]
    return int(head.split()[1]), body, names


def test_links_under_localhost_are_reached_by_their_own_names(
    origin: Origin, tmp_path: Path
) -> None:
    # TLS clients refuse *.localhost (a wildcard right above a top-level name): each
    # link's name gets a certificate of its own, from the CA that clients trust.
    temp = tmp_path / "tmp"
    temp.mkdir()
    args = ("--self-signed", "--lease-key", str(tmp_path / "lease.pem"))
    with run_relay(*args, env={"TMPDIR": str(temp)}) as relay:
        cert, _ = _announced(relay)
        with run_tunnel(origin.port, "--ca-file", str(cert), relay=relay) as tunnel:
            for _ in range(2):  # issued once, then kept
                status, body, names = _get_by_name(relay.port, tunnel.host, cert)
                assert (status, body) == (200, b"hello from the origin\n")
                assert names == [tunnel.host.rsplit(":", 1)[0]]
        status, _, _ = _get_by_name(relay.port, f"nolink.localhost:{relay.port}", cert)
        assert status == 404  # verified TLS, then the relay's own page
        with pytest.raises(ssl.SSLCertVerificationError):
            _get_by_name(relay.port, f"a.b.localhost:{relay.port}", cert)  # not a link name
    assert list(temp.iterdir()) == []
