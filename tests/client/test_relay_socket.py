"""The client's end of the tunnel WebSocket (tunnel_client/relay_socket.py) against a
real WebSocket server on 127.0.0.1 (websockets' own), frame by frame.

Like a relay, each server speaks only after the client's first message (the HELLO): the
socket takes the connection over from websockets right after the opening handshake."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import websockets
from websockets.asyncio.server import ServerConnection, serve

from tunnel_client.protocol.errors import RemoteProtocolError
from tunnel_client.relay_socket import RelaySocket

Script = Callable[[ServerConnection], Awaitable[None]]


@contextlib.asynccontextmanager
async def relay_socket(script: Script) -> AsyncIterator[RelaySocket]:
    """A RelaySocket connected to a server that runs ``script`` once it heard hello."""

    async def after_hello(ws: ServerConnection) -> None:
        assert await ws.recv() == b"hello"
        await script(ws)

    async with serve(after_hello, "127.0.0.1", 0, compression=None) as server:
        port = server.sockets[0].getsockname()[1]
        ws = await websockets.connect(f"ws://127.0.0.1:{port}", compression=None)
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
