"""Clear errors: each failure has its status and a page, HTML for browsers, text otherwise.

404 unknown link, 502 nothing listening locally (naming the port), 502 for a local
server that does not speak HTTP, 503 tunnel gone, 504 local server too slow to start
answering (but a slow stream is never cut), and 410 once a link expired, with the
client saying so and exiting. Pages say what happened in plain words; the details (an
exception's text, what the local server sent) go to the owner's request log only.
"""

from __future__ import annotations

import http.server
import json
import signal
import socket
import socketserver
import threading
import time
from collections.abc import Iterator

import pytest

from tests.processes import (
    Origin,
    RelayProcess,
    Reply,
    fetch,
    run_relay,
    run_tunnel,
    start_tunnel,
)

pytestmark = pytest.mark.integration

HTML = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
PLAIN = {"Accept": "*/*"}


@pytest.fixture(scope="module")
def relay() -> Iterator[RelayProcess]:
    with run_relay() as server:
        yield server


def assert_page(reply: Reply, status: int, *needles: str, html: bool) -> str:
    """The reply is the relay's error page for ``status`` in the wanted form; its text."""
    assert reply.status == status, (reply.status, reply.body[:500])
    text = reply.body.decode()
    content_type = reply.header("Content-Type") or ""
    if html:
        assert content_type.startswith("text/html"), content_type
        assert text.lstrip().lower().startswith("<!doctype html>"), text[:200]
        assert f"<title>{status} " in text
    else:
        assert content_type.startswith("text/plain"), content_type
        assert text.startswith(f"{status} "), text[:200]
        assert "<html" not in text.lower() and "<p>" not in text, text
    for needle in needles:
        assert needle in text, f"{needle!r} not in the {status} page: {text}"
    return text


def both_forms(
    relay_port: int, host: str, path: str, status: int, *needles: str
) -> tuple[str, str]:
    """Fetch a path as a browser and as a script; check both pages."""
    html = assert_page(fetch(relay_port, host, path, headers=HTML), status, *needles, html=True)
    plain = assert_page(fetch(relay_port, host, path, headers=PLAIN), status, *needles, html=False)
    return html, plain


def free_port() -> int:
    """A port nothing listens on (the kernel just handed it out and it was closed again)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_unknown_link_is_404(relay: RelayProcess) -> None:
    host = f"nosuchlinkhere0000.localhost:{relay.port}"
    both_forms(relay.port, host, "/", 404, "No such link")
    both_forms(relay.port, host, "/some/path?q=1", 404, "No such link")


class _LateApp(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"the app started late\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_nothing_listening_is_502_naming_the_port_until_the_app_starts(
    relay: RelayProcess,
) -> None:
    port = free_port()
    with run_tunnel(port, relay=relay) as tunnel:
        local = tunnel.wait_event("local")
        assert local["listening"] is False and local["target"] == f"127.0.0.1:{port}"
        pages = both_forms(relay.port, tunnel.host, "/", 502, f"port {port}")
        for page in pages:
            assert "Connect call failed" not in page and "rrno" not in page, page
            assert "127.0.0.1" not in page, page
        # The owner's request log has what the visitor is not shown.
        record = tunnel.wait_event("request", path="/")
        assert record["status"] == 502 and str(port) in record["error"]
        assert "Connect call failed" in record["error"], record
        # The app starts on that port: the same link now serves it.
        server = http.server.ThreadingHTTPServer(("127.0.0.1", port), _LateApp)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            reply = fetch(relay.port, tunnel.host, "/")
        finally:
            server.shutdown()
            server.server_close()
            thread.join(5)
        assert reply.status == 200, reply.body[:300]
        assert reply.body == b"the app started late\n"


BANNER = b"SSH-2.0-OpenSSH_9.2"


class _SshLike(socketserver.BaseRequestHandler):
    """Not HTTP: greets every connection with an SSH banner, then waits for its close."""

    def handle(self) -> None:
        self.request.sendall(BANNER + b"\r\n")
        self.request.settimeout(10)
        try:
            while self.request.recv(65536):
                pass
        except OSError:
            pass


@pytest.fixture
def ssh_port() -> Iterator[int]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _SshLike)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_a_local_server_that_is_not_http_is_502_without_what_it_said(
    relay: RelayProcess, ssh_port: int
) -> None:
    with run_tunnel(ssh_port, relay=relay) as tunnel:
        pages = both_forms(relay.port, tunnel.host, "/", 502, "not valid HTTP")
        for page in pages:
            assert "SSH-2.0" not in page and "OpenSSH" not in page, page
            assert "Bad status line" not in page, page
        records = [tunnel.wait_event("request", path="/") for _ in pages]
        for record in records:
            assert record["status"] == 502
            assert BANNER.decode() in record["error"] and "Bad status line" in record["error"]


def test_tunnel_gone_is_503(relay: RelayProcess, origin: Origin) -> None:
    tunnel = start_tunnel(origin.port, relay=relay)
    try:
        assert fetch(relay.port, tunnel.host, "/").status == 200
    finally:
        tunnel.stop(signal.SIGKILL)  # no goodbye: the relay only sees the socket drop
    relay.wait_connection_ended(tunnel.host)
    both_forms(relay.port, tunnel.host, "/", 503, "offline")
    reply = fetch(relay.port, tunnel.host, "/", headers=PLAIN)
    assert reply.header("Retry-After") is not None


def test_local_server_too_slow_is_504_after_the_response_timeout(origin: Origin) -> None:
    with (
        run_relay("--response-timeout", "1s") as relay,
        run_tunnel(origin.port, relay=relay) as tunnel,
    ):
        for accept, html in ((HTML, True), (PLAIN, False)):
            started = time.monotonic()
            reply = fetch(relay.port, tunnel.host, "/slow?delay=30", headers=accept)
            took = time.monotonic() - started
            assert_page(reply, 504, "1 s", html=html)
            assert 0.9 <= took < 10, f"504 after {took:.2f} s"


@pytest.mark.timeout(60)
def test_a_slow_upload_does_not_count_against_the_apps_time_to_answer(origin: Origin) -> None:
    # /upload reads the whole body before it answers, as most apps do: its time to answer
    # starts when the body is all there, however long the visitor took to send it.
    def slowly() -> Iterator[bytes]:
        for _ in range(6):
            yield b"x" * 1000
            time.sleep(0.6)

    with (
        run_relay("--response-timeout", "2s") as relay,
        run_tunnel(origin.port, relay=relay) as tunnel,
    ):
        started = time.monotonic()
        reply = fetch(
            relay.port,
            tunnel.host,
            "/upload",
            method="POST",
            body=slowly(),  # http.client sends each piece as it comes
            headers={"Content-Length": "6000"},
        )
        took = time.monotonic() - started
    assert took > 3, "the upload was meant to outlast the response timeout"
    assert reply.status == 200, reply.body[:300]
    assert json.loads(reply.body)["length"] == 6000


def test_a_stream_that_started_in_time_is_never_cut(origin: Origin) -> None:
    with (
        run_relay("--response-timeout", "1s") as relay,
        run_tunnel(origin.port, relay=relay) as tunnel,
    ):
        started = time.monotonic()
        reply = fetch(relay.port, tunnel.host, "/sse?n=6&interval=0.5")
        took = time.monotonic() - started
    assert reply.status == 200
    assert took > 2.0, "the stream was meant to outlast the response timeout"
    events = [block for block in reply.body.decode().split("\n\n") if block.strip()]
    assert [e.splitlines()[0] for e in events] == [f"id: {i}" for i in range(6)]


@pytest.mark.timeout(60)
def test_link_answers_before_its_ttl_and_is_410_after(origin: Origin) -> None:
    with run_relay("--ttl", "3s") as relay:
        tunnel = start_tunnel(origin.port, relay=relay)
        try:
            reply = fetch(relay.port, tunnel.host, "/")
            assert reply.status == 200 and reply.body == b"hello from the origin\n"
            expired = tunnel.wait_event("expired", timeout=20)
            assert expired["url"] == tunnel.url
            code = tunnel.proc.wait(15)
        finally:
            tunnel.stop()
        assert code == 0, tunnel.stderr_lines
        assert "Traceback" not in "\n".join(tunnel.stderr_lines)
        both_forms(relay.port, tunnel.host, "/", 410, "expired")
