"""Fidelity at the relay's edge: what a visitor sends reaches the app as it was sent, or
is refused before it reaches it; what the app answers reaches the visitor unchanged.

Through a real relay and a real ``tunnel`` process. The app here is a raw TCP server in
this test process that answers every request with the exact bytes it received (base64
in JSON), since an HTTP framework would itself normalise some of what is checked (merge
or re-case headers, refuse a method it does not know). It counts what reached it, so a
request the relay must refuse can be shown to have stopped at the relay.

(The client's half, what its forwarder does on the way to the app, is tested in
test_fidelity_client.py.)
"""

from __future__ import annotations

import base64
import json
import socketserver
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from tests.processes import RelayProcess, TunnelProcess, run_relay, run_tunnel
from tests.rawhttp import RawConnection, RawResponse

pytestmark = pytest.mark.integration


@dataclass
class RawOrigin:
    """A one-request-per-connection HTTP server that echoes the raw request."""

    port: int = 0
    requests: list[bytes] = field(default_factory=list)
    """Every request (head and body) as received, in order."""


class _EchoHandler(socketserver.BaseRequestHandler):
    server: _EchoServer

    def handle(self) -> None:
        sock = self.request
        sock.settimeout(10)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                return
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
        raw = head + b"\r\n\r\n" + body
        self.server.origin.requests.append(raw)
        target = head.split(b" ")[1]
        if target.startswith(b"/bare"):
            # No Content-Type, no Date: what a minimal app may send.
            reply = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nConnection: close\r\n\r\nbare"
        else:
            payload = json.dumps({"raw": base64.b64encode(raw).decode()}).encode()
            reply = (
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\nConnection: close\r\n\r\n%b" % (len(payload), payload)
            )
        sock.sendall(reply)


class _EchoServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    origin: RawOrigin


@pytest.fixture(scope="module")
def raw_origin() -> Iterator[RawOrigin]:
    server = _EchoServer(("127.0.0.1", 0), _EchoHandler)
    server.origin = RawOrigin(server.server_address[1])
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.origin
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@dataclass(frozen=True)
class Setup:
    relay: RelayProcess
    tunnel: TunnelProcess
    origin: RawOrigin

    @property
    def host(self) -> str:
        return self.tunnel.host

    def send(self, raw: bytes, *, head_only: bool = False) -> RawResponse:
        """Send raw request bytes on a new connection; the (final) response."""
        with RawConnection(self.relay.port) as conn:
            assert conn.send(raw)
            while True:
                response = conn.read_response(head=head_only)
                assert response is not None, "the relay closed without an answer"
                if response.status >= 200:
                    return response

    def received(self, raw: bytes) -> bytes:
        """What the app received for this request (which must reach it)."""
        response = self.send(raw)
        assert response.status == 200, response
        assert response.header("X-Sharetunnel-Error") is None, response
        return base64.b64decode(response.json()["raw"])

    def refused(self, raw: bytes, status: int) -> RawResponse:
        """The relay answers ``status`` itself, and nothing reaches the app."""
        before = len(self.origin.requests)
        response = self.send(raw)
        assert response.status == status, response
        assert response.header("X-Sharetunnel-Error") == str(status), response
        time.sleep(0.2)  # a request wrongly forwarded would have arrived by now
        assert len(self.origin.requests) == before, self.origin.requests[before:]
        return response


@pytest.fixture(scope="module")
def setup(raw_origin: RawOrigin) -> Iterator[Setup]:
    with run_relay() as relay, run_tunnel(raw_origin.port, relay=relay) as tunnel:
        yield Setup(relay, tunnel, raw_origin)


def lines_of(raw: bytes) -> list[bytes]:
    return raw.partition(b"\r\n\r\n")[0].split(b"\r\n")


def header_lines(raw: bytes, name: bytes) -> list[bytes]:
    """The raw header lines of one name (any case), in order."""
    return [
        line
        for line in lines_of(raw)[1:]
        if line.partition(b":")[0].strip().lower() == name.lower()
    ]


# -- headers --------------------------------------------------------------------------------


def test_headers_differing_only_in_case_reach_the_app_apart_with_their_case(
    setup: Setup,
) -> None:
    raw = setup.received(
        f"GET /dup HTTP/1.1\r\nHost: {setup.host}\r\nX-Dup: 1\r\nx-dup: 2\r\n\r\n".encode()
    )
    assert header_lines(raw, b"x-dup") == [b"X-Dup: 1", b"x-dup: 2"]


def test_obs_text_in_a_header_value_reaches_the_app_byte_for_byte(setup: Setup) -> None:
    value = b"caf\xe9 \xff\x80 end"
    raw = setup.received(
        b"GET /latin HTTP/1.1\r\nHost: "
        + setup.host.encode()
        + b"\r\nX-Latin: "
        + value
        + b"\r\n\r\n"
    )
    assert header_lines(raw, b"x-latin") == [b"X-Latin: " + value]


@pytest.mark.parametrize(
    "host",
    ["{link}:80@evil.example", "{link}:<script>", "{link}:1/x/../y", "{link}:8o", "{link}:\xff"],
)
def test_a_host_that_is_not_a_host_name_and_port_is_400_and_never_routed(
    setup: Setup, host: str
) -> None:
    value = host.format(link=setup.host.rsplit(":", 1)[0]).encode("latin-1")
    setup.refused(b"GET /count HTTP/1.1\r\nHost: " + value + b"\r\n\r\n", 400)


UNDERSCORED = [
    b"X_Forwarded_For: 6.6.6.6",
    b"X_Forwarded_Host: evil.example",
    b"X_Real_IP: 6.6.6.6",
    b"X_Forwarded_Proto: https",
    b"x_forwarded_port: 1",
    b"Forwarded_: for=6.6.6.6",
]


def test_underscore_spellings_of_forwarding_headers_are_dropped(setup: Setup) -> None:
    raw = setup.received(
        b"GET /underscores HTTP/1.1\r\nHost: "
        + setup.host.encode()
        + b"\r\n"
        + b"".join(line + b"\r\n" for line in UNDERSCORED)
        + b"X_Custom_Header: kept\r\n\r\n"
    )
    names = {line.partition(b":")[0].lower() for line in lines_of(raw)[1:]}
    for line in UNDERSCORED[:5]:
        assert line.partition(b":")[0].lower() not in names, raw
    assert header_lines(raw, b"x_custom_header") == [b"X_Custom_Header: kept"]
    assert header_lines(raw, b"x-forwarded-for") == [b"X-Forwarded-For: 127.0.0.1"]


def test_forwarded_for_is_the_visitors_own_without_a_trusted_proxy(setup: Setup) -> None:
    raw = setup.received(
        f"GET /xff HTTP/1.1\r\nHost: {setup.host}\r\nX-Forwarded-For: 203.0.113.7\r\n"
        "X-Forwarded-For: 198.51.100.1\r\n\r\n".encode()
    )
    assert header_lines(raw, b"x-forwarded-for") == [b"X-Forwarded-For: 127.0.0.1"]


@pytest.mark.parametrize(
    ("lines", "client"),
    [
        # One list over all lines, read from the right past the trusted fronts.
        (["203.0.113.7, 10.0.0.1", "10.0.0.2"], "203.0.113.7"),
        (["198.51.100.66, 203.0.113.7", "10.0.0.2, 10.0.0.3"], "203.0.113.7"),
        (["198.51.100.66", "203.0.113.7"], "203.0.113.7"),
        (["10.0.0.1"], "10.0.0.1"),
        ([], "127.0.0.1"),
    ],
)
def test_behind_trusted_proxies_forwarded_for_is_read_from_the_right(
    raw_origin: RawOrigin, lines: list[str], client: str
) -> None:
    with (
        run_relay("--trusted-proxy", "127.0.0.1", "--trusted-proxy", "10.0.0.0/8") as relay,
        run_tunnel(raw_origin.port, relay=relay) as tunnel,
    ):
        fronted = Setup(relay, tunnel, raw_origin)
        head = f"GET /xff HTTP/1.1\r\nHost: {tunnel.host}\r\n" + "".join(
            f"X-Forwarded-For: {line}\r\n" for line in lines
        )
        raw = fronted.received((head + "\r\n").encode())
    assert header_lines(raw, b"x-forwarded-for") == [f"X-Forwarded-For: {client}".encode()]


# -- framing and versions -----------------------------------------------------------------


def test_http_1_0_never_gets_100_continue_nor_chunked(setup: Setup) -> None:
    with RawConnection(setup.relay.port) as conn:
        assert conn.send(
            f"POST /echo HTTP/1.0\r\nHost: {setup.host}\r\nExpect: 100-continue\r\n"
            "Content-Length: 5\r\n\r\n".encode()
        )
        conn.sock.settimeout(0.5)
        with pytest.raises(TimeoutError):
            conn.sock.recv(1)  # no 100 Continue while the body is awaited
        conn.sock.settimeout(10)
        assert conn.send(b"hello")
        response = conn.read_response()
        assert response is not None and response.status == 200, response
        raw = base64.b64decode(response.json()["raw"])
        assert raw.endswith(b"\r\n\r\nhello")
        assert header_lines(raw, b"expect") == []
        assert conn.closed_by_peer()
    # A body of unknown length goes to an HTTP/1.0 visitor close-delimited.
    with RawConnection(setup.relay.port) as conn:
        assert conn.send(f"GET /bare HTTP/1.0\r\nHost: {setup.host}\r\n\r\n".encode())
        response = conn.read_response()
    assert response is not None and response.status == 200
    assert response.header("Transfer-Encoding") is None
    assert response.body == b"bare"


@pytest.mark.parametrize("coding", ["gzip, chunked", "deflate,chunked", "br, identity, chunked"])
def test_a_transfer_coding_besides_chunked_is_501_and_not_forwarded(
    setup: Setup, coding: str
) -> None:
    setup.refused(
        f"POST /te HTTP/1.1\r\nHost: {setup.host}\r\nTransfer-Encoding: {coding}\r\n\r\n"
        "5\r\nhello\r\n0\r\n\r\n".encode(),
        501,
    )


@pytest.mark.parametrize(
    "lines",
    [
        ["Upgrade: websocket", "Connection: Upgrade", "Sec-WebSocket-Version: 13"],
        [
            "Upgrade: websocket",
            "Connection: Upgrade",
            "Sec-WebSocket-Version: 13",
            "Sec-WebSocket-Key: dG9vIHNob3J0",
        ],
        [
            "Upgrade: websocket",
            "Sec-WebSocket-Version: 13",
            "Sec-WebSocket-Key: " + "A" * 22 + "==",
        ],
    ],
    ids=["no-key", "short-key", "no-connection-upgrade"],
)
def test_an_invalid_websocket_upgrade_is_400_and_nothing_reaches_the_app(
    setup: Setup, lines: list[str]
) -> None:
    head = f"GET /ws HTTP/1.1\r\nHost: {setup.host}\r\n" + "".join(f"{x}\r\n" for x in lines)
    setup.refused((head + "\r\n").encode(), 400)


@pytest.mark.parametrize(
    "target",
    [
        "/x?",
        "/a%2Fb?x=%20",
        "/q?a=1&&b=%zz;c",
        "/%7e//./../p",
    ],
)
def test_the_target_reaches_the_app_byte_for_byte(setup: Setup, target: str) -> None:
    raw = setup.received(f"GET {target} HTTP/1.1\r\nHost: {setup.host}\r\n\r\n".encode())
    assert lines_of(raw)[0] == f"GET {target} HTTP/1.1".encode()


@pytest.mark.parametrize("method", ["BREW", "PROPFIND", "M-SEARCH", "X_CUSTOM!"])
def test_any_token_method_is_forwarded(setup: Setup, method: str) -> None:
    raw = setup.received(f"{method} /pot HTTP/1.1\r\nHost: {setup.host}\r\n\r\n".encode())
    assert lines_of(raw)[0] == f"{method} /pot HTTP/1.1".encode()


def test_options_asterisk_is_forwarded(setup: Setup) -> None:
    raw = setup.received(f"OPTIONS * HTTP/1.1\r\nHost: {setup.host}\r\n\r\n".encode())
    assert lines_of(raw)[0] == b"OPTIONS * HTTP/1.1"


def test_http_2_request_line_gets_505_in_http_1_1(setup: Setup) -> None:
    with RawConnection(setup.relay.port) as conn:
        assert conn.send(f"GET / HTTP/2.0\r\nHost: {setup.host}\r\n\r\n".encode())
        response = conn.read_response()
    assert response is not None
    assert (response.version, response.status) == ("HTTP/1.1", 505)


def test_the_relay_adds_no_content_type(setup: Setup) -> None:
    response = setup.send(f"GET /bare HTTP/1.1\r\nHost: {setup.host}\r\n\r\n".encode())
    assert response.status == 200 and response.body == b"bare"
    assert response.header("Content-Type") is None, response
    assert response.header_all("Content-Length") == ["4"]


def test_a_visitor_that_pipelines_gets_every_answer_in_order(setup: Setup) -> None:
    requests = b"".join(
        f"GET /p{i} HTTP/1.1\r\nHost: {setup.host}\r\n\r\n".encode() for i in range(5)
    )
    with RawConnection(setup.relay.port) as conn:
        assert conn.send(requests)
        targets = []
        for _ in range(5):
            response = conn.read_response()
            assert response is not None and response.status == 200
            targets.append(lines_of(base64.b64decode(response.json()["raw"]))[0].split()[1])
    assert targets == [f"/p{i}".encode() for i in range(5)]


def test_a_links_request_pipelined_behind_one_for_the_relay_is_never_served_as_the_relay(
    setup: Setup,
) -> None:
    """The relay's own host is aiohttp's, one request per connection: a link's request
    pipelined behind it is not answered there (421 if it is looked at at all)."""
    before = len(setup.origin.requests)
    with RawConnection(setup.relay.port) as conn:
        assert conn.send(
            f"GET /_health HTTP/1.1\r\nHost: 127.0.0.1:{setup.relay.port}\r\n\r\n"
            f"GET /count HTTP/1.1\r\nHost: {setup.host}\r\n\r\n".encode()
        )
        health = conn.read_response()
        assert health is not None and health.status == 200
        follow = None if conn.closed_by_peer() else conn.read_response()
    assert follow is None or follow.status == 421, follow
    assert len(setup.origin.requests) == before
