"""What the client passes through a real relay and a real ``tunnel``, as a visitor sees it.

The local servers here are a raw TCP origin (:mod:`tests.raworigin`) where aiohttp's
origin would normalise the bytes that matter, the aiohttp origin for WebSockets, and
two real apps that check ``Host``: a Jupyter server and a Django app. The client's
half of each rule is also pinned without a relay in ``tests/client/test_forwarder.py``;
where the relay's aiohttp edge still changes bytes on their way out to the visitor,
the test says so and checks what the client did.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator

import aiohttp
import pytest

from tests.processes import (
    Origin,
    RelayProcess,
    TunnelProcess,
    fetch,
    run_relay,
    run_tunnel,
    scratch_dir,
    stop_process,
)
from tests.rawhttp import RawConnection, RawResponse
from tests.raworigin import RawOrigin, raw_origin

pytestmark = pytest.mark.integration

KEY = "dGhlIHNhbXBsZSBub25jZQ=="
UPGRADE = (
    "Upgrade: websocket\r\nConnection: Upgrade\r\n"
    f"Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n"
)


@pytest.fixture(scope="module")
def relay() -> Iterator[RelayProcess]:
    with run_relay() as server:
        yield server


@pytest.fixture(scope="module")
def raw() -> Iterator[RawOrigin]:
    with raw_origin() as origin:
        yield origin


@pytest.fixture(scope="module")
def tunnel(relay: RelayProcess, raw: RawOrigin) -> Iterator[TunnelProcess]:
    with run_tunnel(raw.port, relay=relay) as process:
        yield process


def visit(relay: RelayProcess, request: bytes) -> RawResponse:
    with RawConnection(relay.port) as conn:
        assert conn.send(request)
        response = conn.read_response()
    assert response is not None
    return response


def no_traceback(tunnel: TunnelProcess) -> None:
    assert not any("Traceback" in line for line in tunnel.stderr_lines), tunnel.stderr_lines


def test_a_redirect_answering_an_upgrade_is_not_followed(
    relay: RelayProcess, raw: RawOrigin, tunnel: TunnelProcess
) -> None:
    with raw_origin() as elsewhere:  # another local service: it must see nothing
        raw.answer(
            "/ws-moved",
            f"HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:{elsewhere.port}/ws\r\n"
            "Content-Length: 6\r\n\r\nmoved\n".encode(),
        )
        request = f"GET /ws-moved HTTP/1.1\r\nHost: {tunnel.host}\r\n{UPGRADE}\r\n"
        response = visit(relay, request.encode())
        assert response.status == 302, response
        assert response.header("Location") == f"http://127.0.0.1:{elsewhere.port}/ws"
        assert response.body == b"moved\n"
        time.sleep(0.2)
        assert elsewhere.connections == 0 and elsewhere.requests == []
    no_traceback(tunnel)


def test_a_refused_upgrade_reaches_the_visitor_whole(
    relay: RelayProcess, raw: RawOrigin, tunnel: TunnelProcess
) -> None:
    raw.answer(
        "/ws-auth",
        b'HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm="app"\r\n'
        b"Content-Type: text/plain\r\nContent-Length: 13\r\n\r\nlog in first\n",
    )
    request = f"GET /ws-auth HTTP/1.1\r\nHost: {tunnel.host}\r\n{UPGRADE}\r\n"
    response = visit(relay, request.encode())
    assert response.status == 401, response
    assert response.header("WWW-Authenticate") == 'Basic realm="app"'
    assert response.body == b"log in first\n"
    # The app got the visitor's own handshake, key included.
    sent = raw.last("/ws-auth")
    assert sent.values(b"Sec-WebSocket-Key") == [KEY.encode()]
    assert sent.values(b"Upgrade") == [b"websocket"]


def test_no_content_type_is_added(
    relay: RelayProcess, raw: RawOrigin, tunnel: TunnelProcess
) -> None:
    """The client adds none (tests/client/test_forwarder.py::test_no_content_type_is_added)."""
    raw.answer("/bare", b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nbare")
    response = visit(relay, f"GET /bare HTTP/1.1\r\nHost: {tunnel.host}\r\n\r\n".encode())
    assert response.status == 200 and response.body == b"bare"
    assert response.header("Content-Type") is None, response.headers


def test_repeated_headers_and_cookies_keep_their_order(
    relay: RelayProcess, raw: RawOrigin, tunnel: TunnelProcess
) -> None:
    raw.answer(
        "/rep",
        b"HTTP/1.1 200 OK\r\nSet-Cookie: a=1; Path=/\r\nX-Rep: one\r\n"
        b"Set-Cookie: b=2; HttpOnly\r\nX-Rep: two\r\nSet-Cookie: c=3\r\nX-Rep: three\r\n"
        b"Content-Length: 0\r\n\r\n",
    )
    response = visit(relay, f"GET /rep HTTP/1.1\r\nHost: {tunnel.host}\r\n\r\n".encode())
    assert response.header_all("Set-Cookie") == ["a=1; Path=/", "b=2; HttpOnly", "c=3"]
    assert response.header_all("X-Rep") == ["one", "two", "three"]


ODD = b"HTTP/1.1 200 OK\r\nX-Ctl: a\x01b\x7fc\r\nX-Latin: caf\xe9\r\nContent-Length: 2\r\n\r\nok"


def test_the_client_passes_odd_bytes_in_response_header_values(
    relay: RelayProcess, raw: RawOrigin, tunnel: TunnelProcess
) -> None:
    """Control bytes and obs-text leave the client byte for byte, as latin-1 text in the
    REPLY (the exact head: tests/client/test_forwarder.py::
    test_response_headers_pass_byte_for_byte): its log says the app answered 200, with
    no error and no traceback, whatever the relay then made of it."""
    raw.answer("/odd-client", ODD)
    visit(relay, f"GET /odd-client HTTP/1.1\r\nHost: {tunnel.host}\r\n\r\n".encode())
    record = tunnel.wait_event("request", path="/odd-client")
    assert record["status"] == 200 and record["error"] is None, record
    no_traceback(tunnel)


def test_odd_bytes_in_response_header_values_reach_the_visitor(
    relay: RelayProcess, raw: RawOrigin, tunnel: TunnelProcess
) -> None:
    raw.answer("/odd", ODD)
    response = visit(relay, f"GET /odd HTTP/1.1\r\nHost: {tunnel.host}\r\n\r\n".encode())
    assert response.status == 200 and response.body == b"ok", response
    assert response.header("X-Ctl") == "a\x01b\x7fc"
    assert response.header("X-Latin") == "caf\xe9"  # rawhttp decodes latin-1


def test_101_to_a_plain_get_is_a_502(
    relay: RelayProcess, raw: RawOrigin, tunnel: TunnelProcess
) -> None:
    raw.answer(
        "/switch",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    )
    response = visit(relay, f"GET /switch HTTP/1.1\r\nHost: {tunnel.host}\r\n\r\n".encode())
    assert response.status == 502, response
    record = tunnel.wait_event("request", path="/switch")
    assert record["status"] == 502 and "101" in record["error"], record
    assert fetch(relay.port, tunnel.host, "/bare").status == 200  # the link carries on
    no_traceback(tunnel)


def test_options_asterisk_and_the_target_pass_as_sent(
    relay: RelayProcess, raw: RawOrigin, tunnel: TunnelProcess
) -> None:
    raw.answer("*", b"HTTP/1.1 204 No Content\r\nAllow: GET, POST\r\n\r\n")
    raw.answer("/x", b"HTTP/1.1 204 No Content\r\n\r\n")
    response = visit(relay, f"OPTIONS * HTTP/1.1\r\nHost: {tunnel.host}\r\n\r\n".encode())
    assert response.status == 204 and response.header("Allow") == "GET, POST"
    assert raw.last("*").request_line == b"OPTIONS * HTTP/1.1"
    visit(relay, f"GET /x? HTTP/1.1\r\nHost: {tunnel.host}\r\n\r\n".encode())
    assert raw.last("/x").request_line == b"GET /x? HTTP/1.1"


# -- WebSockets: a visitor who vanishes ------------------------------------------------------


async def _drop_mid_websocket(relay: RelayProcess, host: str, key: str) -> None:
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(
            f"http://127.0.0.1:{relay.port}/ws?id={key}", headers={"Host": host}
        )
        await ws.send_str("still here")
        assert (await ws.receive()).data == "still here"
        # Gone without a close frame: the socket just drops.
        transport = ws._response.connection.transport  # type: ignore[union-attr]
        assert transport is not None
        transport.abort()
        ws._response.close()  # nothing left to read: no unclosed-response warning at GC


def test_a_visitor_dropping_mid_websocket_reaches_the_app_as_1001(
    relay: RelayProcess, origin: Origin
) -> None:
    with run_tunnel(origin.port, relay=relay) as tunnel:
        key = secrets.token_hex(6)
        asyncio.run(_drop_mid_websocket(relay, tunnel.host, key))
        closed = fetch(origin.port, "origin", f"/ws/closed?id={key}&timeout=10")
        assert json.loads(closed.body) == {"code": 1001, "ended": True}
        no_traceback(tunnel)


# -- apps that check Host ------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_http(port: int, path: str, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            if fetch(port, f"localhost:{port}", path, timeout=5).status < 500:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{what} did not answer within 60 s")


@pytest.fixture(scope="module")
def jupyter() -> Iterator[tuple[int, str]]:
    pytest.importorskip("jupyter_server")
    port, token = _free_port(), secrets.token_hex(16)
    home = scratch_dir("jupyter-")
    env = {
        **os.environ,
        "JUPYTER_CONFIG_DIR": str(home / "config"),
        "JUPYTER_DATA_DIR": str(home / "data"),
        "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
        "IPYTHONDIR": str(home / "ipython"),
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jupyter_server",
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={port}",
            "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={token}",
            "--ServerApp.open_browser=False",
            "--ServerApp.allow_root=True",  # CI runs as root
            f"--ServerApp.root_dir={home}",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_http(port, "/api", proc, "jupyter server")
        yield port, token
    finally:
        stop_process(proc)


def test_jupyter_refuses_the_links_host_unless_rewritten(
    relay: RelayProcess, jupyter: tuple[int, str]
) -> None:
    port, token = jupyter
    auth = {"Authorization": f"token {token}"}
    with run_tunnel(port, relay=relay) as plain:
        refused = fetch(relay.port, plain.host, "/api/status", headers=auth)
    assert refused.status == 403, refused  # "Blocking request with non-local 'Host'"
    with run_tunnel(port, "--host-header", "rewrite", relay=relay) as rewritten:
        status = fetch(relay.port, rewritten.host, "/api/status", headers=auth)
        assert status.status == 200, status
        assert "started" in json.loads(status.body)
        no_traceback(rewritten)


DJANGO_APP = textwrap.dedent(
    """
    import sys
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    from django.conf import settings
    from django.http import JsonResponse
    from django.urls import path

    settings.configure(
        DEBUG=False,
        ALLOWED_HOSTS=["localhost"],
        ROOT_URLCONF=__name__,
        SECRET_KEY="test-only",
        MIDDLEWARE=[],
        LOGGING_CONFIG=None,
    )


    def whoami(request):
        return JsonResponse(
            {"host": request.get_host(), "forwarded": request.META.get("HTTP_X_FORWARDED_HOST")}
        )


    urlpatterns = [path("whoami", whoami)]


    class Quiet(WSGIRequestHandler):
        def log_message(self, *args):
            pass


    if __name__ == "__main__":
        import django
        from django.core.wsgi import get_wsgi_application

        django.setup()
        port = int(sys.argv[1])
        server = make_server("127.0.0.1", port, get_wsgi_application(), handler_class=Quiet)
        server.serve_forever()
    """
)


@pytest.fixture(scope="module")
def django_app() -> Iterator[int]:
    pytest.importorskip("django")
    app = scratch_dir("django-") / "app.py"
    app.write_text(DJANGO_APP)
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, str(app), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_http(port, "/whoami", proc, "django app")
        yield port
    finally:
        stop_process(proc)


def test_django_allowed_hosts_with_and_without_rewrite(
    relay: RelayProcess, django_app: int
) -> None:
    with run_tunnel(django_app, relay=relay) as plain:
        refused = fetch(relay.port, plain.host, "/whoami")
    assert refused.status == 400, refused  # DisallowedHost
    with run_tunnel(django_app, "--host-header", "rewrite", relay=relay) as rewritten:
        reply = fetch(relay.port, rewritten.host, "/whoami")
        assert reply.status == 200, reply
        assert json.loads(reply.body) == {
            "host": f"localhost:{django_app}",
            "forwarded": rewritten.host,  # the public name, for the app that wants it
        }
        no_traceback(rewritten)
