"""The visitor edge: one asyncio Protocol per visitor connection, HTTP/1.1 by hand.

Every connection to the relay starts here. Each request head is parsed
(:mod:`.http1`) and routed by its Host: a link's requests are served here
(:mod:`.public` decides what to answer and relays the exchange); the first request for
any other host (the relay's own: ``/_tunnel``, health, landing page) hands the whole
connection over to aiohttp's request handler, which then serves that one request.

One connection, one :class:`VisitorConnection`, in one of four states:

``HEAD``
    reading a request head. The first head must be complete within
    ``header_timeout`` of the connection opening, a later one within ``header_timeout``
    of its first byte; a quiet keep-alive connection is closed after ``idle_timeout``.
    A head over ``max_header_bytes`` gets 431 at once, without waiting for its end.
``BUSY``
    one request is being served. Its body (if any) is decoded here and queued for the
    exchange, which reads it only while its stream has credit: past
    :data:`INBOX_HIGH_BYTES` queued, the transport stops reading (backpressure to the
    visitor's socket). Bytes after the body are the next request (pipelining): they
    wait, up to a bound, until this response is complete.
``UPGRADED``
    a relayed WebSocket: raw bytes queue for the frame codec the same way.
``LINGER``
    the answer is out and our side is shut (FIN); what the visitor still sends is read
    and dropped until it closes too, for at most :data:`LINGER_S`.
``CLOSED``

Deadlines use one timer per connection, moved lazily: a transition only records
times, and the timer, when it fires, works out what (if anything) is due and sleeps
until the next deadline. So a request costs no timer operation at all.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, cast

from aiohttp import web

from tunnel_client.protocol.aio import Stream
from tunnel_client.protocol.errors import ResetCode

from . import pages, public
from .forwarding import client_address
from .http1 import (
    CHUNKED,
    LENGTH,
    NO_BODY,
    ChunkedDecoder,
    ConnectionGone,
    HttpError,
    Request,
    date_line,
    find_head_end,
    parse_request,
    response_head,
)

if TYPE_CHECKING:
    from .app import Relay

__all__ = ["Edge", "VisitorConnection"]

logger = logging.getLogger(__name__)

INBOX_HIGH_BYTES = 64 * 1024
"""Stop reading a visitor's socket while this much of its body or WebSocket waits."""

PIPELINE_LIMIT_BYTES = 64 * 1024
"""Bytes of later requests buffered while one is served, beyond its head limit."""

LINGER_S = 5.0
LINGER_BYTES = 16 << 20
"""After a final answer, a visitor still sending gets this long (and this many bytes,
read and dropped) to stop, so that closing with its bytes unread does not reset the
connection (an RST can make the visitor's system drop the answer it already got)."""

_HEAD, _BUSY, _UPGRADED, _LINGER, _CLOSED = range(5)
_ROUTE_CACHE = 4096


class Edge:
    """What every visitor connection shares: the relay, routes, and the aiohttp handoff."""

    def __init__(self, relay: Relay, aiohttp_server: web.Server) -> None:
        self.relay = relay
        self.config = relay.config
        self.aiohttp_server = aiohttp_server
        self.connections: set[VisitorConnection] = set()
        self.scheme = self.config.scheme
        self._routes: dict[str, str | None] = {}
        self.loop = asyncio.get_running_loop()

    def __call__(self) -> VisitorConnection:
        return VisitorConnection(self)

    def subdomain_of(self, host: str) -> str | None:
        """The link label a Host names, or None for the relay itself (cached)."""
        try:
            return self._routes[host]
        except KeyError:
            pass
        if len(self._routes) >= _ROUTE_CACHE:
            self._routes.clear()  # hostile hosts cannot grow it without bound
        sub = self._routes[host] = self.relay.subdomain_of(host)
        return sub

    def abort_all(self) -> None:
        """Close every visitor connection now (the relay is stopping)."""
        for conn in list(self.connections):
            conn.abort()


class VisitorConnection(asyncio.Protocol):
    """One visitor's TCP (or TLS) connection; see the module docstring."""

    def __init__(self, edge: Edge) -> None:
        self.edge = edge
        self.config = edge.config
        self.loop = edge.loop
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        self.state = _HEAD
        self._buffer = b""
        """Received bytes not consumed yet: a head in progress, or later requests."""
        self._processing = False
        self.request: Request | None = None
        self.stream: Stream | None = None
        """The tunnel stream of the request being served, once forwarded."""
        self.task: asyncio.Task[None] | None = None
        # The request body (or WebSocket bytes) waiting for the exchange.
        self._body: ChunkedDecoder | int | None = None
        """While a body is read: its decoder, or the Content-Length bytes still due."""
        self.body_done = True
        self._inbox: deque[bytes | memoryview] = deque()
        self._inbox_bytes = 0
        self._inbox_error: Exception | None = None
        self._reader: asyncio.Future[None] | None = None
        self._read_paused = False
        self._write_paused = False
        self._drainer: asyncio.Future[None] | None = None
        # Deadlines (loop time); see _on_timer.
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._head_since: float | None = None
        self._idle_since: float | None = None
        self.reply_by: float | None = None
        self._reply_within: float | None = None
        """Seconds the app gets to answer, counted once the request body is all here."""
        self.last_in = 0.0
        self.last_out = 0.0
        self.streaming = False
        """A response body is being relayed (its idle time counts)."""
        # What the observer hears of each request when it is over.
        self.sub = ""
        self.started = 0.0
        self.status = 499
        """What the visitor got; 499 until something was answered."""
        self.bytes_in = 0
        self.bytes_out = 0
        self._upgraded = False
        self._paused_at = 0.0
        """When reading was last paused (backpressure)."""
        self._linger_until = 0.0
        self._lingered = 0

    # -- asyncio.Protocol -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if isinstance(peer, tuple) and peer else ""
        now = self.loop.time()
        self._head_since = now
        self._arm(now + self.config.header_timeout_s)
        self.edge.connections.add(self)

    def data_received(self, data: bytes) -> None:
        if self.state == _HEAD:
            self._buffer = self._buffer + data if self._buffer else data
            if self._head_since is None:
                # The first byte of a later request head starts its deadline.
                self._head_since = self.loop.time()
                self._idle_since = None
                self._arm(self._head_since + self.config.header_timeout_s)
            self._process()
        elif self.state == _BUSY:
            self.last_in = self.loop.time()
            if self._body is not None:
                self._feed_body(data)
            else:
                self._buffer += data
                if len(self._buffer) > self.config.max_header_bytes + PIPELINE_LIMIT_BYTES:
                    self._pause_reading()
        elif self.state == _UPGRADED:
            self._push(data)
        elif self.state == _LINGER:
            self._lingered += len(data)
            if self._lingered > LINGER_BYTES:
                self.abort()

    def eof_received(self) -> bool | None:
        # A visitor's half-close is its leaving (as it was under aiohttp): returning
        # None closes the transport, and connection_lost cancels what it asked for.
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.edge.connections.discard(self)
        was = self.state
        self.state = _CLOSED
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._wake_drainer()
        if self._body is not None or was == _UPGRADED:
            self._inbox_error = ConnectionGone()
            self._wake_reader()
        stream = self.stream
        if stream is not None and was == _BUSY and stream.error is None and stream.live:
            # The visitor left before its exchange finished: the client cancels the
            # local request (an upgraded stream gets its close from the bridge instead).
            stream.reset(ResetCode.CANCEL, "the visitor went away")

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake_drainer()

    # -- heads --------------------------------------------------------------------------

    def _process(self) -> None:
        """Serve the heads waiting in the buffer, one at a time (pipelining)."""
        if self._processing:
            return
        self._processing = True
        try:
            while self.state == _HEAD and self._buffer:
                if not self._next_head():
                    break
        finally:
            self._processing = False

    def _next_head(self) -> bool:
        """Parse and dispatch one head; False if more bytes are needed."""
        buffer = self._buffer
        limit = self.config.max_header_bytes
        try:
            end = find_head_end(buffer)
            if end < 0:
                if len(buffer) > limit:
                    self._refuse_head_size()
                return False
            if end > limit:
                self._refuse_head_size()
                return False
            request = parse_request(buffer[:end])
        except HttpError as exc:
            logger.debug("malformed request from %s: %s", self.peer, exc.detail)
            self.state = _BUSY
            self.send_page(pages.refused(exc.status, exc.detail), None, close=True)
            return False
        self._head_since = None
        sub = self.edge.subdomain_of(request.host) if request.host is not None else None
        if sub is None:
            self._hand_over()
            return False
        self._buffer = buffer[end:]
        self.state = _BUSY
        self.request = request
        self.sub = sub
        self.last_in = self.started = self.loop.time()
        self.status = 499
        self.bytes_in = self.bytes_out = 0
        self.edge.relay.request_started()
        try:
            public.serve(self, request, sub)
        except Exception:
            logger.exception("serving a request failed")
            if self.state == _BUSY and self.stream is None and self.task is None:
                self.send_page(pages.local_failed(), request, close=True)
        return True

    def visitor_address(self, request: Request) -> str:
        """The visitor's address: the socket's peer, or what trusted fronts say."""
        proxies = self.config.trusted_proxies
        if not proxies:
            return self.peer
        return client_address(self.peer, request.header_all("x-forwarded-for"), proxies)

    def _refuse_head_size(self) -> None:
        """431 at once and close, without waiting for the rest of the head."""
        self.state = _BUSY
        self.send_page(pages.headers_too_large(self.config.max_header_bytes), None, close=True)

    def _hand_over(self) -> None:
        """Give the connection to aiohttp, which serves the relay's own host."""
        transport = self.transport
        assert transport is not None
        self.state = _CLOSED
        self.edge.connections.discard(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        handler = self.edge.aiohttp_server()
        transport.set_protocol(handler)
        handler.connection_made(transport)
        if self._read_paused:
            transport.resume_reading()
        handler.data_received(self._buffer)
        self._buffer = b""

    # -- the exchange's side -------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """True once nothing more can be written (closed, or closing)."""
        return self.state >= _LINGER

    def write(self, data: bytes) -> None:
        """Send bytes to the visitor (dropped once the connection is closing)."""
        if self.state < _LINGER and self.transport is not None:
            self.transport.write(data)
            self.last_out = self.loop.time()
            self.bytes_out += len(data)

    @property
    def write_paused(self) -> bool:
        return self._write_paused

    async def drain(self) -> None:
        """Wait while the visitor's socket does not take more."""
        while self._write_paused and self.state < _LINGER:
            self._drainer = self.loop.create_future()
            await self._drainer

    def send_page(
        self,
        page: pages.ErrorPage,
        request: Request | None,
        *,
        close: bool = False,
        extra: Sequence[tuple[str, str]] = (),
    ) -> None:
        """Answer the current request with one of the relay's pages, and finish it."""
        self.finish(keep_alive=self.write_page(page, request, close=close, extra=extra))

    def write_page(
        self,
        page: pages.ErrorPage,
        request: Request | None,
        *,
        close: bool = False,
        extra: Sequence[tuple[str, str]] = (),
    ) -> bool:
        """Write one of the relay's pages; True if the connection may be kept."""
        headers, body = pages.render(
            page, request is not None and pages.wants_html(request.header("accept"))
        )
        headers.extend(extra)
        return self.write_made(page.status, headers, body, request, close=close)

    def send_made(
        self, status: int, headers: Sequence[tuple[str, str]], body: bytes, request: Request
    ) -> None:
        """Answer the current request with a response the relay made, and finish it."""
        self.finish(keep_alive=self.write_made(status, headers, body, request))

    def write_made(
        self,
        status: int,
        headers: Sequence[tuple[str, str]],
        body: bytes,
        request: Request | None,
        *,
        close: bool = False,
    ) -> bool:
        """Write a response the relay made (headers without framing); True if the
        connection may be kept."""
        close = close or request is None or request.close or not self.skip_body(request)
        framing = b"Content-Length: %d\r\n" % len(body) + date_line()
        if close:
            framing += b"Connection: close\r\n"
        elif request is not None and request.minor == 0:
            framing += b"Connection: keep-alive\r\n"
        head = response_head(status, headers, framing)
        self.status = status
        self.write(head if request is not None and request.method == "HEAD" else head + body)
        return not close

    def skip_body(self, request: Request) -> bool:
        """Consume an unwanted request body if it is all here; False if it is not."""
        if request.framing == NO_BODY or self._body is not None:
            return self.body_done
        if request.framing == LENGTH:
            if len(self._buffer) < request.body_length:
                return False
            self._buffer = self._buffer[request.body_length :]
            return True
        decoder = ChunkedDecoder()
        try:
            _, rest = decoder.feed(self._buffer)
        except HttpError:
            return False
        if not decoder.done:
            return False
        self._buffer = rest
        return True

    def start_body(self, request: Request) -> None:
        """Read the request's body from now on, for :meth:`read` (see :mod:`.public`)."""
        if request.framing == NO_BODY:
            return
        self._body = ChunkedDecoder() if request.framing == CHUNKED else request.body_length
        self.body_done = False
        pending, self._buffer = self._buffer, b""
        if pending:
            self._feed_body(pending)

    def _feed_body(self, data: bytes) -> None:
        body = self._body
        if isinstance(body, int):
            if len(data) <= body:
                self._push(data)
                body -= len(data)
                rest = b""
            else:
                self._push(memoryview(data)[:body])
                rest = data[body:]
                body = 0
            self._body = body
            if not body:
                self._end_body(rest)
            return
        assert body is not None
        try:
            pieces, rest = body.feed(data)
        except HttpError as exc:
            self._body = None
            self._inbox_error = exc
            self._wake_reader()
            return
        for piece in pieces:
            self._push(piece)
        if body.done:
            self._end_body(rest)

    def _end_body(self, rest: bytes) -> None:
        self._body = None
        self.body_done = True
        if self._reply_within is not None:
            self.await_reply(self._reply_within)
        self._buffer += rest
        self._wake_reader()

    def _push(self, data: bytes | memoryview) -> None:
        if data:
            self.bytes_in += len(data)
            self._inbox.append(data)
            self._inbox_bytes += len(data)
            if self._inbox_bytes > INBOX_HIGH_BYTES:
                self._pause_reading()
        self._wake_reader()

    async def read(self) -> bytes | memoryview:
        """The next piece of the request body (or WebSocket bytes); b"" at its end.

        Raises:
            HttpError: if the body is malformed (chunked coding).
            ConnectionGone: if the visitor left before the body ended.
        """
        while not self._inbox:
            if self._inbox_error is not None:
                if self._upgraded and isinstance(self._inbox_error, ConnectionGone):
                    return b""
                raise self._inbox_error
            if self.body_done and not self._upgraded:
                return b""
            self._reader = self.loop.create_future()
            await self._reader
        piece = self._inbox.popleft()
        self._inbox_bytes -= len(piece)
        if self._read_paused and self._inbox_bytes <= INBOX_HIGH_BYTES // 2:
            self._resume_reading()
        return piece

    def upgrade(self) -> None:
        """The exchange became a WebSocket: bytes from now on are frames for :meth:`read`."""
        self.state = _UPGRADED
        self._upgraded = True
        self.body_done = True
        pending, self._buffer = self._buffer, b""
        if pending:
            self._push(pending)
        if self._read_paused and self._inbox_bytes <= INBOX_HIGH_BYTES // 2:
            self._resume_reading()

    def finish(self, *, keep_alive: bool) -> None:
        """The response is complete: close, or go on with the next request."""
        request = self.request
        if request is not None:
            self.request = None
            relay = self.edge.relay
            relay.request_finished()
            relay.observe.request_done(
                self.sub,
                request.method,
                request.target,
                self.status,
                self.bytes_in,
                self.bytes_out,
                self.loop.time() - self.started,
                self.visitor_address(request),
            )
        self.stream = None
        self.task = None
        self.streaming = False
        self.reply_by = self._reply_within = None
        if self.state == _CLOSED:
            return
        if not keep_alive or not self.body_done or self.state != _BUSY:
            self.close()
            return
        self._inbox.clear()
        self._inbox_bytes = 0
        self._inbox_error = None
        self.state = _HEAD
        if self._read_paused:
            self._resume_reading()
        now = self.loop.time()
        if self._buffer:
            self._head_since = now
            self._arm(now + self.config.header_timeout_s)
            self._process()
        else:
            self._head_since = None
            self._idle_since = now
            self._arm(now + self.config.idle_timeout_s)

    def close(self) -> None:
        """Close the connection once what was written is sent, lingering (see LINGER_S)."""
        transport = self.transport
        if transport is None or self.state in (_CLOSED, _LINGER):
            return
        if not transport.can_write_eof():  # TLS: no half-close
            transport.close()
            return
        self.state = _LINGER
        transport.write_eof()
        self._body = None
        self._inbox.clear()
        self._inbox_error = ConnectionGone()
        self._wake_reader()
        if self._read_paused:
            self._resume_reading()
        self._linger_until = self.loop.time() + LINGER_S
        self._arm(self._linger_until)

    def abort(self) -> None:
        """Close at once: the visitor is too slow or idle, or lingered too long."""
        if self.transport is not None and self.state != _CLOSED:
            self.transport.close()

    # -- flow control ------------------------------------------------------------------

    def _pause_reading(self) -> None:
        if not self._read_paused and self.transport is not None and self.state < _LINGER:
            self._read_paused = True
            self.transport.pause_reading()
            self._paused_at = self.loop.time()
            if self.state == _BUSY and not self.body_done:
                self._arm(self._paused_at + self.config.response_timeout_s)

    def _resume_reading(self) -> None:
        if self._read_paused and self.transport is not None and self.state != _CLOSED:
            self._read_paused = False
            self.transport.resume_reading()
            self.last_in = self.loop.time()  # the visitor's idle time starts again

    def _wake_reader(self) -> None:
        waiter = self._reader
        if waiter is not None:
            self._reader = None
            if not waiter.done():
                waiter.set_result(None)

    def _wake_drainer(self) -> None:
        waiter = self._drainer
        if waiter is not None:
            self._drainer = None
            if not waiter.done():
                waiter.set_result(None)

    # -- deadlines -----------------------------------------------------------------------

    def _arm(self, when: float) -> None:
        """Make sure the timer fires no later than ``when``."""
        if self._timer is not None:
            if self._timer_at <= when:
                return
            self._timer.cancel()
        self._timer_at = when
        self._timer = self.loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self.state == _CLOSED:
            return
        now = self.loop.time()
        due = self._due(now)
        if due is not None:
            due()
            if self.state == _CLOSED:
                return
        upcoming = self._next_deadline()
        if upcoming is not None:
            self._arm(max(upcoming, now + 0.01))

    def _deadlines(self) -> list[tuple[float, Callable[[], None]]]:
        config = self.config
        deadlines: list[tuple[float, Callable[[], None]]] = []
        if self.state == _HEAD:
            if self._head_since is not None:
                deadlines.append((self._head_since + config.header_timeout_s, self._head_late))
            elif self._idle_since is not None:
                deadlines.append((self._idle_since + config.idle_timeout_s, self.abort))
        elif self.state == _LINGER:
            deadlines.append((self._linger_until, self.abort))
        elif self.state == _BUSY:
            if self.reply_by is not None:
                deadlines.append((self.reply_by, self._reply_late))
            if not self.body_done and self._read_paused:
                # Held back because the app takes no more of the body: its time, not the
                # visitor's (who is not stalling: the relay stopped reading it).
                if self.stream is not None and self.stream.error is None:
                    when = self._paused_at + config.response_timeout_s
                    deadlines.append((when, self._app_took_no_body))
            elif not self.body_done:
                deadlines.append((self.last_in + config.idle_timeout_s, self._upload_stalled))
            if self.streaming:
                deadlines.append((self.last_out + config.idle_timeout_s, self._response_stalled))
        return deadlines

    def _due(self, now: float) -> Callable[[], None] | None:
        for when, action in self._deadlines():
            if when <= now:
                return action
        return None

    def _next_deadline(self) -> float | None:
        deadlines = self._deadlines()
        return min(when for when, _ in deadlines) if deadlines else None

    def _head_late(self) -> None:
        logger.debug("%s too slow to send a request head: closing", self.peer)
        self.abort()

    def _reply_late(self) -> None:
        self.reply_by = None
        if self.stream is not None:
            timeout = self.config.response_timeout_s
            self.stream.reset(ResetCode.UPSTREAM_TIMEOUT, f"no response within {timeout:g} s")

    def _upload_stalled(self) -> None:
        idle = self.config.idle_timeout_s
        if self.stream is not None:
            self.stream.reset(ResetCode.CANCEL, f"the visitor's upload stalled for {idle:g} s")
        if self.status == 499:  # no answer has started: say why
            page = pages.refused(408, f"The request body stopped arriving for {idle:g} s.")
            self.write_page(page, self.request, close=True)
        self.abort()

    def _app_took_no_body(self) -> None:
        timeout = self.config.response_timeout_s
        if self.stream is not None:
            why = f"the app took none of the request body for {timeout:g} s"
            self.stream.reset(ResetCode.UPSTREAM_TIMEOUT, why)

    def _response_stalled(self) -> None:
        idle = self.config.idle_timeout_s
        logger.info("a response moved no byte for %g s: closing it", idle)
        if self.stream is not None:
            self.stream.reset(ResetCode.CANCEL, f"no data for {idle:g} s")
        self.abort()

    def await_reply(self, timeout_s: float) -> None:
        """The app must start answering within ``timeout_s``: from now if the request
        is all here, else from the end of its body. A body's upload, however slow, is
        the visitor's time (its stalls are cut by the idle timeout), and an app that
        reads a whole upload before it answers is not late for it."""
        if self.body_done:
            self._reply_within = None
            self.reply_by = self.loop.time() + timeout_s
            self.arm(self.reply_by)
        else:
            self._reply_within = timeout_s
            # Until then a body that stops arriving is the only thing to watch for.
            self.arm(self.last_in + self.config.idle_timeout_s)

    def answered(self) -> None:
        """The app's answer (or the stream's failure) came: no reply deadline any more."""
        self.reply_by = self._reply_within = None

    def arm(self, when: float) -> None:
        """Make sure the deadlines are looked at by ``when`` (after the exchange set one)."""
        if self.state != _CLOSED:
            self._arm(when)
