"""The asyncio driver of the protocol: a :class:`Session` of :class:`Stream` objects.

Both sides run the same driver over a :class:`MessageTransport`: the relay wraps an
aiohttp WebSocket, the client a ``websockets`` connection. This module imports neither.

Three tasks run per session:

* the **read loop** feeds each transport message to the :class:`~.mux.Mux` and
  dispatches its events. It never awaits a stream's consumer: received bytes go to the
  stream's buffer, which the flow-control window bounds, so one slow stream cannot block
  the others (no head-of-line blocking). On a :class:`PushTransport` (the client's)
  there is no read loop: the transport's own callback hands each message over and the
  session dispatches it there, the same way.
* the **write loop** sends what the mux queued. Writers wait for it only when more than
  :data:`HIGH_WATER_BYTES` is queued, so TCP backpressure reaches them without stalling
  the read loop (which only ever queues small control frames). On a
  :class:`DirectTransport` (both real ones) a callback at the end of the loop turn
  sends instead, and the write loop only waits for a full transport to drain.
* the **keepalive loop** PINGs a quiet session and ends one that stays silent longer
  than the keepalive timeout (a half-open connection).

A side that stood still (a process stopped with SIGSTOP, a laptop that slept) finds,
when it wakes, messages its peer sent long ago, and a peer that has probably given up on
it and answered those requests' visitors already. Running them now could run a request
twice, so a session that sees its own loop stood still longer than a third of the
keepalive timeout ends at once (KEEPALIVE_TIMEOUT) without dispatching anything more.
The bound: the peer PINGs after one keepalive interval of silence and this side answers
at once, so before the stall this side had sent something within 1.5 intervals; a stall
of at most one interval (a third of the timeout) keeps the peer's silence under 2.5
intervals, short of the 3 intervals after which it gives up.

:func:`splice` serves a stream this side was asked to serve by opening the same request
on another session and pumping both ways, stream to stream: how one relay node hands
a visitor's request to the node that holds the link. Both streams keep their windows,
so the splice buffers at most a window per direction.

:func:`bridge_codec` joins an upgraded stream to a WebSocket spoken on a raw byte
connection (a :class:`ByteChannel`) through the sans-I/O :class:`~.wsframes.WebSocketCodec`,
message by message: the client with the local server's connection (``mask=True``), the
relay with the visitor's (``mask=False``). :func:`bridge_websocket` does the same with a
WebSocket object of a library (:class:`WebSocketEnd`, which aiohttp's server and client
WebSockets both satisfy), so this module still imports no WebSocket library.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

from .errors import (
    GoAwayCode,
    HeadTooLarge,
    InvalidState,
    RemoteProtocolError,
    ResetCode,
    SessionClosed,
    StreamReset,
)
from .events import (
    CloseReceived,
    DataReceived,
    Event,
    MessageReceived,
    PingAcknowledged,
    ReplyReceived,
    ResetReceived,
    SessionEnded,
    StreamOpened,
    WindowOpened,
)
from .heads import RequestHead, ResponseHead
from .mux import Bytes, Mux
from .wsframes import Message, WebSocketCodec

__all__ = [
    "HIGH_WATER_BYTES",
    "WS_CLOSE_GRACE_S",
    "ByteChannel",
    "DirectTransport",
    "MessageTransport",
    "PushTransport",
    "Session",
    "Stream",
    "WebSocketClosed",
    "WebSocketEnd",
    "WebSocketMessage",
    "bridge_codec",
    "bridge_websocket",
    "splice",
]

HIGH_WATER_BYTES = 1 << 20
"""Writers pause while more than 1 MiB waits to be sent on the transport."""

LOW_WATER_BYTES = 256 * 1024
DEFAULT_MAX_WS_MESSAGE = 16 << 20
CLOSE_GRACE_S = 5.0
WS_CLOSE_GRACE_S = 5.0
"""Once one end of a bridged WebSocket closed, the other has this long to close back."""

logger = logging.getLogger(__name__)


class MessageTransport(Protocol):
    """A message-oriented, ordered, reliable connection (a binary WebSocket)."""

    async def send(self, message: bytes) -> None:
        """Send one binary message; may wait while the connection is congested."""

    async def recv(self) -> bytes | None:
        """The next binary message, or None once the connection is closed.

        Raises:
            RemoteProtocolError: if the peer sent something no message may be (text).
        """

    async def close(self) -> None:
        """Close the connection; must not raise."""


class DirectTransport(MessageTransport, Protocol):
    """A :class:`MessageTransport` that also sends without a task.

    A session on one sends from a callback at the end of the loop turn in which frames
    were queued (every frame of that turn in one write), not from a task woken per
    batch; on a :class:`PushTransport` it also handles each message in the callback that
    received it. With these and the session's ``serve_now``, at one connection the
    client spent 253-260 us per request instead of 290-320 and the relay 182-187 instead
    of 196-212 (bench/run.py --cases small1, interleaved pairs); at 64 connections,
    where batching already shared the task hops out, the change was within the noise.
    """

    def send_nowait(self, message: bytes) -> None:
        """Queue one binary message for the peer now.

        Raises:
            ConnectionError: if the connection is closing or closed.
        """

    def buffered(self) -> int:
        """Bytes given to :meth:`send_nowait` that are not on the wire yet."""

    async def drain(self) -> None:
        """Wait until the connection takes more (its buffer fell to its low mark).

        Raises:
            ConnectionError: if the connection was lost meanwhile.
        """


class PushTransport(DirectTransport, Protocol):
    """A :class:`DirectTransport` that hands over each message as it arrives."""

    def receive_with(
        self, on_message: Callable[[bytes | str], None], on_closed: Callable[[], None]
    ) -> None:
        """From now on call ``on_message`` with each message as it arrives (``str`` for
        a text message, which the protocol does not allow) and ``on_closed`` once, when
        the connection is closed; messages that arrived before are passed on first."""


@dataclass(frozen=True, slots=True)
class WebSocketMessage:
    """One whole WebSocket message relayed on an upgraded stream."""

    data: bytes
    text: bool
    unacknowledged: int = 0


@dataclass(frozen=True, slots=True)
class WebSocketClosed:
    """The peer's side of a relayed WebSocket closed."""

    code: int
    reason: str


class Stream:
    """One request/response exchange (or one relayed WebSocket) within a session."""

    def __init__(self, session: Session, stream_id: int, request: RequestHead | None) -> None:
        self._session = session
        self._mux = session.mux
        self.id = stream_id
        self.request = request
        """(client) The request head the relay sent."""
        self._chunks: deque[bytes] = deque()
        # Futures made only when a task must wait (most streams never do), one task at
        # a time on each side: a reader, and a writer.
        self._read_waiter: asyncio.Future[None] | None = None
        self._write_waiter: asyncio.Future[None] | None = None
        self._eof = False
        self._error: StreamReset | SessionClosed | None = None
        self._write_error: StreamReset | SessionClosed | None = None
        self._reply: asyncio.Future[tuple[ResponseHead, bool]] | None = None
        self._messages: deque[WebSocketMessage | WebSocketClosed] = deque()
        self._partial: list[bytes] = []
        self._partial_size = 0
        self._partial_unacked = 0
        self._on_failure: Callable[[], None] | None = None
        self._response_callback: Callable[[], None] | None = None

    def __repr__(self) -> str:
        return f"<Stream {self.id}>"

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The session's event loop (cheaper to reach than ``asyncio.get_running_loop()``,
        which on Python 3.11 makes a getpid() system call)."""
        return self._session._loop

    @property
    def live(self) -> bool:
        """True until the stream ended in both directions or was reset."""
        return self._mux.is_live(self.id)

    @property
    def writable(self) -> bool:
        """True while our direction of the stream may still carry data."""
        return self._write_error is None and self._mux.can_send(self.id)

    @property
    def has_data(self) -> bool:
        """True when body bytes are already here: :meth:`read` returns them at once."""
        return bool(self._chunks)

    @property
    def peer_ended(self) -> bool:
        """True once the peer's whole body is here: :meth:`read` no longer waits."""
        return self._eof

    @property
    def error(self) -> StreamReset | SessionClosed | None:
        """Why the stream ended abnormally, if it did."""
        return self._error or self._write_error

    # -- reading ------------------------------------------------------------------------

    async def read(self) -> bytes:
        """The next chunk of the peer's body; ``b""`` once it ended.

        Raises:
            StreamReset: if the stream was reset.
            SessionClosed: if the session ended first.
        """
        while not self._chunks:
            if self._error is not None:
                raise self._error
            if self._eof:
                return b""
            await self._wait_readable()
        chunk = self._chunks.popleft()
        self._session.acknowledge(self.id, len(chunk))
        return chunk

    def read_nowait(self) -> bytes | None:
        """:meth:`read` without waiting: None when the next chunk is not here yet."""
        if not self._chunks:
            if self._error is not None:
                raise self._error
            return b"" if self._eof else None
        chunk = self._chunks.popleft()
        self._session.acknowledge(self.id, len(chunk))
        return chunk

    async def response(self) -> tuple[ResponseHead, bool]:
        """(relay) Wait for the client's response head; returns ``(head, ended)``."""
        if self._reply is None:
            raise InvalidState("only a stream the relay opened has a response")
        return await asyncio.shield(self._reply)

    def add_response_callback(self, callback: Callable[[], None]) -> None:
        """(relay) Call ``callback`` once the response head arrived or the stream failed;
        :meth:`response_nowait` then has the outcome. With :meth:`read_nowait`, this
        serves a response that arrives whole (most small ones) without a task.

        A head is announced right after the transport message that carried it was
        dispatched whole (so body bytes that came with it are readable), not a loop turn
        later; a failure, soon after it happened.
        """
        if self._reply is None:
            raise InvalidState("only a stream the relay opened has a response")
        if self._reply.done():
            self._session._loop.call_soon(callback)
        else:
            self._response_callback = callback

    def response_nowait(self) -> tuple[ResponseHead, bool]:
        """(relay) What :meth:`response` returns, once the response callback was called.

        Raises:
            StreamReset, SessionClosed: as :meth:`response` does.
            InvalidState: if the outcome is not known yet.
        """
        if self._reply is None or not self._reply.done():
            raise InvalidState("the response head has not arrived")
        return self._reply.result()

    async def receive_message(self) -> WebSocketMessage | WebSocketClosed:
        """The next whole WebSocket message of an upgraded stream, or its close."""
        while not self._messages:
            if self._error is not None:
                raise self._error
            await self._wait_readable()
        item = self._messages[0]
        if isinstance(item, WebSocketClosed):
            return item
        self._messages.popleft()
        acked = item.unacknowledged
        if not self._messages:
            acked += self._partial_unacked
            self._partial_unacked = 0
        self._session.acknowledge(self.id, acked)
        return item

    # -- writing ------------------------------------------------------------------------

    def _check_usable(self) -> None:
        if self._write_error is not None:
            raise self._write_error

    async def _await_credit(self) -> None:
        if self._mux.credit(self.id) == 0 and self._write_error is None:
            waiter = self._write_waiter = self._session._loop.create_future()
            try:
                await waiter
            finally:
                self._write_waiter = None
            self._check_usable()

    async def write(self, data: Bytes) -> None:
        """Send body bytes, waiting for credit (backpressure) as needed."""
        view = memoryview(data)
        while True:
            self._check_usable()
            taken = self._mux.send_data(self.id, view)
            self._session.flush()
            view = view[taken:]
            if not view:
                break
            await self._await_credit()
        await self._session.wait_writable()

    def write_nowait(self, data: Bytes, *, end: bool = False) -> int:
        """Send as much of ``data`` as credit allows now, without waiting; return how much.

        For callbacks that cannot await (a protocol's ``data_received``): what was not
        taken must be sent later with :meth:`write`. Nothing is taken while the session
        has more than :data:`HIGH_WATER_BYTES` queued for its transport. With ``end``,
        the stream ends with the last byte (in the same frame) once every byte was taken.
        """
        self._check_usable()
        session = self._session
        if data and session.congested:
            return 0
        mux = self._mux
        view = memoryview(data) if len(data) > mux.max_frame else data
        taken = 0
        while True:
            n = mux.send_data(self.id, view[taken:] if taken else view, end_stream=end)
            taken += n
            if n == 0 or taken == len(data):
                break
        if taken or end:
            session.flush()
            if end and taken == len(data):
                session.forget_if_done(self.id)
        return taken

    async def end(self) -> None:
        """End our direction of the stream (FIN)."""
        self._check_usable()
        self._mux.send_data(self.id, b"", end_stream=True)
        self._session.flush()
        self._session.forget_if_done(self.id)

    def reply(self, head: ResponseHead, *, end_stream: bool = False) -> None:
        """(client) Send the response head.

        Raises:
            HeadTooLarge: if the head is too large to send; the stream is unchanged
                (reset it to tell the relay).
        """
        self._check_usable()
        self._mux.send_reply(self.id, head, end_stream=end_stream)
        self._session.flush()
        self._session.forget_if_done(self.id)

    async def send_message(self, data: Bytes, *, text: bool) -> None:
        """Relay one whole WebSocket message, fragmenting it as credit allows."""
        view = memoryview(data)
        while True:
            self._check_usable()
            taken = self._mux.send_message_part(self.id, view, text=text, final=True)
            self._session.flush()
            view = view[taken:]
            if not view:
                break
            await self._await_credit()
        await self._session.wait_writable()

    def send_close(self, code: int, reason: str = "") -> None:
        """End our direction of an upgraded stream with a WebSocket close code."""
        self._check_usable()
        self._mux.send_close(self.id, code, reason)
        self._session.flush()
        self._session.forget_if_done(self.id)

    def reset(self, code: ResetCode = ResetCode.CANCEL, reason: str = "") -> None:
        """Abort the stream in both directions; later reads and writes raise StreamReset."""
        if self._write_error is not None:
            return
        self._mux.reset_stream(self.id, code, reason)
        self._session.flush()
        self._fail(StreamReset(code, reason or "reset by this side"))
        self._session.forget(self.id)

    # -- served from callbacks ----------------------------------------------------------

    def on_failure(self, callback: Callable[[], None]) -> None:
        """(client, a stream served without a task) Call ``callback`` once if the stream
        is reset (by either side) or its session ends: what cancelling the stream's task
        does for a stream that has one."""
        self._on_failure = callback

    def serve_later(self, handler: StreamHandler) -> None:
        """(client) Give a stream served from callbacks so far a task running
        ``handler(stream)``, owned by the session like one ``on_stream`` runs: cancelled
        if the stream is reset or the session ends, and the stream reset if it returns
        without finishing it."""
        self._session._spawn(self, handler)

    # -- called by the session ----------------------------------------------------------

    def _fail(self, error: StreamReset | SessionClosed) -> None:
        if self._write_error is None:
            self._write_error = error
        # A peer that already sent its whole body may reset only to say it wants no more
        # of ours: what it sent stays readable.
        if not self._eof and self._error is None:
            self._error = error
            self._chunks.clear()
        self._wake_reader()
        self._wake_writer()
        if self._reply is not None and not self._reply.done():
            self._reply.set_exception(error)
            self._reply.exception()  # nobody may be waiting: don't warn
            if self._response_callback is not None:
                callback, self._response_callback = self._response_callback, None
                self._session._loop.call_soon(callback)
        if self._on_failure is not None:
            on_failure, self._on_failure = self._on_failure, None
            on_failure()

    def _let_go(self) -> None:
        """The stream is over: its callbacks can no longer fire, so drop them. They are
        bound methods of whoever serves the stream, which holds the stream: kept, they
        would make a reference cycle per request, freed only by the cyclic collector."""
        self._on_failure = None
        self._response_callback = None

    def _on_data(self, data: bytes, end: bool) -> None:
        if data:
            self._chunks.append(data)
        if end:
            self._eof = True
        self._wake_reader()

    def _on_message(self, event: MessageReceived, max_size: int) -> None:
        self._partial.append(event.data)
        self._partial_size += len(event.data)
        if self._partial_size > max_size:
            self.reset(ResetCode.TOO_LARGE, f"WebSocket message over {max_size} bytes")
            return
        if not event.final:
            # Grant credit for fragments right away while the application keeps up, so a
            # message larger than the window can complete; when whole messages are
            # waiting, hold the credit back until they are taken.
            if self._messages:
                self._partial_unacked += len(event.data)
            else:
                self._session.acknowledge(self.id, len(event.data))
            return
        data = b"".join(self._partial)
        self._partial.clear()
        self._partial_size = 0
        unacked = self._partial_unacked + len(event.data)
        self._partial_unacked = 0
        self._messages.append(WebSocketMessage(data, event.text, unacked))
        self._wake_reader()

    async def _wait_readable(self) -> None:
        waiter = self._read_waiter = self._session._loop.create_future()
        try:
            await waiter
        finally:
            self._read_waiter = None

    def _wake_reader(self) -> None:
        waiter = self._read_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _wake_writer(self) -> None:
        waiter = self._write_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


StreamHandler = Callable[[Stream], Awaitable[None]]
StreamStarter = Callable[[Stream], bool]


class Session:
    """Drive a :class:`~.mux.Mux` over a :class:`MessageTransport`.

    Args:
        transport: the connection, after the handshake.
        mux: the session's multiplexer.
        on_stream: (client) called in a new task for each stream the relay opens; the
            task is cancelled if the relay resets the stream or the session ends.
        keepalive_s: PING after this long without receiving anything.
        keepalive_timeout_s: end the session after this long without receiving anything.
        on_ended: called once, the moment the session ends (before its transport closes),
            so bookkeeping that the peer may observe is done before it sees the close.
        serve_now: (client) called first, in the callback that received the stream: True
            if it took the stream on without a task (:meth:`Stream.on_failure`,
            :meth:`Stream.serve_later`), False to leave it to ``on_stream``: saves a
            task per plain request (see :class:`DirectTransport` for what it measured).
    """

    def __init__(
        self,
        transport: MessageTransport,
        mux: Mux,
        *,
        on_stream: StreamHandler | None = None,
        keepalive_s: float = 20.0,
        keepalive_timeout_s: float | None = None,
        max_ws_message: int = DEFAULT_MAX_WS_MESSAGE,
        log: logging.Logger | logging.LoggerAdapter[logging.Logger] | None = None,
        on_ended: Callable[[SessionEnded], None] | None = None,
        serve_now: StreamStarter | None = None,
    ) -> None:
        self._serve_now = serve_now
        self.transport = transport
        self.mux = mux
        self._direct: DirectTransport | None = (
            transport if hasattr(transport, "send_nowait") else None  # type: ignore[assignment]
        )
        """The transport, when it sends without a task (:class:`DirectTransport`)."""
        self._push: PushTransport | None = (
            transport if hasattr(transport, "receive_with") else None  # type: ignore[assignment]
        )
        """The transport, when it hands over messages itself (:class:`PushTransport`)."""
        self._send_scheduled = False
        self._on_ended = on_ended
        self._on_stream = on_stream
        self.keepalive_s = keepalive_s
        self.keepalive_timeout_s = keepalive_timeout_s or keepalive_s * 2.5
        self.max_ws_message = max_ws_message
        self.log = log or logger
        self._streams: dict[int, Stream] = {}
        self._handlers: dict[int, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        self._drained = asyncio.Event()
        self._drained.set()
        self._in_flight = 0
        self._send_failed = False
        self._heads_arrived: list[Callable[[], None]] = []
        """Response callbacks due once the message being dispatched is done."""
        self._loop = asyncio.get_running_loop()
        self._last_received = self._loop.time()
        self._last_tick = self._last_received
        """When the keepalive loop last ran: a long gap means this side stood still."""
        self.ended: SessionEnded | None = None
        """How the session ended, once it has."""
        self.connection_lost = False
        """True when the transport closed without a GOAWAY (a network drop)."""
        self.rtt_s: float | None = None
        self._ping_sent_at: dict[bytes, float] = {}
        self._finished = asyncio.Event()

    # -- public API ---------------------------------------------------------------------

    @property
    def open_streams(self) -> int:
        """How many streams are live."""
        return self.mux.open_streams

    def open_stream(self, head: RequestHead, *, end_stream: bool = False) -> Stream:
        """(relay) Open a stream for one public request.

        Raises:
            HeadTooLarge: if the head is too large to send; the session is unchanged.
            SessionClosed: if the session has ended.
        """
        self._check_running()
        stream_id = self.mux.open_stream(head, end_stream=end_stream)
        stream = Stream(self, stream_id, None)
        stream._reply = self._loop.create_future()
        self._streams[stream_id] = stream
        self.flush()
        return stream

    def close(self, code: GoAwayCode = GoAwayCode.NORMAL, reason: str = "") -> None:
        """End the session with GOAWAY; :meth:`run` returns once it is sent (or soon)."""
        if self.ended is not None:
            return
        self.mux.close(code, reason)
        self._finish(SessionEnded(code, reason, by_peer=False))

    async def wait_closed(self) -> SessionEnded:
        """Wait until :meth:`run` has finished."""
        await self._finished.wait()
        assert self.ended is not None
        return self.ended

    async def run(self) -> SessionEnded:
        """Run the session until it ends; return how it ended. Closes the transport."""
        writer = asyncio.create_task(self._write_loop())
        keepalive = asyncio.create_task(self._keepalive_loop())
        try:
            if self._push is not None:
                await self._receive_pushed(self._push)
            else:
                await self._read_loop()
        finally:
            if self.ended is None:
                self.connection_lost = True
                self._finish(SessionEnded(GoAwayCode.INTERNAL_ERROR, "connection lost", False))
            keepalive.cancel()
            self.flush()
            # Give the write loop a moment to send a final GOAWAY, then cut the cord.
            with contextlib.suppress(asyncio.TimeoutError, Exception):
                await asyncio.wait_for(asyncio.shield(writer), CLOSE_GRACE_S)
            writer.cancel()
            await asyncio.gather(writer, keepalive, return_exceptions=True)
            await self.transport.close()
            handlers = list(self._handlers.values())
            for task in handlers:
                task.cancel()
            await asyncio.gather(*handlers, return_exceptions=True)
            self._finished.set()
        assert self.ended is not None
        return self.ended

    # -- plumbing used by streams -------------------------------------------------------

    def flush(self) -> None:
        """Send what the mux queued: at the end of this loop turn on a direct transport
        (so that every frame queued in the turn goes out in one write), else by waking
        the write loop."""
        if self._direct is None:
            self._wake.set()
        elif not self._send_scheduled:
            self._send_scheduled = True
            self._loop.call_soon(self._send_queued)

    def _queued(self) -> int:
        """Bytes queued in the mux plus those the transport has not sent yet."""
        if self._direct is not None:
            return self.mux.pending_bytes + self._direct.buffered()
        return self.mux.pending_bytes + self._in_flight

    @property
    def congested(self) -> bool:
        """True while more than :data:`HIGH_WATER_BYTES` wait for the transport."""
        return self._queued() > HIGH_WATER_BYTES

    async def wait_writable(self) -> None:
        """Wait while too many bytes are queued for the transport."""
        while self._queued() > HIGH_WATER_BYTES:
            self._check_running()
            self._drained.clear()
            await self._drained.wait()

    def acknowledge(self, stream_id: int, n: int) -> None:
        """A stream's consumer took ``n`` bytes: maybe grant the peer more credit."""
        if n and self.ended is None:
            self.mux.acknowledge(stream_id, n, self._loop.time())
            if self.mux.pending_bytes:
                self.flush()

    def forget_if_done(self, stream_id: int) -> None:
        """Drop the stream from the dispatch table once the mux has forgotten it."""
        if not self.mux.is_live(stream_id):
            stream = self._streams.pop(stream_id, None)
            if stream is not None:
                stream._let_go()

    def forget(self, stream_id: int) -> None:
        self._streams.pop(stream_id, None)

    def _check_running(self) -> None:
        if self.ended is not None:
            raise SessionClosed(self.ended.code, self.ended.reason)

    def _finish(self, event: SessionEnded) -> None:
        if self.ended is not None:
            return
        self.ended = event
        error = SessionClosed(event.code, event.reason)
        for stream in self._streams.values():
            stream._fail(error)
        self._streams.clear()
        self._drained.set()
        self.flush()
        if self._on_ended is not None:
            self._on_ended(event)

    # -- loops --------------------------------------------------------------------------

    async def _receive_pushed(self, push: PushTransport) -> None:
        """Handle each message in the transport's own callback until the connection
        closes (after a GOAWAY either way, the write loop closes it)."""
        closed = self._loop.create_future()

        def on_closed() -> None:
            if not closed.done():
                closed.set_result(None)

        push.receive_with(self._on_pushed, on_closed)
        await closed

    def _on_pushed(self, message: bytes | str) -> None:
        if self.ended is not None or self._stalled():
            return
        if isinstance(message, str):
            exc = RemoteProtocolError("text message on the tunnel: the protocol is binary only")
            self.log.info("! closing session: %s", exc)
            self.close(exc.code, str(exc))
            return
        self._last_received = self._loop.time()
        try:
            self._receive(message)
        except Exception:
            # Not expected: the mux turns every bad frame into a GOAWAY. Never let it
            # escape into the transport's callback.
            self.log.exception("session failed handling a message")
            self._finish(SessionEnded(GoAwayCode.INTERNAL_ERROR, "internal error", False))

    def _receive(self, message: bytes) -> None:
        """Feed one transport message to the mux and dispatch its events."""
        self.mux.receive_message(message)
        touched = set()
        for event in self.mux.events_received():
            self._dispatch(event)
            touched.add(getattr(event, "stream_id", 0))
        # Only now, after every event of the message reached its stream, drop the
        # streams the mux has finished with.
        for stream_id in touched:
            self.forget_if_done(stream_id)
        if self._heads_arrived:
            arrived, self._heads_arrived = self._heads_arrived, []
            for callback in arrived:
                try:
                    callback()
                except Exception:
                    self.log.exception("a response callback failed")
        if self.mux.pending_bytes:
            self.flush()

    async def _read_loop(self) -> None:
        while self.ended is None:
            try:
                message = await self.transport.recv()
            except RemoteProtocolError as exc:
                # The peer broke the transport's rules (a text message): its fault, so
                # it hears why, like for any other protocol error.
                self.log.info("! closing session: %s", exc)
                self.close(exc.code, str(exc))
                return
            except Exception as exc:  # a transport should return None; be safe anyway
                self.log.debug("transport receive failed: %r", exc)
                return
            # The keepalive loop may have ended the session while this waited.
            if message is None or self._closed_meanwhile() or self._stalled():
                return
            self._last_received = self._loop.time()
            self._receive(message)

    def _send_queued(self) -> None:
        """(direct transport) Write every message the mux has ready, unless the transport
        is full: then the write loop waits for it to drain and calls this again."""
        self._send_scheduled = False
        direct = self._direct
        assert direct is not None
        if self._send_failed:
            return
        if direct.buffered() <= HIGH_WATER_BYTES:
            try:
                for message in self.mux.data_to_send():
                    direct.send_nowait(message)
            except Exception as exc:
                self._transport_failed("send", exc)
                self._wake.set()  # the write loop closes the transport
                return
        queued = self._queued()
        if queued < LOW_WATER_BYTES:
            self._drained.set()
        if queued > HIGH_WATER_BYTES or self.ended is not None:
            self._wake.set()

    def _transport_failed(self, what: str, exc: Exception) -> None:
        """A send or drain failed: the connection is gone, the session ends as lost."""
        self.log.debug("transport %s failed: %r", what, exc)
        self._send_failed = True
        self.connection_lost = self.ended is None
        self._finish(SessionEnded(GoAwayCode.INTERNAL_ERROR, "connection lost", False))

    async def _write_loop(self) -> None:
        if self._direct is not None:
            await self._direct_write_loop(self._direct)
            return
        while True:
            await self._wake.wait()
            self._wake.clear()
            messages = self.mux.data_to_send()
            self._in_flight = sum(map(len, messages))
            for message in messages:
                try:
                    await self.transport.send(message)
                except Exception as exc:
                    self._transport_failed("send", exc)
                    await self.transport.close()
                    return
                self._in_flight -= len(message)
            if self.mux.pending_bytes < LOW_WATER_BYTES:
                self._drained.set()
            if self.ended is not None and not self.mux.pending_bytes:
                # Everything, including a final GOAWAY, is out: closing the transport
                # also ends the read loop's wait.
                await self.transport.close()
                return

    async def _direct_write_loop(self, direct: DirectTransport) -> None:
        """What a direct transport's sends cannot do from a callback: wait for a full
        transport to drain, and close it once a final GOAWAY is out."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self._send_failed:
                try:
                    while direct.buffered() > HIGH_WATER_BYTES:
                        await direct.drain()
                except Exception as exc:
                    self._transport_failed("drain", exc)
                else:
                    self._send_queued()
            if self.ended is not None and (self._send_failed or not self.mux.pending_bytes):
                await self.transport.close()
                return

    async def _keepalive_loop(self) -> None:
        interval = self.keepalive_s
        while self.ended is None:
            await asyncio.sleep(interval / 2)
            if self._stalled():
                await self.transport.close()
                return
            self._last_tick = self._loop.time()
            silent = self._last_tick - self._last_received
            if silent > self.keepalive_timeout_s:
                self.log.warning("no sign of life from the peer for %.1f s: closing", silent)
                self.close(GoAwayCode.KEEPALIVE_TIMEOUT, f"nothing received for {silent:.0f} s")
                await self.transport.close()
                return
            if silent >= interval and self.ended is None:
                payload = os.urandom(8)
                self._ping_sent_at = {payload: self._loop.time()}
                self.mux.ping(payload)
                self.flush()

    def _closed_meanwhile(self) -> bool:
        return self.ended is not None

    def _stalled(self) -> bool:
        """End the session if this side stood still too long (see the module docstring)."""
        stood = self._loop.time() - self._last_tick
        if stood <= self.keepalive_timeout_s / 3:
            return False
        self.log.warning("this side stood still for %.1f s: its peer has given up on it", stood)
        self.close(GoAwayCode.KEEPALIVE_TIMEOUT, f"stood still for {stood:.0f} s")
        return True

    def _dispatch(self, event: Event) -> None:
        match event:
            case DataReceived(stream_id=sid, data=data, end_stream=end):
                if stream := self._streams.get(sid):
                    stream._on_data(data, end)
            case WindowOpened(stream_id=sid):
                if stream := self._streams.get(sid):
                    stream._wake_writer()
            case StreamOpened(stream_id=sid, head=head, end_stream=end):
                self._start_stream(sid, head, end)
            case ReplyReceived(stream_id=sid, head=head, end_stream=end):
                if (stream := self._streams.get(sid)) and stream._reply is not None:
                    if end:
                        stream._eof = True
                        stream._wake_reader()
                    if not stream._reply.done():
                        stream._reply.set_result((head, end))
                        if stream._response_callback is not None:
                            self._heads_arrived.append(stream._response_callback)
                            stream._response_callback = None
            case MessageReceived(stream_id=sid):
                if stream := self._streams.get(sid):
                    stream._on_message(event, self.max_ws_message)
            case CloseReceived(stream_id=sid, code=code, reason=reason):
                if stream := self._streams.get(sid):
                    stream._messages.append(WebSocketClosed(code, reason))
                    stream._wake_reader()
            case ResetReceived(stream_id=sid, code=code, reason=reason):
                stream = self._streams.pop(sid, None)
                if stream is not None:
                    stream._fail(StreamReset(code, reason))
                task = self._handlers.get(sid)
                if task is not None:
                    task.cancel()
            case PingAcknowledged(payload=payload):
                sent = self._ping_sent_at.pop(payload, None)
                if sent is not None:
                    self.rtt_s = self._loop.time() - sent
            case SessionEnded():
                self._finish(event)

    def _start_stream(self, stream_id: int, head: RequestHead, end: bool) -> None:
        stream = Stream(self, stream_id, head)
        if end:
            stream._eof = True
        self._streams[stream_id] = stream
        if self._on_stream is None:
            stream.reset(ResetCode.REFUSED, "this side accepts no streams")
            return
        if self._serve_now is not None:
            try:
                if self._serve_now(stream):
                    return
            except Exception:
                self.log.exception("stream handler failed")
                stream.reset(ResetCode.INTERNAL_ERROR, "internal error")
                return
        self._spawn(stream, self._on_stream)

    def _spawn(self, stream: Stream, handler: StreamHandler) -> None:
        if self.ended is not None:
            return  # its streams have failed already, and nothing will cancel a new task
        # The loop's own method: asyncio.create_task asks for the running loop, which on
        # Python 3.11 is a getpid() system call (2 of them per request, strace showed).
        task = self._loop.create_task(self._serve(stream, handler))
        self._handlers[stream.id] = task

    async def _serve(self, stream: Stream, handler: StreamHandler) -> None:
        try:
            await handler(stream)
        except (StreamReset, SessionClosed, asyncio.CancelledError):
            pass
        except Exception:
            self.log.exception("stream handler failed")
            stream.reset(ResetCode.INTERNAL_ERROR, "internal error")
        finally:
            self._handlers.pop(stream.id, None)
            if self.mux.is_live(stream.id) and self.ended is None:
                if self.mux.can_send(stream.id):
                    # A handler that returns without finishing its stream would leave the
                    # peer waiting forever.
                    stream.reset(ResetCode.INTERNAL_ERROR, "handler ended without finishing")
                else:
                    # Our answer is complete; the rest of the peer's body is not wanted.
                    stream.reset(ResetCode.CANCEL, "response complete")


# -- WebSockets -------------------------------------------------------------------------

# RFC 6455 opcodes, which are also the values of aiohttp's WSMsgType for these messages.
_WS_TEXT = 0x1
_WS_BINARY = 0x2
_WS_CLOSE = 0x8


class WebSocketReceived(Protocol):
    """A message from :meth:`WebSocketEnd.receive` (aiohttp's ``WSMessage``)."""

    @property
    def type(self) -> int:
        """The opcode: 0x1 text, 0x2 binary, 0x8 close; anything else ends the WebSocket."""

    @property
    def data(self) -> Any:
        """``str`` for text, ``bytes`` for binary."""

    @property
    def extra(self) -> Any:
        """The reason of a close, if any."""


class WebSocketEnd(Protocol):
    """The end of a WebSocket this side holds (aiohttp's server or client WebSocket)."""

    @property
    def closed(self) -> bool:
        """True once this end sent its close."""

    @property
    def close_code(self) -> int | None:
        """The close code, once the WebSocket closed."""

    async def receive(self) -> WebSocketReceived:
        """The next message, a close, or an error once the connection is gone."""

    async def send_str(self, data: str) -> None:
        """Send a text message."""

    async def send_bytes(self, data: bytes) -> None:
        """Send a binary message."""

    async def close(self, *, code: int = 1000, message: bytes = b"") -> bool:
        """Close with a code and reason; returns False if already closed."""


async def _both_ways(
    one: Coroutine[Any, Any, None], other: Coroutine[Any, Any, None], grace_s: float
) -> None:
    """Run both directions of a relayed WebSocket until one ends, then stop the other.

    When one end closed cleanly, the other gets ``grace_s`` to answer with its own
    close (the closing handshake); a failure or a cancellation stops both at once.
    """
    directions = {asyncio.create_task(one), asyncio.create_task(other)}
    try:
        done, pending = await asyncio.wait(directions, return_when=asyncio.FIRST_COMPLETED)
        if pending and all(not t.cancelled() and t.exception() is None for t in done):
            await asyncio.wait(pending, timeout=grace_s)
    finally:
        for task in directions:
            task.cancel()
        await asyncio.gather(*directions, return_exceptions=True)


async def bridge_websocket(
    stream: Stream,
    ws: WebSocketEnd,
    *,
    abort_code: int = 1011,
    abort_reason: str = "tunnel stream ended",
    grace_s: float = WS_CLOSE_GRACE_S,
) -> None:
    """Relay messages between an upgraded stream and a WebSocket, both ways, until closed.

    Text stays text and binary stays binary; a close code and its reason pass on to the
    other end. Once one direction ended with a close, the other has ``grace_s`` to send
    its own close back (the closing handshake), then both stop. If the bridge ends any
    other way (a reset, a lost session, a broken connection), ``ws`` is closed with
    ``abort_code``: 1011 suits a server end (the relay's, facing the visitor); a client
    end (facing the local server) may not send 1011 (RFC 6455 §7.4.1) and passes 1001.
    Returns normally in every case; the stream's state tells what happened.
    """

    async def ws_to_stream() -> None:
        # receive(), not `async for`: the CLOSE message carries the reason to pass on.
        while (msg := await ws.receive()).type in (_WS_TEXT, _WS_BINARY):
            if msg.type == _WS_TEXT:
                await stream.send_message(msg.data.encode(), text=True)
            else:
                await stream.send_message(msg.data, text=False)
        reason = msg.extra if msg.type == _WS_CLOSE and msg.extra else ""
        if stream.writable:
            stream.send_close(ws.close_code or 1000, reason)

    async def stream_to_ws() -> None:
        while True:
            item = await stream.receive_message()
            if isinstance(item, WebSocketClosed):
                await ws.close(code=item.code, message=item.reason.encode())
                return
            if item.text:
                await ws.send_str(item.data.decode("utf-8", "replace"))
            else:
                await ws.send_bytes(item.data)

    try:
        await _both_ways(ws_to_stream(), stream_to_ws(), grace_s)
    finally:
        if not ws.closed:
            with contextlib.suppress(Exception):
                await ws.close(code=abort_code, message=abort_reason.encode())


# -- splicing two streams ---------------------------------------------------------------


def _reset_args(
    error: StreamReset | SessionClosed | None, lost: ResetCode, fallback: str
) -> tuple[ResetCode, str]:
    """How to pass one stream's abnormal end on to the other stream of a splice.

    A reset passes on as it came; a lost session becomes ``lost``.
    """
    if isinstance(error, StreamReset):
        return error.code, error.reason
    if isinstance(error, SessionClosed):
        return lost, f"{fallback}: {error.reason or error.code.name}"
    return ResetCode.CANCEL, fallback


async def _copy_body(source: Stream, sink: Stream) -> None:
    """Body bytes from one stream into another, then its end; credit limits both sides."""
    while chunk := await source.read():
        await sink.write(chunk)
    await sink.end()


async def _copy_messages(source: Stream, sink: Stream) -> None:
    """WebSocket messages of an upgraded stream into another, up to and with the close."""
    while True:
        item = await source.receive_message()
        if isinstance(item, WebSocketClosed):
            sink.send_close(item.code, item.reason)
            return
        await sink.send_message(item.data, text=item.text)


async def splice(inbound: Stream, session: Session, head: RequestHead | None = None) -> None:
    """Serve ``inbound`` by opening its request on ``session`` and pumping both ways.

    ``inbound`` is a stream this side serves (it carries a request head); ``session`` is
    one on which this side opens streams. The request (``head``, by default the one
    ``inbound`` carries) and its body go out on a new stream of ``session``; its
    response head and body, or once upgraded its WebSocket messages and close, come
    back on ``inbound``. A reset on either stream resets the other with the same code,
    and cancelling the call (the peer reset ``inbound``) resets the outbound stream.
    Nothing is read faster than the other side grants credit.

    Raises:
        SessionClosed: ``session`` has ended; nothing was sent on either stream.
        HeadTooLarge: the head does not fit an OPEN frame; nothing was sent.
    """
    request = head or inbound.request
    if request is None:
        raise InvalidState("only a stream opened by the peer carries a request to splice")
    bodyless = inbound._eof and not inbound._chunks and not request.websocket
    outbound = session.open_stream(request, end_stream=bodyless)
    uploading: asyncio.Task[None] | None = None
    if not bodyless and not request.websocket:
        uploading = asyncio.create_task(_copy_body(inbound, outbound))
    try:
        reply, ended = await outbound.response()
        try:
            inbound.reply(reply, end_stream=ended)
        except HeadTooLarge:
            # Cannot happen with peers of the same limits; never let it end the session.
            inbound.reset(ResetCode.UPSTREAM_HEAD_TOO_LARGE, "response head too large")
            return
        if reply.status == 101:
            directions = {
                asyncio.create_task(_copy_messages(inbound, outbound)),
                asyncio.create_task(_copy_messages(outbound, inbound)),
            }
            try:
                # Both closes (the closing handshake) or the first failure end it.
                await asyncio.wait(directions, return_when=asyncio.FIRST_EXCEPTION)
            finally:
                for task in directions:
                    task.cancel()
                await asyncio.gather(*directions, return_exceptions=True)
        elif not ended:
            await _copy_body(outbound, inbound)
    except (StreamReset, SessionClosed):
        pass  # which side failed is read off the streams below
    finally:
        if uploading is not None:
            uploading.cancel()
            await asyncio.gather(uploading, return_exceptions=True)
        if inbound.live and inbound.error is None and outbound.error is not None:
            lost = ResetCode.INTERNAL_ERROR
            inbound.reset(*_reset_args(outbound.error, lost, "the far connection ended"))
        if outbound.live and outbound.error is None:
            # The peer left (reset, or its session ended), or the answer is complete
            # while the request body was still coming: the far side stops either way.
            lost = ResetCode.CANCEL
            outbound.reset(*_reset_args(inbound.error, lost, "the request was withdrawn"))


class ByteChannel(Protocol):
    """A byte connection that carries a WebSocket after its opening handshake."""

    async def read(self) -> bytes:
        """The next bytes from the peer; ``b""`` once the connection closed."""

    def write(self, data: bytes) -> None:
        """Queue bytes for the peer."""

    async def drain(self) -> None:
        """Wait while too much is queued for the peer (it reads slower than we write)."""

    def close(self) -> None:
        """Close the connection once what was written is out; must not raise."""


ABNORMAL_CLOSURE = 1006
"""The close code (never sent in a frame, RFC 6455 §7.4.1) for a connection that ended
without a closing handshake: a bridge passes it on the stream when its peer vanished,
and sends its ``abort_code`` for it when it comes from the stream."""


async def bridge_codec(
    stream: Stream,
    codec: WebSocketCodec,
    channel: ByteChannel,
    *,
    abort_code: int = 1011,
    abort_reason: str = "tunnel stream ended",
    grace_s: float = WS_CLOSE_GRACE_S,
) -> None:
    """Relay messages between an upgraded stream and a WebSocket on ``channel``, both ways.

    ``codec`` frames for the channel's side of the connection: ``mask=True`` where this
    side is the connection's client (the client, facing the local server), ``mask=False``
    where it is the server (the relay, facing the visitor). Bytes that arrived with the
    opening handshake go to ``codec.receive_data`` before the call.

    Text stays text and binary stays binary; a close code and its reason pass on to the
    other end, and the codec answers PINGs. Once one direction ended with a close, the
    other has ``grace_s`` to send its own close back, then both stop. A peer whose
    connection ends without a close is passed on as 1006; a 1006 from the stream (the
    far peer vanished), a reset, a lost session or a cancellation close the channel's
    WebSocket with ``abort_code``: 1001 (going away) for a client end, 1011 for a server
    end. Returns normally in every case (but when cancelled); the channel is closed.
    """

    def send_out() -> None:
        if out := codec.data_to_send():
            channel.write(out)

    async def channel_to_stream() -> None:
        while data := await channel.read():
            codec.receive_data(data)
            send_out()  # PONGs, and the CLOSE a broken rule earns
            for event in codec.events_received():
                if isinstance(event, Message):
                    await stream.send_message(event.data, text=event.text)
                elif stream.writable:
                    stream.send_close(event.code, event.reason)
                    return
                else:
                    return
        if stream.writable:
            stream.send_close(ABNORMAL_CLOSURE, "the connection closed without a close")

    async def stream_to_channel() -> None:
        while True:
            item = await stream.receive_message()
            if isinstance(item, WebSocketClosed):
                if item.code == ABNORMAL_CLOSURE:
                    codec.send_close(abort_code, abort_reason)
                else:
                    codec.send_close(item.code, item.reason)
                send_out()
                return
            codec.send_message(item.data, text=item.text)
            send_out()
            await channel.drain()

    try:
        await _both_ways(channel_to_stream(), stream_to_channel(), grace_s)
    finally:
        if not codec.close_sent:
            codec.send_close(abort_code, abort_reason)
            send_out()
        channel.close()
