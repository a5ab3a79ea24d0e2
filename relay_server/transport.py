"""The relay's side of a tunnel's WebSocket, as a protocol MessageTransport."""

from __future__ import annotations

import contextlib

from aiohttp import ClientWebSocketResponse, WSMsgType, web

from tunnel_client.protocol.errors import RemoteProtocolError

__all__ = ["AiohttpTransport"]


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
