"""The relay's side of a tunnel's WebSocket, as a protocol MessageTransport."""

from __future__ import annotations

import contextlib

from aiohttp import WSMsgType, web

from tunnel_client.protocol.errors import RemoteProtocolError

__all__ = ["AiohttpTransport"]


class AiohttpTransport:
    """Adapts an aiohttp :class:`web.WebSocketResponse` to ``MessageTransport``."""

    def __init__(self, ws: web.WebSocketResponse) -> None:
        self.ws = ws
        self.close_reason: str | None = None

    async def send(self, message: bytes) -> None:
        await self.ws.send_bytes(message)

    async def recv(self) -> bytes | None:
        msg = await self.ws.receive()
        if msg.type is WSMsgType.BINARY:
            return msg.data  # type: ignore[no-any-return]
        if msg.type is WSMsgType.TEXT:
            # The protocol is binary only: a text message is a broken client.
            self.close_reason = "text message on the tunnel"
            raise RemoteProtocolError("text message on the tunnel: the protocol is binary only")
        if msg.type is WSMsgType.ERROR:
            self.close_reason = f"WebSocket error: {self.ws.exception()}"
        return None

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.ws.close()
