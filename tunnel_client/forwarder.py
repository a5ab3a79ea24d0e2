"""Each stream the relay opens becomes one request to the local server, and back.

The request goes out as the visitor sent it: the target byte for byte (no
normalisation: Gradio's ``/file=<absolute path>`` URLs depend on it), the method token
as is (``OPTIONS *`` too), header names with their case, repeats and order; bodies pass
byte for byte (no decompression), and nothing is buffered whole. The HTTP/1.1 client is
our own (:mod:`.http1` for the bytes, :mod:`.pool` for keep-alive connections on asyncio
protocols), so that nothing is added, normalised or followed: no redirect, ever (a 302
answering a WebSocket upgrade reaches the visitor as a 302).

One request is one :class:`_Exchange`. The response travels in the connection's
callbacks: the head becomes the REPLY and each body piece a DATA frame as it arrives
(SSE event by event), with no task woken per piece. Only when the stream has no credit
does the exchange stop reading the local socket (``pause_reading``) and let its task
send the rest as credit comes; so a slow visitor holds back the local server, never
our memory.

A WebSocket upgrade is sent to the local server as the visitor asked (its key, version
and subprotocols); a 101 is passed on with the server's own head and the stream is
bridged to the connection by :func:`~.protocol.aio.bridge_codec`; any other answer
(401 with ``WWW-Authenticate``, a redirect...) is passed on whole like any response.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import ssl
import time
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from .http1 import (
    LAST_CHUNK,
    HeadTooLargeError,
    InvalidResponse,
    ResponseReader,
    chunk,
    request_head,
)
from .pool import LocalConnection, Pool
from .protocol.aio import Stream, bridge_codec
from .protocol.errors import (
    HeadTooLarge,
    LocalProtocolError,
    ResetCode,
    SessionClosed,
    StreamReset,
    unavailable_reason,
)
from .protocol.heads import Headers, RequestHead, ResponseHead, strip_hop_by_hop
from .protocol.wsframes import WebSocketCodec, apply_mask
from .tap import Exchange, Tap

fast_mask: Callable[[bytes, bytes], bytes] = apply_mask
# websockets (a dependency) masks in C, some 30 times faster than pure Python, unless it
# was built without its C extension.
with contextlib.suppress(ImportError):
    from websockets.speedups import apply_mask as fast_mask

__all__ = ["HOST_REWRITE", "Forwarder", "RequestRecord", "local_authority"]

logger = logging.getLogger(__name__)

HOST_REWRITE = "rewrite"
"""``host_header`` value that sends the local server's own address as ``Host``."""

WS_MAX_MESSAGE = 16 << 20
WS_READ_HIGH_WATER = 256 * 1024
"""Bytes of a WebSocket connection read ahead of the bridge before reading pauses."""


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One finished request, for the live request log."""

    method: str
    path: str
    status: int
    """The status the visitor saw (502/504 when the local server failed)."""
    duration_s: float
    bytes_out: int
    error: str | None = None
    """What went wrong, with the details (for the owner's eyes only: visitors see a page
    that says what happened in plain words, never this)."""


class Forwarder:
    """Serves tunnel streams from a local HTTP server.

    Args:
        local_host, port: where the local server listens.
        scheme: ``http``, or ``https`` for a local server that speaks TLS.
        ssl_context: for ``https``: how to check the local server (default: the system's
            trust store and its host name).
        on_request: called with a :class:`RequestRecord` as each request finishes.
        host_header: None to pass the visitor's ``Host`` on; :data:`HOST_REWRITE` to send
            the local server's address instead (:func:`local_authority`); any other value
            to send that. ``X-Forwarded-Host`` keeps the public name either way.
    """

    def __init__(
        self,
        local_host: str,
        port: int,
        *,
        scheme: str = "http",
        ssl_context: ssl.SSLContext | None = None,
        on_request: Callable[[RequestRecord], None] | None = None,
        host_header: str | None = None,
        tap: Tap | None = None,
    ) -> None:
        self.local_host = local_host
        self.tap = tap
        """Told about every exchange (tunnel_client.tap), e.g. the request inspector."""
        self.port = port
        host = f"[{local_host}]" if ":" in local_host else local_host
        self.label = f"{host}:{port}"
        self.on_request = on_request
        if host_header == HOST_REWRITE:
            host_header = local_authority(local_host, port)
        self.host_value = host_header
        """The ``Host`` sent to the local server, or None for the visitor's."""
        if scheme == "https" and ssl_context is None:
            ssl_context = ssl.create_default_context()
        self.ssl_context = ssl_context if scheme == "https" else None
        self._pool: Pool | None = None

    async def __aenter__(self) -> Forwarder:
        self._pool = Pool(self.local_host, self.port, ssl_context=self.ssl_context)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._pool is not None:
            self._pool.close()

    async def serve(self, stream: Stream) -> None:
        """Answer one stream; never raises for the local server's failures."""
        assert stream.request is not None and self._pool is not None
        await _Exchange(self, self._pool, stream, stream.request).run()

    def serve_now(self, stream: Stream) -> bool:
        """Answer a stream without a task when that is plain: a request whose whole
        (empty) body is here, not an upgrade, with a kept-alive connection at hand. The
        connection's callbacks then carry it to the end; it gets a task only if it must
        wait (held-back bytes, a retry, a failure). False: use :meth:`serve`."""
        head = stream.request
        assert head is not None and self._pool is not None
        if head.websocket or not stream.peer_ended or stream.has_data:
            return False
        conn = self._pool.take()
        if conn is None:
            return False
        _Exchange(self, self._pool, stream, head).start_now(conn)
        return True

    def record(self, record: RequestRecord) -> None:
        if self.on_request is not None:
            self.on_request(record)


def local_authority(local_host: str, port: int) -> str:
    """The ``Host`` of ``--host-header rewrite``: ``localhost:PORT`` for a loopback
    address (every dev server's allow list has ``localhost``; Django's
    ``ALLOWED_HOSTS = ["localhost"]`` has no ``127.0.0.1``), else ``HOST:PORT``."""
    try:
        loopback = ipaddress.ip_address(local_host).is_loopback
    except ValueError:
        loopback = local_host.lower() == "localhost"
    if loopback:
        return f"localhost:{port}"
    return f"[{local_host}]:{port}" if ":" in local_host else f"{local_host}:{port}"


# What the relay hears with a reset: fixed words, never an exception's text.
_RESET_REASONS = {
    ResetCode.UPSTREAM_ERROR: "the local server's answer was not valid HTTP or broke off",
    ResetCode.UPSTREAM_HEAD_TOO_LARGE: "the local server's response head is too large",
}
_WS_REPLY_DROPPED = frozenset({"sec-websocket-extensions"})
_VISITOR_LEFT = frozenset({"", "the visitor went away", "the exchange ended", "reset by this side"})
"""Reset reasons that mean the visitor left (the relay's words, see relay_server.edge)."""


class _Failed(Exception):
    """This exchange failed: reset the stream with ``code``; ``detail`` is for the owner."""

    def __init__(self, code: ResetCode, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


class _Exchange:
    """One request to the local server and its response back to the stream.

    It is the :class:`~.http1.ResponseSink` of its response and the
    :class:`~.pool.Receiver` of its connection: the response is handled in the
    connection's callbacks, and :meth:`run` (the stream's task) only waits, except when
    it must send held-back bytes, pump a request body that is still arriving, or bridge
    a WebSocket.

    Where an observer (the request inspector) hooks in, in order: :meth:`run` starts
    (the request head is known), :meth:`_request_body` (each request body chunk, as it
    goes to the local server), :meth:`response_head` (the REPLY went out),
    :meth:`response_body` (each response body piece, as it goes to the visitor), and
    :meth:`_finished` (exactly once, with the status the visitor saw).
    """

    def __init__(self, forwarder: Forwarder, pool: Pool, stream: Stream, head: RequestHead) -> None:
        self.forwarder = forwarder
        self.pool = pool
        self.stream = stream
        self.head = head
        self.started = time.monotonic()
        tap = forwarder.tap
        self.observed: Exchange | None = None if tap is None else tap.request(head)
        self.status = 0
        self.sent = 0
        """Response body bytes passed to the stream."""
        self.conn: LocalConnection | None = None
        self.reader = ResponseReader(
            self, head_request=head.method == "HEAD", upgrade=head.websocket
        )
        self._waiter: asyncio.Future[None] | None = None
        self._held: deque[bytes | memoryview] = deque()
        """Response bytes waiting for credit (reading is paused meanwhile)."""
        self._complete = False
        """The response was read whole from the local server."""
        self._ended = False
        """Our direction of the stream ended."""
        self._request_sent = False
        self._failure: _Failed | None = None
        self._upgraded = False
        self._got_bytes = False
        self._replay: list[bytes] | None = None
        """The whole request, while it can be sent again on a new connection."""
        self._retry = False
        self._reused = False
        self._chunked = False
        self._pump_error: StreamReset | SessionClosed | None = None
        self._channel: _Channel | None = None
        self._done = False
        self._detached = False
        """Served from the connection's callbacks, with no task (:meth:`start_now`)."""

    # -- the task ---------------------------------------------------------------------

    async def run(self) -> None:
        await self._guarded(self._exchange())

    async def _exchange(self) -> None:
        pump: asyncio.Task[None] | None = None
        try:
            data = await self._first_bytes()
            await self._send(data)
            if not self._request_sent:
                pump = self.stream.loop.create_task(self._pump_body())
            await self._respond()
            if self._upgraded:
                await self._bridge()
        finally:
            if pump is not None and not pump.done():
                pump.cancel()

    # -- without a task (Forwarder.serve_now) ---------------------------------------------

    def start_now(self, conn: LocalConnection) -> None:
        """Send a bodyless request on a kept-alive connection, from the stream's callback."""
        fwd = self.forwarder
        data = [request_head(self.head, host=fwd.host_value, default_host=fwd.label)]
        self._replay = data
        self._request_sent = True
        self._reused = True
        self._detached = True
        self.stream.on_failure(self._stream_failed)
        self.conn = conn
        conn.attach(self)
        assert conn.transport is not None
        conn.transport.writelines(data)

    def _detached_wake(self) -> None:
        """What waking the task does, for an exchange that has none: finish, or take a
        task for what must wait."""
        if self._done:
            return
        if self._failure is None and not self._retry and not self._held:
            if self._complete and self._ended:
                self._detached = False
                self._finished(self.status)
            return
        self._detached = False
        self.stream.serve_later(self._resume)

    async def _resume(self, stream: Stream) -> None:
        await self._guarded(self._respond())

    def _stream_failed(self) -> None:
        """The stream was reset or the session ended while no task served it."""
        if self._detached and not self._done:
            self._detached = False
            self._abort()  # the local server sees the visitor leave
            self._finished_early()

    # -- endings shared by both ----------------------------------------------------------

    async def _guarded(self, work: Coroutine[Any, Any, None]) -> None:
        """Run the exchange's waiting part; every way it ends is recorded once."""
        try:
            await work
        except _Failed as failed:
            self._abort()
            self._fail(failed)
        except HeadTooLarge as exc:
            # Sent, this head would end the whole session (the relay must refuse it), and
            # every other request with it: only this one fails.
            self._abort()
            self._fail(
                _Failed(
                    ResetCode.UPSTREAM_HEAD_TOO_LARGE,
                    f"the response head of {exc.size} bytes (encoded) is over the tunnel's "
                    f"limit of {exc.limit} bytes: send fewer or smaller headers (cookies?)",
                )
            )
        except (StreamReset, SessionClosed):
            self._abort()
            self._finished_early()
        except asyncio.CancelledError:
            self._abort()  # the local server sees the visitor leave
            self._finished_early()
            raise
        else:
            self._finished(self.status)
        finally:
            conn = self.conn
            if conn is not None and conn.receiver is self:
                conn.receiver = None
                if not conn.closed:
                    conn.abort()

    async def _first_bytes(self) -> list[bytes]:
        """The request head, with the part of the body already here."""
        stream, head, fwd = self.stream, self.head, self.forwarder
        pieces: list[bytes] = []
        while stream.has_data:
            piece = await stream.read()  # returns at once
            self._request_body(piece)
            pieces.append(piece)
        if stream.peer_ended or head.websocket:
            body = b"".join(pieces)
            length = len(body) if body else None
            first = request_head(
                head, host=fwd.host_value, default_host=fwd.label, body_length=length
            )
            data = [first, body]
            self._replay = data
            self._request_sent = True
            return data
        known = head.header("Content-Length") is not None
        data = [request_head(head, host=fwd.host_value, default_host=fwd.label, chunked=not known)]
        for piece in pieces:
            data.extend(chunk(piece) if not known else (piece,))
        self._chunked = not known
        return data

    async def _send(self, data: list[bytes]) -> None:
        """Write the request on a pooled connection, else a new one."""
        conn = self.pool.take()
        self._reused = conn is not None
        if conn is None:
            conn = await self._connect()
        self.conn = conn
        conn.attach(self)
        assert conn.transport is not None
        conn.transport.writelines(data)

    async def _connect(self) -> LocalConnection:
        label = self.forwarder.label
        try:
            return await self.pool.connect()
        except TimeoutError:
            raise _Failed(
                ResetCode.UPSTREAM_ERROR, f"the local server at {label} did not accept in time"
            ) from None
        except ssl.SSLError as exc:
            raise _Failed(
                ResetCode.UPSTREAM_ERROR,
                f"TLS with the local server at {label} failed: {_why(exc)}",
            ) from None
        except OSError as exc:
            why = _why(exc)  # asyncio says "Connect call failed (...)", uvloop the errno's text
            if not why.startswith("Connect call failed"):
                why = f"Connect call failed: {why}"
            detail = f"nothing accepted the connection on {label} ({why})"
            raise _Failed(ResetCode.UPSTREAM_UNAVAILABLE, detail) from None

    async def _pump_body(self) -> None:
        """Pass a request body that is still arriving to the local server."""
        stream, conn = self.stream, self.conn
        assert conn is not None and conn.transport is not None
        transport = conn.transport
        chunked = self._chunked
        try:
            while piece := await stream.read():
                pieces = [piece]
                while stream.has_data:
                    pieces.append(await stream.read())
                for piece in pieces:
                    self._request_body(piece)
                    if chunked:
                        transport.writelines(chunk(piece))
                    else:
                        transport.write(piece)
                if conn.closed:
                    return
                await conn.drain()
            if chunked:
                transport.write(LAST_CHUNK)
            self._request_sent = True
            if self._complete:
                self._release()
        except (StreamReset, SessionClosed) as exc:
            # The visitor's body broke off: the local server must not take a truncated
            # body for a whole one.
            self._pump_error = exc
            self._abort()
            self._wake()

    async def _respond(self) -> None:
        """Wait for the response (passed on by the callbacks); send what they held back."""
        stream = self.stream
        while True:
            if self._failure is not None:
                raise self._failure
            if self._pump_error is not None:
                raise self._pump_error
            if self._retry:
                await self._resend()
                continue
            if self._held:
                while self._held:
                    data = self._held.popleft()
                    await stream.write(data)
                if self._complete:
                    self._end_stream()
                elif self.conn is not None:
                    self.conn.resume_reading()
                continue
            if self._upgraded or (self._complete and self._ended):
                return
            self._waiter = stream.loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    async def _resend(self) -> None:
        """A kept-alive connection the server had closed: the same request on a new one."""
        assert self._replay is not None
        self._retry = False
        self._reused = False
        self.reader = ResponseReader(
            self, head_request=self.head.method == "HEAD", upgrade=self.head.websocket
        )
        conn = await self._connect()
        self.conn = conn
        conn.attach(self)
        assert conn.transport is not None
        conn.transport.writelines(self._replay)

    def _wake(self) -> None:
        if self._detached:
            self._detached_wake()
            return
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- the connection's callbacks (pool.Receiver) ------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._upgraded or self._failure is not None:
            return
        self._got_bytes = True
        try:
            self.reader.feed(data)
            if self._upgraded:
                # Bytes after the 101 are the WebSocket's: from now on they go to the channel.
                assert self.conn is not None
                self._channel = _Channel(self.conn, self.reader.rest)
        except HeadTooLargeError as exc:
            self._local_failed(ResetCode.UPSTREAM_HEAD_TOO_LARGE, self._detail(exc))
        except InvalidResponse as exc:
            self._local_failed(ResetCode.UPSTREAM_ERROR, self._detail(exc))
        except HeadTooLarge as exc:
            self._local_failed(
                ResetCode.UPSTREAM_HEAD_TOO_LARGE,
                f"the response head of {exc.size} bytes (encoded) is over the tunnel's "
                f"limit of {exc.limit} bytes: send fewer or smaller headers (cookies?)",
            )
        except LocalProtocolError as exc:  # a head the tunnel cannot carry
            self._local_failed(ResetCode.UPSTREAM_ERROR, self._detail(exc))
        except (StreamReset, SessionClosed):
            self._abort()  # the visitor left: the task is being cancelled
            self._wake()

    def eof_received(self) -> None:
        if self._upgraded or self._failure is not None:
            return
        if self._may_retry():
            return
        try:
            self.reader.feed_eof()
        except InvalidResponse as exc:
            self._local_failed(ResetCode.UPSTREAM_ERROR, self._detail(exc))
        except (StreamReset, SessionClosed):
            self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._upgraded:
            return
        if not self._complete and self._failure is None:
            if self._may_retry():
                return
            why = f" ({_why(exc)})" if exc is not None else ""
            self._local_failed(
                ResetCode.UPSTREAM_ERROR,
                f"the local server at {self.forwarder.label} closed the connection{why}",
            )
        self._wake()

    def _may_retry(self) -> bool:
        """A reused connection closed before any answer: say to try a new one."""
        if self._reused and not self._got_bytes and self._replay is not None and not self._retry:
            self._retry = True
            self._abort()  # detach: its later events are not ours
            self._wake()
            return True
        return False

    # -- the response (http1.ResponseSink) ----------------------------------------------------

    def response_head(self, status: int, reason: str, headers: Headers) -> None:
        stream = self.stream
        if status == 101:
            kept = tuple(
                (n, v) for n, v in strip_hop_by_hop(headers) if n.lower() not in _WS_REPLY_DROPPED
            )
            reply = ResponseHead(101, kept)
            stream.reply(reply)
            if self.observed is not None:
                self.observed.response(reply)
            self.status = 101
            self._upgraded = True
            self._wake()
            return
        if self.reader.hop_by_hop:
            headers = tuple(strip_hop_by_hop(headers))
        # The reader held the head to the protocol's rules as it parsed it.
        reply = ResponseHead.prechecked(status, headers)
        ended = self.reader.done
        stream.reply(reply, end_stream=ended)
        if self.observed is not None:
            self.observed.response(reply)
        self.status = status
        self._ended = ended

    def response_body(self, data: bytes) -> None:
        self.sent += len(data)
        if self.observed is not None:
            self.observed.response_body(data)
        if self._held:
            self._held.append(data)
            return
        taken = self.stream.write_nowait(data)
        if taken < len(data):
            self._held.append(memoryview(data)[taken:] if taken else data)
            if self.conn is not None:
                self.conn.pause_reading()
            self._wake()

    def response_end(self) -> None:
        self._complete = True
        if self._request_sent:
            self._release()
        if not self._held and not self._ended:
            self._end_stream()
        self._wake()

    def _end_stream(self) -> None:
        if not self._ended:
            self._ended = True
            self.stream.write_nowait(b"", end=True)

    # -- endings ----------------------------------------------------------------------

    def _release(self) -> None:
        """Back to the pool if the exchange was clean, else closed."""
        conn = self.conn
        if conn is None or conn.receiver is not self:
            return
        if self.reader.reusable and self._request_sent and not conn.closed:
            self.pool.release(conn)
        else:
            conn.receiver = None
            conn.abort()

    def _abort(self) -> None:
        conn = self.conn
        if conn is not None and conn.receiver is self:
            conn.receiver = None
            conn.abort()

    def _local_failed(self, code: ResetCode, detail: str) -> None:
        self._failure = _Failed(code, detail)
        self._abort()
        self._wake()

    def _detail(self, exc: Exception) -> str:
        return f"the local server at {self.forwarder.label} failed: {_why(exc)}"

    def _fail(self, failed: _Failed) -> None:
        """Reset the stream with a reason of our own words; the details go to the owner.

        The relay turns the code into a page for the visitor: what the local server or
        its exception said (an SSH banner, an address) is the owner's business only.
        """
        stream = self.stream
        logger.debug("stream %d: %s", stream.id, failed.detail)
        if failed.code is ResetCode.UPSTREAM_UNAVAILABLE:
            # The relay's page names the port: the one we were configured with.
            reason = unavailable_reason(self.forwarder.port)
        else:
            reason = _RESET_REASONS[failed.code]
        stream.reset(failed.code, reason)
        self._finished(502, failed.detail)

    def _finished_early(self) -> None:
        """The stream was reset (the visitor left, or the relay gave up) or the session ended.

        The owner's log says what the visitor got where it is known: a 499 only when the
        visitor left, not when the relay refused the request or the tunnel closed.
        """
        error = self.stream.error
        if isinstance(error, SessionClosed):
            why = error.reason or error.code.name.lower()
            self._finished(self.status or 502, f"the tunnel closed before the answer ({why})")
        elif isinstance(error, StreamReset) and error.code is ResetCode.UPSTREAM_TIMEOUT:
            self._finished(504, "the app did not answer within the relay's response timeout")
        elif isinstance(error, StreamReset) and error.code is ResetCode.TOO_LARGE:
            self._finished(self.status or 413, "the request body is over the relay's limit")
        elif isinstance(error, StreamReset) and error.reason not in _VISITOR_LEFT:
            self._finished(self.status or 499, f"the relay ended it: {error.reason}")
        else:
            self._finished(self.status or 499, "visitor went away")

    def _finished(self, status: int, error: str | None = None) -> None:
        if self._done:
            return
        self._done = True
        if self.observed is not None:
            self.observed.finished(status, error)
        head = self.head
        path = head.target if len(head.target) <= 200 else head.target[:197] + "..."
        self.forwarder.record(
            RequestRecord(
                head.method, path, status, time.monotonic() - self.started, self.sent, error
            )
        )

    def _request_body(self, piece: bytes) -> None:
        """A request body chunk goes to the local server (a hook point, see the class)."""
        if self.observed is not None:
            self.observed.request_body(piece)

    # -- WebSocket ----------------------------------------------------------------------

    async def _bridge(self) -> None:
        channel = self._channel
        assert channel is not None
        self._finished(101)
        codec = WebSocketCodec(mask=True, max_message=WS_MAX_MESSAGE, xor=fast_mask)
        # 1001 (going away) if the visitor or the tunnel vanished without a close: a
        # client may not send 1011 (RFC 6455 §7.4.1).
        await bridge_codec(self.stream, codec, channel, abort_code=1001)


class _Channel:
    """A local connection after a 101, as the bridge's :class:`~.protocol.aio.ByteChannel`."""

    def __init__(self, conn: LocalConnection, first: bytes) -> None:
        self._conn = conn
        self._buffer: list[bytes] = [first] if first else []
        self._size = len(first)
        self._eof = conn.closed
        self._waiter: asyncio.Future[None] | None = None
        conn.receiver = self

    def data_received(self, data: bytes) -> None:
        self._buffer.append(data)
        self._size += len(data)
        if self._size > WS_READ_HIGH_WATER:
            self._conn.pause_reading()
        self._wake()

    def eof_received(self) -> None:
        self._eof = True
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = True
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def read(self) -> bytes:
        while not self._buffer:
            if self._eof:
                return b""
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        data = b"".join(self._buffer) if len(self._buffer) > 1 else self._buffer[0]
        self._buffer.clear()
        if self._size > WS_READ_HIGH_WATER:
            self._conn.resume_reading()
        self._size = 0
        return data

    def write(self, data: bytes) -> None:
        transport = self._conn.transport
        if transport is not None and not self._conn.closed:
            transport.write(data)

    async def drain(self) -> None:
        await self._conn.drain()

    def close(self) -> None:
        self._conn.receiver = None
        self._conn.close()


def _why(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    if isinstance(exc, TimeoutError):
        return "timed out"
    return _shorten(" ".join((str(exc) or type(exc).__name__).split()))


def _shorten(text: str) -> str:
    return text if len(text) <= 160 else text[:157] + "..."
