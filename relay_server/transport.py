"""The relay's side of a tunnel's WebSocket, as a protocol MessageTransport."""

from __future__ import annotations

import asyncio
import contextlib
from typing import cast

from aiohttp import ClientWebSocketResponse, WSMsgType, web
from aiohttp.abc import AbstractStreamWriter

from tunnel_client.protocol.errors import RemoteProtocolError
from tunnel_client.protocol.wsframes import OP_BINARY, frame_head

__all__ = ["AiohttpTransport", "DirectAiohttpTransport"]


class AiohttpTransport:
    """Adapts an aiohttp WebSocket, server or client end, to ``MessageTransport``."""

    def __init__(self, ws: web.WebSocketResponse | ClientWebSocketResponse) -> None:
        self.ws = ws

    async def send(self, message: bytes) -> None:
        await self.ws.send_bytes(message)

    async def recv(self) -> bytes | None:
        msg = await self.ws.receive()
        if msg.type is WSMsgType.BINARY:
            return msg.data  # type: ignore[no-any-return]
        if msg.type is WSMsgType.TEXT:
            # The protocol is binary only: a text message is a broken client.
            raise RemoteProtocolError("text message on the tunnel: the protocol is binary only")
        return None  # closed, or a transport error: the session ends either way

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.ws.close()


class DirectAiohttpTransport(AiohttpTransport):
    """The server end of an uncompressed tunnel WebSocket, also a ``DirectTransport``.

    Binary messages are framed here and written straight to the connection, from the
    session's callback: awaiting aiohttp's ``send_bytes`` took a task wake-up per batch
    of frames (bench/run.py --profile). A server's frames are not masked and ours are
    never compressed, so a frame is its head and the message. Close frames and PONGs
    still go through aiohttp, whole, so nothing interleaves inside a frame.
    """

    def __init__(self, ws: web.WebSocketResponse, writer: AbstractStreamWriter) -> None:
        super().__init__(ws)
        self._writer = writer
        transport = getattr(writer, "transport", None)
        if transport is None:
            raise ConnectionError("the tunnel connection is closed")
        self._transport = cast(asyncio.Transport, transport)

    def send_nowait(self, message: bytes) -> None:
        if self.ws.closed or self._transport.is_closing():
            raise ConnectionError("the tunnel connection is closed")
        self._transport.writelines((frame_head(OP_BINARY, len(message)), message))

    def buffered(self) -> int:
        return self._transport.get_write_buffer_size()

    async def drain(self) -> None:
        if self._transport.is_closing():
            raise ConnectionError("the tunnel connection is closed")
        await self._writer.drain()
