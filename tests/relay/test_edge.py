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
