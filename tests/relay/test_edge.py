"""The visitor edge in-process: a real relay in this event loop, a raw tunnel client, raw
visitor sockets. For what a relay process with a real client cannot show quickly, or at
all (a frame limit lowered to make a head too large for the tunnel)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest

from relay_server.app import Relay
from relay_server.config import RelayConfig
from tests.rawclient import RawClient, hello_message, raw_frame
from tunnel_client.protocol import mux
from tunnel_client.protocol.frames import Flags, FrameType
from tunnel_client.protocol.heads import RequestHead


@pytest.fixture
async def relay() -> AsyncIterator[Relay]:
    server = Relay(RelayConfig(port=0, header_timeout_s=5, log_level="debug"))
    await server.start()
    try:
        yield server
    finally:
        await server.shutdown(grace_s=0.1)


@pytest.fixture
async def client(relay: Relay) -> AsyncIterator[RawClient]:
    raw = await RawClient.connect(relay.port, hello=hello_message())
    try:
        yield raw
    finally:
        await raw.close()


def host_of(relay: Relay, client: RawClient) -> str:
    return f"{client.subdomain}.localhost:{relay.port}"


async def exchange(port: int, data: bytes, *, until_close: bool = True) -> bytes:
    """Send raw bytes as a visitor; what came back (until the relay closed, or 1 s)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        got = b""
        while True:
            try:
                chunk = await asyncio.wait_for(reader.read(65536), 1 if not until_close else 10)
            except TimeoutError:
                return got
            if not chunk:
                return got
            got += chunk
    finally:
        writer.close()


async def answer(client: RawClient, status: int = 200, body: bytes = b"ok") -> RequestHead:
    """Answer the next OPEN with a small response; its head."""
    opened = await client.wait_for(FrameType.OPEN)
    head = json.dumps({"status": status, "headers": [["Content-Length", str(len(body))]]})
    await client.send(
        raw_frame(FrameType.REPLY, 0, opened.stream_id, head.encode())
        + raw_frame(FrameType.DATA, Flags.FIN, opened.stream_id, body)
    )
    return RequestHead.decode(opened.payload)


async def test_a_head_too_large_for_one_open_frame_is_431_and_the_link_lives_on(
    relay: Relay, client: RawClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under the relay's byte limit, over what one OPEN may carry: 431, never a session
    killer. With max_header_bytes capped (config.MAX_HEADER_BYTES) no visitor head can
    get there any more, so the frame limit is lowered here to show the refusal."""
    monkeypatch.setattr(mux, "MAX_HEAD_PAYLOAD", 4096)
    host = host_of(relay, client)
    big = (
        f"GET /big HTTP/1.1\r\nHost: {host}\r\nAccept: text/html\r\nX-Pad: {'p' * 5000}\r\n\r\n"
    ).encode()
    got = await exchange(relay.port, big, until_close=False)
    assert got.startswith(b"HTTP/1.1 431 "), got[:200]
    assert b"Content-Type: text/html" in got and b"Request headers too large" in got
    small = f"GET /small HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
    reply, head = await asyncio.gather(exchange(relay.port, small), answer(client))
    assert head.target == "/small"
    assert reply.startswith(b"HTTP/1.1 200 ") and reply.endswith(b"\r\n\r\nok"), reply


@pytest.mark.parametrize(
    ("sent", "method", "target", "headers"),
    [
        (
            b"GET /dup HTTP/1.1\r\nX-Dup: 1\r\nx-dup: 2\r\n",
            "GET",
            "/dup",
            [("X-Dup", "1"), ("x-dup", "2")],
        ),
        (
            b"GET /l HTTP/1.1\r\nX-Latin: caf\xe9 \xff\x80\r\n",
            "GET",
            "/l",
            [("X-Latin", "caf\xe9 \xff\x80")],
        ),
        (b"GET /x? HTTP/1.1\r\n", "GET", "/x?", []),
        (b"OPTIONS * HTTP/1.1\r\n", "OPTIONS", "*", []),
        (b"BREW /pot HTTP/1.1\r\n", "BREW", "/pot", []),
    ],
    ids=["case-dup", "obs-text", "empty-query", "asterisk", "unknown-method"],
)
async def test_what_the_relay_puts_in_the_open_is_what_the_visitor_sent(
    relay: Relay,
    client: RawClient,
    sent: bytes,
    method: str,
    target: str,
    headers: list[tuple[str, str]],
) -> None:
    """The relay's half of fidelity, seen in the OPEN frame itself: names keep their
    case and repeats, values are latin-1 (one character per byte), targets as sent."""
    host = host_of(relay, client)
    request = sent + b"Host: " + host.encode() + b"\r\nConnection: close\r\n\r\n"
    _, head = await asyncio.gather(exchange(relay.port, request), answer(client))
    assert (head.method, head.target) == (method, target)
    assert [(n, v) for n, v in head.headers if n.lower() not in FORWARDING] == [
        *headers,
        ("Host", host),
    ]


FORWARDING = {"x-forwarded-for", "x-forwarded-host", "x-forwarded-proto"}


WS_KEY = "dGhlIHNhbXBsZSBub25jZQ=="


async def open_websocket(
    relay: Relay, client: RawClient
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, int]:
    """A visitor's WebSocket through the link, the raw client answering for the app."""
    reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
    writer.write(
        f"GET /ws HTTP/1.1\r\nHost: {host_of(relay, client)}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {WS_KEY}\r\n"
        "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n".encode()
    )
    opened = await client.wait_for(FrameType.OPEN)
    head = RequestHead.decode(opened.payload)
    assert head.websocket and head.header("Sec-WebSocket-Key") == WS_KEY
    assert head.header("Sec-WebSocket-Extensions") is None  # never negotiated
    reply = json.dumps(
        {"status": 101, "headers": [["Sec-WebSocket-Accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="]]}
    )
    await client.send(raw_frame(FrameType.REPLY, 0, opened.stream_id, reply.encode()))
    response = await reader.readuntil(b"\r\n\r\n")
    assert response.startswith(b"HTTP/1.1 101 Switching Protocols\r\n"), response
    assert b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n" in response
    return reader, writer, opened.stream_id


async def test_a_visitor_whose_connection_drops_mid_websocket_is_never_a_normal_close(
    relay: Relay, client: RawClient
) -> None:
    """The stream gets 1006 (abnormal closure, aio.bridge_codec's word for a vanished
    peer), which the client's bridge turns into 1001 (going away) for the app."""
    _, writer, stream_id = await open_websocket(relay, client)
    # One masked text frame "hi" (mask 0), then the TCP connection just goes.
    writer.write(b"\x81\x82\x00\x00\x00\x00hi")
    message = await client.wait_for(FrameType.MESSAGE)
    assert (message.stream_id, message.payload) == (stream_id, b"hi")
    writer.transport.abort()
    writer.close()
    close = await client.wait_for(FrameType.CLOSE)
    assert close.stream_id == stream_id
    assert int.from_bytes(close.payload[:2], "big") == 1006


async def test_a_websocket_close_passes_both_ways_with_its_code(
    relay: Relay, client: RawClient
) -> None:
    reader, writer, stream_id = await open_websocket(relay, client)
    await client.send(raw_frame(FrameType.MESSAGE, Flags.TEXT, stream_id, b"from the app"))
    assert await reader.readexactly(14) == b"\x81\x0cfrom the app"  # unmasked, server side
    await client.send(raw_frame(FrameType.CLOSE, 0, stream_id, b"\x0f\xa1bye"))  # 4001
    assert await reader.readexactly(7) == b"\x88\x05\x0f\xa1bye"
    writer.write(b"\x88\x82\x00\x00\x00\x00\x0f\xa1")  # the visitor's close back, 4001
    close = await client.wait_for(FrameType.CLOSE)
    assert int.from_bytes(close.payload[:2], "big") == 4001
    assert await reader.read() == b""  # then the relay closes the connection
    writer.close()


@pytest.fixture
async def quick_relay() -> AsyncIterator[Relay]:
    """A relay with short deadlines: 1 s for heads, 1.5 s of silence on a connection."""
    server = Relay(RelayConfig(port=0, header_timeout_s=1, idle_timeout_s=1.5))
    await server.start()
    try:
        yield server
    finally:
        await server.shutdown(grace_s=0.1)


async def test_a_quiet_keep_alive_connection_closes_after_the_idle_timeout(
    quick_relay: Relay,
) -> None:
    client = await RawClient.connect(quick_relay.port, hello=hello_message())
    reader, writer = await asyncio.open_connection("127.0.0.1", quick_relay.port)
    try:
        writer.write(f"GET /a HTTP/1.1\r\nHost: {host_of(quick_relay, client)}\r\n\r\n".encode())
        await answer(client)
        assert (await reader.readuntil(b"ok")).startswith(b"HTTP/1.1 200 ")
        started = asyncio.get_running_loop().time()
        assert await asyncio.wait_for(reader.read(), 10) == b""
        quiet = asyncio.get_running_loop().time() - started
        # The idle timeout, not the (shorter) head deadline, applies between requests.
        assert 1.3 <= quiet < 4, quiet
    finally:
        writer.close()
        await client.close()


async def test_a_later_request_head_has_its_own_deadline(quick_relay: Relay) -> None:
    client = await RawClient.connect(quick_relay.port, hello=hello_message())
    host = host_of(quick_relay, client)
    reader, writer = await asyncio.open_connection("127.0.0.1", quick_relay.port)
    try:
        writer.write(f"GET /a HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        await answer(client)
        await reader.readuntil(b"ok")
        await asyncio.sleep(0.8)  # idle, within the idle timeout
        writer.write(f"GET /b HTTP/1.1\r\nHost: {host}\r\n".encode())  # never finished
        started = asyncio.get_running_loop().time()
        assert await asyncio.wait_for(reader.read(), 10) == b""
        took = asyncio.get_running_loop().time() - started
        assert 0.8 <= took < 3, took  # the head deadline, counted from its first byte
    finally:
        writer.close()
        await client.close()
