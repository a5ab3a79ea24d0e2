"""The tunnel's WebSocket once it is open: websockets' sans-I/O protocol on our own
asyncio Protocol, so that messages reach the session in the socket's callback.

``websockets.connect`` does the opening handshake (TLS, proxies, redirects refused,
errors described); the connection it returns is then taken over: its transport is
handed to a :class:`RelaySocket`, which feeds the same sans-I/O ``ClientProtocol``
(already OPEN) and passes each binary message on as it is parsed. Going through the
library's asyncio connection instead cost a task wake-up per message each way (its
``recv()`` and ``send()`` are coroutines); see ``protocol.aio.DirectTransport`` for
what going without them measured.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable

from websockets.asyncio.client import ClientConnection
from websockets.frames import Frame, Opcode
from websockets.protocol import Protocol as WebSocketProtocol
from websockets.protocol import State

from .protocol.errors import RemoteProtocolError

__all__ = ["CLOSE_TIMEOUT_S", "RelaySocket"]

CLOSE_TIMEOUT_S = 2.0
"""How long a closing handshake may take before the connection is dropped."""


class RelaySocket(asyncio.Protocol):
    """The client's end of the tunnel WebSocket: a protocol ``DirectTransport``."""

    def __init__(self, ws: ClientConnection) -> None:
        self._ws = ws  # kept: the handshake's response, and nothing of it is collected early
        self._protocol: WebSocketProtocol = ws.protocol
        self._transport = ws.transport
        self._loop = asyncio.get_running_loop()
        self._inbox: deque[bytes | str] = deque()
        self._arrived: asyncio.Future[None] | None = None
        self._on_message: Callable[[bytes | str], None] | None = None
        self._on_closed: Callable[[], None] | None = None
        self._fragments: list[bytes] = []
        self._fragment_text = False
        self._ended = False
        """No more messages will come (a close frame, EOF, or the connection is gone)."""
        self._lost = self._loop.create_future()
        self._close_timer: asyncio.TimerHandle | None = None
        self._paused = False
        self._resumed: asyncio.Future[None] | None = None
        self._transport.set_protocol(self)

    # -- asyncio.Protocol ----------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        protocol = self._protocol
        protocol.receive_data(data)
        events = protocol.events_received()
        self._write_out()  # PONGs, the reply to a close, or the close of a broken rule
        for event in events:
            if isinstance(event, Frame):
                self._on_frame(event)
        if protocol.state is not State.OPEN:
            # A close came, or the relay broke a rule (a frame over the size limit, bad
            # UTF-8) and the protocol answered with a close: no message will follow. The
            # relay should now close TCP; if it does not, we do, after a grace period.
            self._end()
            if self._close_timer is None and not self._transport.is_closing():
                self._close_timer = self._loop.call_later(CLOSE_TIMEOUT_S, self._transport.abort)

    def eof_received(self) -> bool | None:
        self._protocol.receive_eof()
        self._end()
        return None  # let the transport close

    def connection_lost(self, exc: Exception | None) -> None:
        self._end()
        if self._close_timer is not None:
            self._close_timer.cancel()
        if not self._lost.done():
            self._lost.set_result(None)
        self._paused = False
        if self._resumed is not None and not self._resumed.done():
            self._resumed.set_exception(ConnectionError("connection lost"))
            self._resumed.exception()  # nobody may be waiting: don't warn

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        if self._resumed is not None and not self._resumed.done():
            self._resumed.set_result(None)

    # -- receiving -----------------------------------------------------------------------

    def _on_frame(self, frame: Frame) -> None:
        opcode = frame.opcode
        data = bytes(frame.data)  # the very object when the parser made bytes (it does)
        if opcode is Opcode.BINARY or opcode is Opcode.TEXT:
            text = opcode is Opcode.TEXT
            if frame.fin:
                self._deliver(data.decode("utf-8", "replace") if text else data)
            else:
                self._fragment_text = text
                self._fragments = [data]
        elif opcode is Opcode.CONT:
            self._fragments.append(data)
            if frame.fin:
                data = b"".join(self._fragments)
                self._fragments = []
                self._deliver(data.decode("utf-8", "replace") if self._fragment_text else data)
        elif opcode is Opcode.CLOSE:
            self._end()  # the protocol queued our close in reply; the relay closes TCP

    def _deliver(self, message: bytes | str) -> None:
        if self._ended:
            return
        if self._on_message is not None:
            self._on_message(message)
            return
        self._inbox.append(message)
        if self._arrived is not None and not self._arrived.done():
            self._arrived.set_result(None)

    def _end(self) -> None:
        if self._ended:
            return
        self._ended = True
        if self._arrived is not None and not self._arrived.done():
            self._arrived.set_result(None)
        if self._on_closed is not None:
            self._on_closed()

    def receive_with(
        self, on_message: Callable[[bytes | str], None], on_closed: Callable[[], None]
    ) -> None:
        """Pass each message to ``on_message`` as it arrives (those already here first)."""
        self._on_message, self._on_closed = on_message, on_closed
        while self._inbox:
            on_message(self._inbox.popleft())
        if self._ended:
            on_closed()

    async def recv(self) -> bytes | None:
        """The next message, or None once the connection is closed.

        Raises:
            RemoteProtocolError: for a text message (the protocol is binary only).
        """
        while not self._inbox:
            if self._ended:
                return None
            self._arrived = self._loop.create_future()
            await self._arrived
        message = self._inbox.popleft()
        if isinstance(message, str):
            raise RemoteProtocolError("text message on the tunnel: the protocol is binary only")
        return message

    # -- sending -------------------------------------------------------------------------

    def _write_out(self) -> None:
        transport = self._transport
        for data in self._protocol.data_to_send():
            if data:
                transport.write(data)
            elif transport.can_write_eof():  # the protocol's cue to half-close
                with contextlib.suppress(Exception):  # uvloop raises RuntimeError late
                    transport.write_eof()
            else:
                transport.close()

    def send_nowait(self, message: bytes) -> None:
        if self._protocol.state is not State.OPEN or self._transport.is_closing():
            raise ConnectionError("the tunnel connection is closed")
        self._protocol.send_binary(message)
        self._write_out()

    def buffered(self) -> int:
        return self._transport.get_write_buffer_size()

    async def drain(self) -> None:
        if self._lost.done():
            raise ConnectionError("connection lost")
        if self._paused:
            self._resumed = self._loop.create_future()
            await self._resumed

    async def send(self, message: bytes) -> None:
        self.send_nowait(message)
        await self.drain()

    def abort(self) -> None:
        """Drop the connection at once, without a closing handshake."""
        self._end()
        self._transport.abort()

    async def close(self) -> None:
        """Send a close frame, give the relay a moment to close back, then drop the
        connection either way (on a dead path the closing handshake never completes)."""
        try:
            if self._protocol.state is State.OPEN and not self._transport.is_closing():
                self._protocol.send_close(1000)
                self._write_out()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(self._lost), CLOSE_TIMEOUT_S)
        finally:
            self.abort()
