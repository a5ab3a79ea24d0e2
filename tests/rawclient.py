"""A raw tunnel client for tests: speaks our frames over ``websockets``, legal or not.

:class:`RawClient` connects to a relay's ``/_tunnel``, optionally says HELLO, and then
sends whatever bytes (or text) a test hands it, frames built by :func:`raw_frame`, which
packs the header fields as given without checking them. What comes back is decoded
with the real decoder, so a relay that sends an illegal frame fails the test too.

:meth:`RawClient.outcome` says how the relay took what was sent: still serving the
session (it answered a probe PING), closed it with a GOAWAY (which code, which reason),
or closed the connection without one.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from dataclasses import dataclass

import websockets
from websockets.asyncio.client import ClientConnection, connect

from tunnel_client.protocol.errors import GoAwayCode
from tunnel_client.protocol.frames import HEADER, Flags, Frame, FrameType, decode_frames
from tunnel_client.protocol.handshake import Hello, Welcome
from tunnel_client.protocol.window import MIN_WINDOW

__all__ = [
    "Alive",
    "Closed",
    "GoAway",
    "Outcome",
    "RawClient",
    "hello_message",
    "raw_frame",
]


def raw_frame(type_: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    """A frame's bytes exactly as given: no rule of the protocol is checked."""
    return HEADER.pack(type_, flags, stream_id, len(payload)) + payload


def hello_message(*, window: int = MIN_WINDOW, max_streams: int = 64, **fields: object) -> bytes:
    """A valid HELLO message (a fresh client secret each time)."""
    return Hello(
        window=window,
        max_streams=max_streams,
        client_secret=secrets.token_urlsafe(24),
        agent="hostile-test",
        **fields,  # type: ignore[arg-type]
    ).encode()


@dataclass(frozen=True)
class Alive:
    """The relay still serves the session: it answered the probe PING."""


@dataclass(frozen=True)
class GoAway:
    """The relay ended the session with a GOAWAY frame."""

    code: GoAwayCode
    reason: str


@dataclass(frozen=True)
class Closed:
    """The connection closed without a GOAWAY from the relay."""

    code: int | None


Outcome = Alive | GoAway | Closed


class RawClient:
    """One WebSocket to ``/_tunnel`` driven by hand."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.welcome: Welcome | None = None
        self.received: list[Frame] = []
        """Every frame the relay sent, in order."""
        self._unread = 0

    @classmethod
    async def connect(
        cls, relay_port: int, *, hello: bytes | None = None, max_queue: int = 16
    ) -> RawClient:
        """Open the WebSocket; with ``hello``, send it and wait for the WELCOME.

        ``max_queue``: messages buffered before ``websockets`` stops reading the socket
        (1 and never calling :meth:`next_frames`: a client that does not read).
        """
        ws = await connect(
            f"ws://127.0.0.1:{relay_port}/_tunnel",
            compression=None,
            max_size=None,
            max_queue=max_queue,
            open_timeout=20,
            close_timeout=2,
            ping_interval=None,
        )
        client = cls(ws)
        if hello is not None:
            try:
                await ws.send(hello)
                frames = await client.next_frames(timeout=20)
                assert frames is not None, "the relay closed instead of answering HELLO"
                first = frames[0]
                assert first.type is FrameType.WELCOME, f"HELLO answered with {first}"
                client.welcome = Welcome.decode(first.payload)
            except BaseException:
                await client.close()
                raise
        return client

    @property
    def subdomain(self) -> str:
        assert self.welcome is not None
        return self.welcome.subdomain

    async def send(self, message: bytes | str) -> bool:
        """Send one message; False if the relay had already closed the connection."""
        try:
            await self.ws.send(message)
        except websockets.ConnectionClosed:
            return False
        return True

    async def next_frames(self, timeout: float) -> list[Frame] | None:
        """The frames of the relay's next message, or None once the connection closed."""
        try:
            async with asyncio.timeout(timeout):
                message = await self.ws.recv()
        except websockets.ConnectionClosed:
            return None
        assert isinstance(message, bytes), f"the relay sent a text message: {message!r:.80}"
        frames = decode_frames(message)  # raises if the relay broke the protocol
        self.received.extend(frames)
        return frames

    async def wait_for(self, type_: FrameType, timeout: float = 20) -> Frame:
        """The next frame of one type not yet taken (every frame stays in :attr:`received`)."""
        async with asyncio.timeout(timeout):
            while True:
                while self._unread < len(self.received):
                    frame = self.received[self._unread]
                    self._unread += 1
                    if frame.type is type_:
                        return frame
                frames = await self.next_frames(timeout)
                assert frames is not None, f"connection closed while waiting for {type_.name}"

    async def outcome(self, timeout: float = 30) -> Outcome:
        """Probe the session with a PING and report how the relay stands."""
        probe = b"PRB" + os.urandom(5)
        await self.send(raw_frame(FrameType.PING, 0, 0, probe))
        try:
            async with asyncio.timeout(timeout):
                while True:
                    frames = await self.next_frames(timeout)
                    if frames is None:
                        return Closed(self.ws.close_code)
                    for frame in frames:
                        if frame.type is FrameType.GOAWAY:
                            code = GoAwayCode(int.from_bytes(frame.payload[:4], "big"))
                            return GoAway(code, frame.payload[4:].decode("utf-8", "replace"))
                        if (
                            frame.type is FrameType.PING
                            and frame.flags & Flags.ACK
                            and frame.payload == probe
                        ):
                            return Alive()
        except TimeoutError:
            raise AssertionError(
                f"the relay neither answered the probe nor closed within {timeout} s"
            ) from None

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ws.close(), 3)
