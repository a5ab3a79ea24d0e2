"""The client's end of the tunnel WebSocket (tunnel_client/relay_socket.py) against a
real WebSocket server on 127.0.0.1 (websockets' own), frame by frame.

Like a relay, each server speaks only after the client's first message (the HELLO): the
socket takes the connection over from websockets right after the opening handshake."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import websockets
from websockets.asyncio.server import ServerConnection, serve

from tunnel_client.protocol.errors import RemoteProtocolError
from tunnel_client.relay_socket import RelaySocket

Script = Callable[[ServerConnection], Awaitable[None]]
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


@contextlib.asynccontextmanager
async def relay_socket(script: Script, max_size: int = 1 << 20) -> AsyncIterator[RelaySocket]:
    """A RelaySocket connected to a server that runs ``script`` once it heard hello."""

    async def after_hello(ws: ServerConnection) -> None:
        assert await ws.recv() == b"hello"
        await script(ws)

    async with serve(after_hello, "127.0.0.1", 0, compression=None) as server:
        port = server.sockets[0].getsockname()[1]
        ws = await websockets.connect(f"ws://127.0.0.1:{port}", compression=None, max_size=max_size)
        sock = RelaySocket(ws)
        try:
            await sock.send(b"hello")
            yield sock
        finally:
            await sock.close()


async def test_messages_arrive_whole_and_pings_are_answered() -> None:
    async def script(ws: ServerConnection) -> None:
        await ws.ping(b"are you there")  # answered by the socket, not the session
        await ws.send(b"one")
        await ws.send([b"tw", b"o"])  # fragmented: one message
        latency = await ws.ping()
        await asyncio.wait_for(latency, 5)
        await ws.send(b"pong seen")
        await ws.wait_closed()

    async with relay_socket(script) as sock:
        got = [await asyncio.wait_for(sock.recv(), 5) for _ in range(3)]
    assert got == [b"one", b"two", b"pong seen"]


async def test_pushed_messages_and_the_close() -> None:
    async def script(ws: ServerConnection) -> None:
        for i in range(3):
            await ws.send(b"m%d" % i)
        await ws.close(1000, "bye")

    async with relay_socket(script) as sock:
        await asyncio.sleep(0)  # messages may already wait in the inbox: they go first
        messages: list[bytes | str] = []
        closed = asyncio.Event()
        sock.receive_with(messages.append, closed.set)
        await asyncio.wait_for(closed.wait(), 5)
        assert messages == [b"m0", b"m1", b"m2"]
        assert await sock.recv() is None
        with pytest.raises(ConnectionError):
            sock.send_nowait(b"too late")


async def test_a_text_message_is_a_protocol_error() -> None:
    async def script(ws: ServerConnection) -> None:
        await ws.send("text")
        await ws.wait_closed()

    async with relay_socket(script) as sock:
        with pytest.raises(RemoteProtocolError):
            await asyncio.wait_for(sock.recv(), 5)


async def test_sends_reach_the_server_in_order_and_drain_waits_for_room() -> None:
    received: asyncio.Future[list[bytes]] = asyncio.get_running_loop().create_future()
    count = 200
    size = 64 * 1024

    async def script(ws: ServerConnection) -> None:
        await asyncio.sleep(0.2)  # not reading yet: the client's buffer fills
        got = [await ws.recv() for _ in range(count)]
        received.set_result([m for m in got if isinstance(m, bytes)])
        await ws.wait_closed()

    async with relay_socket(script) as sock:
        peak = 0
        for i in range(count):
            sock.send_nowait(i.to_bytes(4, "big") * (size // 4))
            peak = max(peak, sock.buffered())
            await sock.drain()
        got = await asyncio.wait_for(received, 30)
    assert [int.from_bytes(m[:4], "big") for m in got] == list(range(count))
    assert all(len(m) == size for m in got)
    assert peak < 4 << 20  # drain() held the writer back: not all 12.5 MiB queued


async def test_close_ends_the_connection_even_when_the_server_never_answers() -> None:
    server_saw: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()

    async def script(ws: ServerConnection) -> None:
        try:
            await ws.wait_closed()
        finally:
            server_saw.set_result(ws.close_code)

    async with relay_socket(script) as sock:
        pass  # close() on the way out
    assert await asyncio.wait_for(server_saw, 5) == 1000
    assert await sock.recv() is None


async def test_a_frame_over_the_limit_ends_the_connection_with_1009() -> None:
    """A relay that breaks a rule hears why (the protocol's close) and the session learns
    at once that nothing more will come, without waiting for a keepalive timeout."""
    server_saw: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()

    async def script(ws: ServerConnection) -> None:
        await ws.send(b"fine")
        await ws.send(b"x" * 4096)
        try:
            await ws.wait_closed()
        finally:
            server_saw.set_result(ws.close_code)

    async with relay_socket(script, max_size=1024) as sock:
        assert await asyncio.wait_for(sock.recv(), 5) == b"fine"
        assert await asyncio.wait_for(sock.recv(), 5) is None
        with pytest.raises(ConnectionError):
            sock.send_nowait(b"after the close")
    assert await asyncio.wait_for(server_saw, 5) == 1009


async def test_a_relay_that_breaks_a_rule_and_keeps_the_connection_open_is_cut_off() -> None:
    """A hostile relay (raw TCP here): after its oversized frame it neither closes nor
    answers our close. The socket reports the end at once and drops the connection
    after the closing grace period, so the client reconnects instead of hanging."""
    seen: dict[str, object] = {}
    ended = asyncio.Event()

    async def hostile(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        key = next(
            line.split(b":", 1)[1].strip()
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"sec-websocket-key:")
        )
        accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest())
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
        )
        await reader.readexactly(2 + 4 + len(b"hello"))  # the client's masked HELLO
        writer.write(bytes((0x82, 126)) + (4096).to_bytes(2, "big") + b"x" * 4096)
        await writer.drain()
        first, length = await reader.readexactly(2)  # a masked close: code and reason
        assert first == 0x88 and length & 0x80 and (length & 0x7F) < 126
        mask = await reader.readexactly(4)
        payload = await reader.readexactly(length & 0x7F)
        code = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))[:2]
        seen["code"] = int.from_bytes(code, "big")
        seen["eof"] = await reader.read() == b""  # never answered: the client cuts it
        ended.set()
        writer.close()

    server = await asyncio.start_server(hostile, "127.0.0.1", 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        ws = await websockets.connect(f"ws://127.0.0.1:{port}", compression=None, max_size=1024)
        sock = RelaySocket(ws)
        await sock.send(b"hello")
        assert await asyncio.wait_for(sock.recv(), 5) is None
        await asyncio.wait_for(ended.wait(), 10)
    assert seen == {"code": 1009, "eof": True}
