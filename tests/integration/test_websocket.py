"""WebSockets through the tunnel, message by message, compared with the origin's own /ws.

Each test runs twice: straight to the origin and through the link, with the same Host
header, so every assertion states what the origin does and that the tunnel keeps it.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import WSMsgType

from tests.integration.conftest import Link

pytestmark = pytest.mark.integration

MIB = 1 << 20


@pytest.fixture(params=["direct", "tunnel"])
def port(request: pytest.FixtureRequest, link: Link) -> int:
    """Where the visitor connects: the origin itself, or the relay."""
    return link.origin.port if request.param == "direct" else link.port


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


@contextlib.asynccontextmanager
async def _connect(
    session: aiohttp.ClientSession,
    link: Link,
    port: int,
    path: str = "/ws",
    protocols: tuple[str, ...] = (),
) -> AsyncIterator[aiohttp.ClientWebSocketResponse]:
    async with session.ws_connect(
        f"http://127.0.0.1:{port}{path}",
        headers={"Host": link.host},
        protocols=protocols,
        max_msg_size=16 * MIB,
    ) as ws:
        yield ws


async def test_text_and_binary_messages_echo(
    session: aiohttp.ClientSession, link: Link, port: int
) -> None:
    async with _connect(session, link, port) as ws:
        await ws.send_str("hello")
        assert (await ws.receive()).data == "hello"
        await ws.send_str("ünïcödé ✓ and an emoji 🚇")
        message = await ws.receive()
        assert (message.type, message.data) == (WSMsgType.TEXT, "ünïcödé ✓ and an emoji 🚇")
        await ws.send_bytes(b"\x00\xff binary \x80")
        message = await ws.receive()
        assert (message.type, message.data) == (WSMsgType.BINARY, b"\x00\xff binary \x80")
        await ws.send_bytes(b"")
        message = await ws.receive()
        assert (message.type, message.data) == (WSMsgType.BINARY, b"")


@pytest.mark.parametrize("size", [MIB, 3 * MIB])
async def test_a_message_larger_than_the_stream_window_arrives_whole(
    session: aiohttp.ClientSession, link: Link, port: int, size: int
) -> None:
    payload = os.urandom(size)
    async with _connect(session, link, port) as ws:
        await ws.send_bytes(payload)
        message = await ws.receive()
        assert message.type is WSMsgType.BINARY
        assert len(message.data) == size
        assert message.data == payload


async def test_many_messages_arrive_in_order(
    session: aiohttp.ClientSession, link: Link, port: int
) -> None:
    count = 500
    async with _connect(session, link, port) as ws:
        # All sent before any is read: ordering cannot come from lock-step.
        for i in range(count):
            if i % 2:
                await ws.send_bytes(i.to_bytes(4, "big") * (i % 50 + 1))
            else:
                await ws.send_str(f"message {i}")
        for i in range(count):
            message = await ws.receive()
            if i % 2:
                assert (message.type, message.data) == (
                    WSMsgType.BINARY,
                    i.to_bytes(4, "big") * (i % 50 + 1),
                )
            else:
                assert (message.type, message.data) == (WSMsgType.TEXT, f"message {i}")


@pytest.mark.parametrize(
    ("offered", "chosen"),
    [(("chat",), "chat"), (("superchat", "chat"), "superchat"), (("other",), None)],
)
async def test_the_subprotocol_is_negotiated_with_the_origin(
    session: aiohttp.ClientSession,
    link: Link,
    port: int,
    offered: tuple[str, ...],
    chosen: str | None,
) -> None:
    async with _connect(session, link, port, protocols=offered) as ws:
        assert ws.protocol == chosen
        await ws.send_str("still works")
        assert (await ws.receive()).data == "still works"


async def test_a_close_code_chosen_by_the_origin_reaches_the_visitor(
    session: aiohttp.ClientSession, link: Link, port: int
) -> None:
    async with _connect(session, link, port) as ws:
        await ws.send_str("close:4001")
        message = await ws.receive()
        assert message.type is WSMsgType.CLOSE
        assert message.data == 4001
        assert message.extra == "asked to close"
        assert (await ws.receive()).type is WSMsgType.CLOSED
        assert ws.close_code == 4001


async def test_a_close_by_the_visitor_reaches_the_origin(
    session: aiohttp.ClientSession, link: Link, port: int
) -> None:
    key = uuid.uuid4().hex
    async with _connect(session, link, port, path=f"/ws?id={key}") as ws:
        await ws.send_str("before closing")
        assert (await ws.receive()).data == "before closing"
        await ws.close(code=4002, message=b"visitor leaves")
    # The origin records how its end of that WebSocket ended (it waits until it did).
    async with session.get(f"{link.origin.url}/ws/closed?id={key}") as response:
        assert response.status == 200
        assert await response.json() == {"code": 4002, "ended": True}
