"""The forwarder against real local servers, with the relay's side played in memory.

A relay :class:`~tunnel_client.protocol.aio.Session` and the client's, joined by
:class:`~tests.protocol.helpers.MemoryTransport`, carry each request to a
:class:`~tunnel_client.forwarder.Forwarder` and its local server: a raw TCP origin
(:mod:`tests.raworigin`) where the exact bytes matter, the aiohttp origin for
WebSockets. What the relay's side receives is what the client sends, with no relay
edge in between: these tests pin the client's half of the fidelity rules.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import hashlib
import json
import os
import socket
import ssl
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from relay_server.tls import load_or_create_self_signed, server_context
from tests.processes import Origin
from tests.protocol.helpers import MemoryTransport, until
from tests.raworigin import RawOrigin, RawRequest, raw_origin
from tunnel_client.forwarder import Forwarder, RequestRecord, local_authority
from tunnel_client.protocol.aio import Session, Stream, WebSocketClosed, WebSocketMessage
from tunnel_client.protocol.errors import GoAwayCode, ResetCode, StreamReset
from tunnel_client.protocol.heads import RequestHead, ResponseHead
from tunnel_client.protocol.mux import Mux, Role

WINDOW = 256 * 1024


class Link:
    """A relay session whose streams a forwarder serves."""

    def __init__(self, relay: Session, records: list[RequestRecord]) -> None:
        self.relay = relay
        self.records = records

    async def exchange(
        self, head: RequestHead, body: bytes = b""
    ) -> tuple[ResponseHead, bytes, Stream]:
        stream = self.relay.open_stream(head, end_stream=not body and not head.websocket)
        if body:
            await stream.write(body)
            await stream.end()
        response, _ = await asyncio.wait_for(stream.response(), 10)
        chunks = []
        if response.status != 101:
            while chunk := await asyncio.wait_for(stream.read(), 10):
                chunks.append(chunk)
        return response, b"".join(chunks), stream


SERVE_NOW = False
"""Whether :func:`link` lets the forwarder serve plain requests on kept-alive
connections from callbacks (``serve_now``, as the client does) or gives every request a
task: each test runs both ways."""


@pytest.fixture(autouse=True, params=["task", "callbacks"])
def _serving(request: pytest.FixtureRequest) -> Iterator[None]:
    global SERVE_NOW
    SERVE_NOW = request.param == "callbacks"
    try:
        yield
    finally:
        SERVE_NOW = False


@contextlib.asynccontextmanager
async def link(port: int, **options: Any) -> AsyncIterator[Link]:
    records: list[RequestRecord] = []
    a, b = MemoryTransport.pair()
    async with Forwarder("127.0.0.1", port, on_request=records.append, **options) as forwarder:
        relay = Session(a, Mux(Role.RELAY, window=WINDOW, peer_window=WINDOW))
        client = Session(
            b,
            Mux(Role.CLIENT, window=WINDOW, peer_window=WINDOW),
            on_stream=forwarder.serve,
            serve_now=forwarder.serve_now if SERVE_NOW else None,
        )
        tasks = [asyncio.create_task(relay.run()), asyncio.create_task(client.run())]
        try:
            yield Link(relay, records)
        finally:
            relay.close(GoAwayCode.NORMAL, "test over")
            await asyncio.wait_for(asyncio.gather(*tasks), 10)


@pytest.fixture
def raw() -> Iterator[RawOrigin]:
    with raw_origin() as origin:
        yield origin


def get(target: str, *headers: tuple[str, str], method: str = "GET") -> RequestHead:
    return RequestHead(method, target, (("Host", "abc.share.example"), *headers))


# -- requests go out exactly ----------------------------------------------------------------


async def test_the_request_head_is_the_visitors_byte_for_byte(raw: RawOrigin) -> None:
    raw.answer("/x", b"HTTP/1.1 204 No Content\r\n\r\n")
    head = get(
        "/x?",
        ("x-lower", "a"),
        ("X-UPPER", "b"),
        ("X-Rep", "1"),
        ("Cookie", "a=1"),
        ("X-Rep", "2"),
        ("Cookie", "b=2"),
        ("X-Latin", "caf\xe9"),
        ("X-Escaped", "caf\udce9"),  # an aiohttp relay's way of saying the byte 0xE9
        ("X-Utf8", "日本"),
        ("X-Ctl", "a\x01b\x7fc"),
        ("Sec-WebSocket-Extensions", "permessage-deflate"),
    )
    async with link(raw.port) as t:
        response, body, _ = await t.exchange(head)
    assert response.status == 204 and body == b""
    sent = raw.last("/x")
    assert sent.head == (
        b"GET /x? HTTP/1.1\r\nHost: abc.share.example\r\nx-lower: a\r\nX-UPPER: b\r\n"
        b"X-Rep: 1\r\nCookie: a=1\r\nX-Rep: 2\r\nCookie: b=2\r\nX-Latin: caf\xe9\r\n"
        b"X-Escaped: caf\xe9\r\nX-Utf8: \xe6\x97\xa5\xe6\x9c\xac\r\nX-Ctl: a\x01b\x7fc"
    )


async def test_nothing_is_added_to_a_request(raw: RawOrigin) -> None:
    raw.answer("/", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    async with link(raw.port) as t:
        await t.exchange(RequestHead("GET", "/", (("Host", "h"),)))
    assert raw.last("/").head == b"GET / HTTP/1.1\r\nHost: h"


@pytest.mark.parametrize("method", ["OPTIONS", "PROPFIND", "BREW"])
async def test_any_method_and_the_asterisk_target_pass(raw: RawOrigin, method: str) -> None:
    raw.answer("*", b"HTTP/1.1 200 OK\r\nAllow: GET\r\nContent-Length: 0\r\n\r\n")
    async with link(raw.port) as t:
        response, _, _ = await t.exchange(RequestHead(method, "*", (("Host", "h"),)))
    assert response.status == 200 and response.headers == (
        ("Allow", "GET"),
        ("Content-Length", "0"),
    )
    assert raw.last("*").request_line == f"{method} * HTTP/1.1".encode()


async def test_a_body_of_known_length_goes_with_it(raw: RawOrigin) -> None:
    raw.answer(
        "/up", lambda r: b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(r.body), r.body)
    )
    body = os.urandom(3 * WINDOW + 5)
    head = get("/up", ("Content-Length", str(len(body))), method="POST")
    async with link(raw.port) as t:
        _, echoed, _ = await t.exchange(head, body)
    assert echoed == body
    assert raw.last("/up").values(b"Content-Length") == [str(len(body)).encode()]
    assert raw.last("/up").values(b"Transfer-Encoding") == []


async def test_a_body_of_unknown_length_is_sent_chunked(raw: RawOrigin) -> None:
    raw.answer(
        "/up", lambda r: b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(r.body), r.body)
    )
    body = os.urandom(3 * WINDOW + 5)
    async with link(raw.port) as t:
        _, echoed, _ = await t.exchange(get("/up", method="POST"), body)
    assert echoed == body
    assert raw.last("/up").values(b"Transfer-Encoding") == [b"chunked"]


@pytest.mark.parametrize(
    ("host_header", "sent"),
    [(None, b"abc.share.example"), ("rewrite", None), ("myapp.local", b"myapp.local")],
)
async def test_the_host_header_setting(
    raw: RawOrigin, host_header: str | None, sent: bytes | None
) -> None:
    raw.answer("/", b"HTTP/1.1 204 No Content\r\n\r\n")
    options = {} if host_header is None else {"host_header": host_header}
    head = get("/", ("X-Forwarded-Host", "abc.share.example"))
    async with link(raw.port, **options) as t:
        await t.exchange(head)
    expected = sent if sent is not None else f"localhost:{raw.port}".encode()
    request = raw.last("/")
    assert request.values(b"Host") == [expected]
    assert request.header_lines[0].startswith(b"Host:")  # in place, not appended
    assert request.values(b"X-Forwarded-Host") == [b"abc.share.example"]


def test_rewrite_names_loopback_as_localhost() -> None:
    assert local_authority("127.0.0.1", 8888) == "localhost:8888"
    assert local_authority("::1", 80) == "localhost:80"
    assert local_authority("192.0.2.7", 80) == "192.0.2.7:80"
    assert local_authority("fe80::1", 80) == "[fe80::1]:80"
    assert local_authority("devbox", 3000) == "devbox:3000"


# -- responses come back exactly -----------------------------------------------------------


async def test_response_headers_pass_byte_for_byte(raw: RawOrigin) -> None:
    raw.answer(
        "/odd",
        b"HTTP/1.1 200 OK\r\nX-Ctl: a\x01b\x7fc\r\nX-Latin: caf\xe9\r\nSet-Cookie: a=1\r\n"
        b"X-Rep: one\r\nSet-Cookie: b=2; HttpOnly\r\nx-lower: v\r\nX-Rep: two\r\n"
        b"Set-Cookie: c=3\r\nConnection: keep-alive, X-Hop\r\nX-Hop: gone\r\n"
        b"Content-Length: 4\r\n\r\nbody",
    )
    async with link(raw.port) as t:
        response, body, _ = await t.exchange(get("/odd"))
    assert body == b"body"
    assert response.headers == (
        ("X-Ctl", "a\x01b\x7fc"),
        ("X-Latin", "caf\xe9"),
        ("Set-Cookie", "a=1"),
        ("X-Rep", "one"),
        ("Set-Cookie", "b=2; HttpOnly"),
        ("x-lower", "v"),
        ("X-Rep", "two"),
        ("Set-Cookie", "c=3"),
        ("Content-Length", "4"),
    )


async def test_no_content_type_is_added(raw: RawOrigin) -> None:
    raw.answer("/bare", b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc")
    async with link(raw.port) as t:
        response, body, _ = await t.exchange(get("/bare"))
    assert response.headers == (("Content-Length", "3"),) and body == b"abc"


@pytest.mark.parametrize(
    ("raw_body", "expected"),
    [
        (b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", b"abc"),
        (
            b"Transfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nX-T: 1\r\n\r\n",
            b"abcde",
        ),
        (b"Connection: close\r\n\r\nuntil the end", b"until the end"),
    ],
)
async def test_bodies_of_every_framing(raw: RawOrigin, raw_body: bytes, expected: bytes) -> None:
    raw.answer("/b", b"HTTP/1.1 200 OK\r\n" + raw_body)
    async with link(raw.port) as t:
        response, body, _ = await t.exchange(get("/b"))
        _, body2, _ = await t.exchange(get("/b"))
    assert body == body2 == expected
    assert all(n.lower() != "transfer-encoding" for n, _ in response.headers)


async def test_interim_responses_are_skipped(raw: RawOrigin) -> None:
    raw.answer(
        "/early",
        b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    )
    async with link(raw.port) as t:
        response, body, _ = await t.exchange(get("/early"))
    assert (response.status, body) == (200, b"ok")


async def test_keep_alive_connections_are_reused(raw: RawOrigin) -> None:
    raw.answer("/", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    async with link(raw.port) as t:
        for _ in range(5):
            assert (await t.exchange(get("/")))[1] == b"ok"
    assert raw.connections == 1


async def test_a_finished_request_leaves_no_reference_cycle(raw: RawOrigin) -> None:
    """Refcounting frees a request's objects as it ends: none wait for the cyclic
    collector (whose passes over a cycle per request cost the client ~10 us a request)."""
    raw.answer("/len", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    raw.answer(
        "/chunked", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
    )
    raw.answer("/none", b"HTTP/1.1 204 No Content\r\n\r\n")
    async with link(raw.port) as t:
        gc.collect()  # what earlier tests left
        gc.disable()
        gc.set_debug(gc.DEBUG_SAVEALL)  # whatever a pass finds is kept to be looked at
        try:
            for target in ("/len", "/chunked", "/none") * 3:
                assert (await t.exchange(get(target)))[0].status in (200, 204)
            await until(lambda: len(t.records) == 9)
            gc.collect()
            left = {type(o).__name__ for o in gc.garbage} & {
                "_Exchange",
                "ResponseReader",
                "Stream",
            }
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
            gc.enable()
    assert not left, f"freed only by the cyclic collector: {left}"
    assert raw.connections == 1  # the requests after the first were served on a kept-alive one


async def test_a_response_larger_than_the_window_on_a_kept_alive_connection(
    raw: RawOrigin,
) -> None:
    """Bytes the stream has no credit for are held back and sent as credit comes."""
    body = bytes(range(256)) * (4 * WINDOW // 256 + 3)
    raw.answer("/good", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    raw.answer("/big", b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    async with link(raw.port) as t:
        assert (await t.exchange(get("/good")))[1] == b"ok"
        for _ in range(2):
            head, got, _ = await t.exchange(get("/big"))
            assert head.status == 200 and got == body
        assert (await t.exchange(get("/good")))[1] == b"ok"
    assert raw.connections == 1
    assert [(r.status, r.bytes_out, r.error) for r in t.records[1:3]] == [
        (200, len(body), None)
    ] * 2


async def test_a_kept_alive_connection_the_server_dropped_is_retried_once(
    raw: RawOrigin,
) -> None:
    """A request sent on a kept-alive connection that closes with no answer goes again
    on a new connection (the server may have closed it just as we sent)."""
    dropped: list[bytes] = []

    def drop_first(request: RawRequest) -> bytes:
        if not dropped:
            dropped.append(request.target)
            return b""
        return b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nagain"

    raw.answer("/good", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    raw.answer("/flaky", drop_first)
    async with link(raw.port) as t:
        assert (await t.exchange(get("/good")))[1] == b"ok"
        head, body, _ = await t.exchange(get("/flaky"))
        assert (head.status, body) == (200, b"again")
    assert raw.connections == 2 and dropped == [b"/flaky"]
    assert [(r.path, r.status, r.error) for r in t.records] == [
        ("/good", 200, None),
        ("/flaky", 200, None),
    ]


@pytest.mark.parametrize("ending", ["reset", "session"])
async def test_a_visitor_gone_mid_response_on_a_kept_alive_connection(
    raw: RawOrigin, ending: str
) -> None:
    """The local server sees the connection close, the request is logged as cut off,
    and the next request takes a new connection."""
    raw.answer("/good", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    raw.answer("/hang", b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc")
    async with link(raw.port) as t:
        assert (await t.exchange(get("/good")))[1] == b"ok"
        stream = t.relay.open_stream(get("/hang"), end_stream=True)
        head, _ = await asyncio.wait_for(stream.response(), 10)
        assert head.status == 200 and await asyncio.wait_for(stream.read(), 10) == b"abc"
        if ending == "reset":
            stream.reset(ResetCode.CANCEL, "the visitor went away")  # the relay's words
            await until(lambda: len(t.records) == 2 and raw.disconnects == 1)
            assert (await t.exchange(get("/good")))[1] == b"ok"
            assert raw.connections == 2
        else:
            t.relay.close(GoAwayCode.NORMAL, "relay going away")
            await until(lambda: len(t.records) == 2 and raw.disconnects == 1)
    record = t.records[1]
    assert (record.path, record.status, record.bytes_out) == ("/hang", 200, 3), record
    if ending == "reset":
        assert record.error == "visitor went away"
    else:  # the visitor did not leave: the tunnel did
        assert record.error == "the tunnel closed before the answer (relay going away)"


@pytest.mark.parametrize(
    ("code", "reason", "status", "error"),
    [
        (ResetCode.TOO_LARGE, "request body over 1024 bytes", 413, "over the relay's limit"),
        (
            ResetCode.CANCEL,
            "the visitor's request body was malformed",
            499,
            "the relay ended it: the visitor's request body was malformed",
        ),
        (ResetCode.CANCEL, "the visitor went away", 499, "visitor went away"),
    ],
)
async def test_the_owners_log_says_why_a_request_ended_before_its_answer(
    raw: RawOrigin, code: ResetCode, reason: str, status: int, error: str
) -> None:
    async with link(raw.port) as t:
        # A body still coming (chunked to the app, which waits for its end) is cut.
        stream = t.relay.open_stream(get("/hang", method="POST"), end_stream=False)
        await stream.write(b"part of a body")
        await until(lambda: raw.connections == 1)
        stream.reset(code, reason)
        await until(lambda: len(t.records) == 1)
    record = t.records[0]
    assert (record.path, record.status) == ("/hang", status), record
    assert record.error is not None and error in record.error, record


@pytest.mark.parametrize(
    ("answer", "code", "needle"),
    [
        (b"SSH-2.0-OpenSSH_9.2\r\n", ResetCode.UPSTREAM_ERROR, "Bad status line 'SSH-2.0"),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 1, 2\r\n\r\n",
            ResetCode.UPSTREAM_ERROR,
            "Content-Length",
        ),
        (b"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n", ResetCode.UPSTREAM_ERROR, "header name"),
        (b"HTTP/1.1 200 OK\r\nX: a\x00b\r\n\r\n", ResetCode.UPSTREAM_ERROR, "NUL"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nshort", ResetCode.UPSTREAM_ERROR, "closed"),
        (
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
            ResetCode.UPSTREAM_ERROR,
            "101",
        ),
        (
            b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 600 + b"\r\n",
            ResetCode.UPSTREAM_HEAD_TOO_LARGE,
            "headers",
        ),
    ],
)
@pytest.mark.parametrize("kept_alive", [False, True], ids=["fresh", "kept-alive"])
async def test_an_invalid_response_fails_that_request(
    raw: RawOrigin, answer: bytes, code: ResetCode, needle: str, kept_alive: bool
) -> None:
    """On a fresh connection, and on a kept-alive one (which the client serves from
    callbacks, without a task, until something fails)."""
    if b"short" in answer:  # a truncated body, then the connection closes
        answer = answer.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1)
    raw.answer("/bad", answer)
    raw.answer("/good", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    async with link(raw.port) as t:
        if kept_alive:
            assert (await t.exchange(get("/good")))[1] == b"ok"
            del t.records[:]
        stream = t.relay.open_stream(get("/bad"), end_stream=True)
        with pytest.raises(StreamReset) as reset:
            await asyncio.wait_for(stream.response(), 10)
            while await asyncio.wait_for(stream.read(), 10):
                pass
        assert reset.value.code is code
        assert (await t.exchange(get("/good")))[1] == b"ok"  # the link carries on
    record = t.records[0]
    assert record.status == 502 and record.error is not None and needle in record.error, record


# -- WebSockets ----------------------------------------------------------------------------


def ws_head(target: str, key: str, *extra: tuple[str, str]) -> RequestHead:
    return RequestHead(
        "GET",
        target,
        (
            ("Host", "abc.share.example"),
            ("Sec-WebSocket-Key", key),
            ("Sec-WebSocket-Version", "13"),
            *extra,
        ),
        websocket=True,
    )


def accept(key: str) -> str:
    magic = key.encode() + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
    return base64.b64encode(hashlib.sha1(magic).digest()).decode()


async def test_an_upgrade_goes_out_as_the_visitor_asked_and_101_comes_back(origin: Origin) -> None:
    key = base64.b64encode(os.urandom(16)).decode()
    head = ws_head("/ws", key, ("Sec-WebSocket-Protocol", "superchat, chat"))
    async with link(origin.port) as t:
        response, _, stream = await t.exchange(head)
        assert response.status == 101
        assert response.header("Sec-WebSocket-Accept") == accept(key)
        assert response.header("Sec-WebSocket-Protocol") == "superchat"
        assert response.header("Upgrade") is None  # hop-by-hop: the relay sets its own
        await stream.send_message(b"hello", text=True)
        assert await asyncio.wait_for(stream.receive_message(), 10) == WebSocketMessage(
            b"hello", True, 5
        )
        stream.send_close(4000, "bye")
        # aiohttp answers a close with 1000, whatever it was sent
        assert isinstance(await asyncio.wait_for(stream.receive_message(), 10), WebSocketClosed)


async def ws_closed_code(origin: Origin, key: str) -> object:
    def ask() -> object:
        with socket.create_connection(("127.0.0.1", origin.port), timeout=15) as sock:
            sock.sendall(
                f"GET /ws/closed?id={key} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
            )
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        return json.loads(data.split(b"\r\n\r\n", 1)[1])["code"]

    return await asyncio.to_thread(ask)


@pytest.mark.parametrize("how", ["reset", "close 1006"])
async def test_a_visitor_gone_mid_websocket_reaches_the_app_as_1001(
    origin: Origin, how: str
) -> None:
    key = os.urandom(6).hex()
    head = ws_head(f"/ws?id={key}", base64.b64encode(os.urandom(16)).decode())
    async with link(origin.port) as t:
        response, _, stream = await t.exchange(head)
        assert response.status == 101
        await stream.send_message(b"hi", text=True)
        await asyncio.wait_for(stream.receive_message(), 10)
        if how == "reset":
            stream.reset(ResetCode.CANCEL, "the visitor went away")
        else:
            stream.send_close(1006, "")
        assert await ws_closed_code(origin, key) == 1001


async def test_a_refused_upgrade_passes_whole(raw: RawOrigin) -> None:
    raw.answer(
        "/ws",
        b'HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer realm="app"\r\n'
        b"Content-Length: 12\r\n\r\nlog in first",
    )
    async with link(raw.port) as t:
        response, body, _ = await t.exchange(ws_head("/ws", "dGhlIHNhbXBsZSBub25jZQ=="))
    assert response.status == 401 and body == b"log in first"
    assert response.header("WWW-Authenticate") == 'Bearer realm="app"'
    sent = raw.last("/ws")
    assert sent.values(b"Sec-WebSocket-Key") == [b"dGhlIHNhbXBsZSBub25jZQ=="]
    assert sent.values(b"Upgrade") == [b"websocket"]
    assert sent.values(b"Connection") == [b"Upgrade"]


# -- a local server that speaks TLS ----------------------------------------------------------


@contextlib.asynccontextmanager
async def tls_server(tmp_path: Path) -> AsyncIterator[tuple[int, Path]]:
    cert, key, _ = load_or_create_self_signed("localhost", tmp_path)
    tls = server_context(cert, key)

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsecret")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=tls)
    try:
        yield server.sockets[0].getsockname()[1], cert
    finally:
        server.close()
        await server.wait_closed()


async def test_https_to_the_local_server(tmp_path: Path) -> None:
    async with tls_server(tmp_path) as (port, cert):
        trusted = ssl.create_default_context(cafile=str(cert))
        async with link(port, scheme="https", ssl_context=trusted) as t:
            response, body, _ = await t.exchange(get("/"))
        assert (response.status, body) == (200, b"secret")
        async with link(port, scheme="https") as t:  # the system's CAs: not trusted
            stream = t.relay.open_stream(get("/"), end_stream=True)
            with pytest.raises(StreamReset) as reset:
                await asyncio.wait_for(stream.response(), 10)
        assert reset.value.code is ResetCode.UPSTREAM_ERROR
        assert "TLS" in (t.records[0].error or ""), t.records


@pytest.mark.parametrize("then_close", [False, True])
async def test_a_server_that_speaks_first_is_reported_by_what_it_said(then_close: bool) -> None:
    """Its banner can come before the request is even written (a fresh connection)."""

    async def banner(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"SSH-2.0-OpenSSH_9.2\r\n")
        await writer.drain()
        if then_close:
            writer.close()
            return
        with contextlib.suppress(ConnectionError):
            await reader.read()
        writer.close()

    server = await asyncio.start_server(banner, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with link(port) as t:
            stream = t.relay.open_stream(get("/"), end_stream=True)
            with pytest.raises(StreamReset) as reset:
                await asyncio.wait_for(stream.response(), 10)
            assert reset.value.code is ResetCode.UPSTREAM_ERROR
        record = t.records[0]
        assert record.error is not None and "SSH-2.0-OpenSSH_9.2" in record.error, record
    finally:
        server.close()
        await server.wait_closed()
