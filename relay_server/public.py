"""Public requests: a visitor's request to ``<sub>.<domain>`` becomes one tunnel stream.

:func:`serve` decides, without waiting for anything, whether the relay answers a request
itself (unknown or expired link, a limit, a password, a malformed request) or forwards
it; a forwarded request then runs as one task that relays the response. Its body is
pumped into the stream only while the stream has credit, so the edge stops reading the
visitor's socket when it does not; the response body is written out one chunk at a
time, and each chunk is acknowledged (granting the client more credit) only once the
visitor's socket took it. Memory per request is therefore bounded by the stream window,
however large the body and however slow the visitor.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime
import functools
import hmac
import logging
import time
from typing import TYPE_CHECKING

from tunnel_client.protocol.aio import Stream, bridge_codec
from tunnel_client.protocol.errors import (
    HeadTooLarge,
    ResetCode,
    SessionClosed,
    StreamReset,
    port_of_reason,
)
from tunnel_client.protocol.heads import RequestHead
from tunnel_client.protocol.wsframes import WebSocketCodec

from . import pages
from .directory import Link, LinkState
from .forwarding import forward_request_headers, response_headers
from .http1 import (
    LENGTH,
    NO_BODY,
    ConnectionGone,
    HttpError,
    Request,
    date_line,
    response_head,
    wants_websocket,
    websocket_accept,
    websocket_problem,
)
from .routing import PeerLink

if TYPE_CHECKING:
    from .app import Relay
    from .edge import VisitorConnection

__all__ = ["serve"]

logger = logging.getLogger(__name__)

# What else a request loses on its way: the visitor's credentials for a link with a
# password (they are the relay's to check), and WebSocket extensions, which are never
# negotiated (frames pass through the relay as they are, uncompressed).
_DROPS = {
    (auth, websocket): frozenset(
        (["authorization"] if auth else []) + (["sec-websocket-extensions"] if websocket else [])
    )
    for auth in (False, True)
    for websocket in (False, True)
}
_WWW_AUTHENTICATE = (("WWW-Authenticate", 'Basic realm="sharetunnel", charset="UTF-8"'),)
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


def serve(conn: VisitorConnection, request: Request, sub: str) -> None:
    """Answer or forward one visitor request for the link ``sub``."""
    relay = conn.edge.relay
    config = relay.config
    link = relay.directory.get(sub)
    if link is None:
        conn.send_page(_ended_page(relay, sub), request)
        return
    target = _origin_form(request)
    if target is None:
        conn.send_page(pages.bad_request(_target_problem(request)), request)
        return
    websocket = wants_websocket(request)
    if websocket and (problem := websocket_problem(request)) is not None:
        conn.send_page(pages.bad_request(problem), request)
        return
    limit = config.max_body_bytes
    if limit is not None and request.framing == LENGTH and request.body_length > limit:
        conn.send_page(pages.too_large(limit), request)
        return
    if link.visitor_auth is not None and not _authorized(link, request):
        conn.send_page(pages.unauthorized(), request, extra=_WWW_AUTHENTICATE)
        return
    session = link.session
    if session is None or session.ended is not None:
        conn.send_page(pages.client_away(), request)
        return
    if relay.interstitial is not None and not websocket:
        answer = relay.interstitial.check(link, request, target)
        if answer is not None:
            conn.send_made(answer.status, answer.headers, answer.body, request)
            return
    if session.open_streams >= session.mux.max_streams:  # ours or the client's, the lower
        page = pages.too_many("This link is serving too many requests at once")
        conn.send_page(page, request)
        return
    if not _rate_allows(relay, link):
        conn.send_page(pages.too_many("This link gets too many requests"), request)
        return
    if relay.cluster is not None and isinstance(relay.seam.where(sub), PeerLink):
        relay.observe.cross_node_forward()  # the request goes on the hop to its node
    host = request.host or ""
    # http1 held the request to the tunnel's rules for heads as it parsed it.
    head = RequestHead.prechecked(
        request.method,
        target,
        forward_request_headers(
            request.headers,
            public_host=host,
            scheme=conn.edge.scheme,
            client_ip=conn.visitor_address(request),
            drop=_DROPS[link.visitor_auth is not None, websocket],
        ),
        websocket,
    )
    has_body = request.framing != NO_BODY
    try:
        stream = session.open_stream(head, end_stream=not has_body and not websocket)
    except HeadTooLarge as exc:
        # Under our limit as bytes, but JSON escaping (6 bytes per control or non-ASCII
        # byte) made it too large for an OPEN: refused here, the session carries on.
        logger.debug("request head too large for the tunnel: %s", exc)
        conn.send_page(pages.headers_too_large(config.max_header_bytes), request)
        return
    except SessionClosed:
        conn.send_page(pages.client_away(), request)
        return
    conn.stream = stream
    if has_body:
        if request.expect_continue:
            # Visitors that ask (curl does above 1 MiB) wait for this before the body.
            conn.write(_CONTINUE)
        conn.start_body(request)
    conn.await_reply(config.response_timeout_s)
    _Exchange(conn, request, stream, relay, host, websocket, has_body).start()


def _ended_page(relay: Relay, sub: str) -> pages.ErrorPage:
    ended = relay.directory.ended(sub)
    if ended is None or ended[0] is LinkState.GONE:
        return pages.not_found()
    state, expired_at = ended
    if state is LinkState.REVOKED:
        return pages.revoked()
    when = datetime.datetime.fromtimestamp(expired_at, datetime.UTC)
    return pages.expired(f"{when:%Y-%m-%d %H:%M} UTC")


def _origin_form(request: Request) -> str | None:
    """The request target as a path, or None if it names another host (or none)."""
    target = request.target
    if target[0] == "/":
        return target
    if target == "*":
        return target if request.method == "OPTIONS" else None
    scheme, sep, rest = target.partition("://")
    if not sep or scheme.lower() not in ("http", "https"):
        return None  # authority-form (CONNECT), or not a URI
    cut = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    authority, path = rest[:cut], rest[cut:]
    if "@" in authority or authority.lower() != (request.host or "").lower():
        return None
    return path if path.startswith("/") else "/" + path


def _target_problem(request: Request) -> str:
    """Why :func:`_origin_form` found no path in the request target (for the 400 page)."""
    if request.method == "CONNECT":
        return "This relay serves share links; it does not tunnel CONNECT requests."
    if request.target == "*":
        return "The request target * is for OPTIONS requests only."
    if "://" not in request.target:
        return "The request target must be a path that starts with /."
    return "The request target names a different host."


def _authorized(link: Link, request: Request) -> bool:
    assert link.visitor_auth is not None
    scheme, _, encoded = (request.header("authorization") or "").partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        given = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return False
    return hmac.compare_digest(given.encode(), link.visitor_auth.encode())


def _rate_allows(relay: Relay, link: Link) -> bool:
    """Token bucket per link: ``rate_per_link`` per second, bursts of four seconds' worth."""
    rate = relay.config.rate_per_link
    if rate <= 0:
        return True
    now = time.monotonic()
    burst = max(rate * 4, 1.0)  # below 0.25/s, four seconds' worth is not one request
    if link.rate_checked == 0:
        link.rate_tokens = burst
    else:
        link.rate_tokens = min(burst, link.rate_tokens + (now - link.rate_checked) * rate)
    link.rate_checked = now
    if link.rate_tokens < 1:
        return False
    link.rate_tokens -= 1
    return True


def _error_page_for(relay: Relay, reset: StreamReset) -> pages.ErrorPage:
    # The reason is the client's text: it goes to our log, never onto a page (it could
    # carry the owner's internals, or anything a hostile client wants to show).
    logger.debug("stream reset before its reply: %s", reset)
    match reset.code:
        case ResetCode.UPSTREAM_UNAVAILABLE:
            return pages.local_refused(port_of_reason(reset.reason))
        case ResetCode.UPSTREAM_ERROR:
            return pages.local_invalid()
        case ResetCode.UPSTREAM_HEAD_TOO_LARGE:
            return pages.local_head_too_large()
        case ResetCode.UPSTREAM_TIMEOUT:
            return pages.local_timeout(relay.config.response_timeout_s)
        case ResetCode.TOO_LARGE:
            return pages.too_large(relay.config.max_body_bytes or 0)
        case ResetCode.REFUSED:
            return pages.too_many("The link's owner is serving too many requests at once")
        case _:
            return pages.local_failed()


def _length_problem(request: Request, status: int, lengths: list[str], ended: bool) -> str | None:
    """Why a response head's Content-Length cannot frame its body, or None if it can."""
    if not lengths:
        return None
    lengths = [value.strip() for value in lengths]
    if len(lengths) > 1 or not (lengths[0].isascii() and lengths[0].isdigit()):
        return f"invalid Content-Length {', '.join(lengths)!r:.100}"
    bodyless = request.method == "HEAD" or status in (204, 304)
    if ended and not bodyless and int(lengths[0]) != 0:
        return f"Content-Length {lengths[0]} for a body that was never sent"
    return None


class _Exchange:
    """One forwarded request: its body going in, its response coming back.

    No task serves it unless it needs one: the response head is handled in a callback,
    and a body that arrived with it (most small responses) goes out in the same write.
    A task takes over only for a body still streaming, an upload, or a WebSocket.
    """

    __slots__ = (
        "chunked",
        "conn",
        "declared",
        "failure",
        "has_body",
        "host",
        "keep_alive",
        "out",
        "pump",
        "relay",
        "request",
        "sent",
        "stream",
        "websocket",
    )

    def __init__(
        self,
        conn: VisitorConnection,
        request: Request,
        stream: Stream,
        relay: Relay,
        host: str,
        websocket: bool,
        has_body: bool,
    ) -> None:
        self.conn = conn
        self.request = request
        self.stream = stream
        self.relay = relay
        self.host = host
        self.websocket = websocket
        self.has_body = has_body
        self.failure: pages.ErrorPage | None = None
        """Why the relay itself reset the stream while reading the body, if it did."""
        self.pump: asyncio.Task[None] | None = None
        # The response body's framing, once the head is known.
        self.out = b""
        """Bytes (the head) waiting to leave with the first body bytes."""
        self.chunked = False
        self.declared: int | None = None
        self.sent = 0
        self.keep_alive = False

    def start(self) -> None:
        if self.has_body:
            self.pump = self.conn.loop.create_task(self._pump_body())
        self.stream.add_response_callback(self._on_response)

    def _done(self, keep_alive: bool) -> None:
        """The exchange is over: tidy up the stream, then the connection goes on."""
        stream = self.stream
        if self.pump is not None and not self.pump.done():
            self.pump.cancel()
        # A WebSocket whose close we already passed on is not abandoned: a reset now
        # would cut the client off before it hands that close code to the local server
        # (the visitor drops its connection right after the close).
        closing = self.websocket and not stream.writable
        if stream.error is None and stream.live and not closing:
            # The visitor left, or the answer came before the whole body: either way
            # the client may drop the local request.
            stream.reset(ResetCode.CANCEL, "the exchange ended")
        self.conn.finish(keep_alive=keep_alive)

    async def _pump_body(self) -> None:
        """Copy the visitor's body into the stream while it has credit."""
        conn, stream = self.conn, self.stream
        limit = self.relay.config.max_body_bytes
        total = 0
        try:
            while piece := await conn.read():
                total += len(piece)
                if limit is not None and total > limit:
                    self.failure = pages.too_large(limit)
                    stream.reset(ResetCode.TOO_LARGE, f"request body over {limit} bytes")
                    return
                await stream.write(piece)
            await stream.end()
        except HttpError as exc:
            logger.debug("malformed request body from %s: %s", conn.peer, exc.detail)
            self.failure = pages.refused(exc.status, exc.detail)
            stream.reset(ResetCode.CANCEL, "the visitor's request body was malformed")
        except ConnectionGone:
            stream.reset(ResetCode.CANCEL, "the visitor's request body broke off")
        except (StreamReset, SessionClosed):
            pass  # the response side reports what happened

    def _on_response(self) -> None:
        try:
            self._respond()
        except Exception:
            logger.exception("relaying a response failed")
            self.conn.abort()
            self._done(False)

    def _respond(self) -> None:
        """The response head arrived (or the stream failed): answer the visitor."""
        conn, request, stream = self.conn, self.request, self.stream
        conn.answered()
        try:
            head, ended = stream.response_nowait()
        except StreamReset as reset:
            if conn.closed:
                self._done(False)
                return
            page = self.failure or _error_page_for(self.relay, reset)
            self._done(conn.write_page(page, request))
            return
        except SessionClosed as closed:
            # The request was already forwarded: it may have run, so the visitor must
            # not read "offline, try again" (a retried POST would run twice).
            self._done(conn.write_page(pages.owner_lost(closed.code), request))
            return
        fields = response_headers(
            head.headers, domain=self.relay.config.domain, host=_bare(self.host)
        )
        if head.status == 101:
            conn.status = 101
            conn.task = conn.loop.create_task(self._relay_websocket(fields.headers))
            return
        status = head.status
        problem = _length_problem(request, status, fields.lengths, ended)
        if problem is None:
            conn.status = status
        if problem is not None:
            # Passed on, a lying length would desync the visitor's keep-alive connection.
            logger.debug("stream %d: %s", stream.id, problem)
            stream.reset(ResetCode.PROTOCOL_ERROR, problem)
            self._done(conn.write_page(pages.local_invalid(), request))
            return
        framing = b"" if fields.date else date_line()
        keep_alive = not request.close
        if request.method == "HEAD" or status in (204, 304):
            ended = True
        elif fields.lengths:
            self.declared = int(fields.lengths[0])
        elif ended:
            framing += b"Content-Length: 0\r\n"
        elif request.minor == 1:
            framing += b"Transfer-Encoding: chunked\r\n"
            self.chunked = True
        else:
            keep_alive = False  # HTTP/1.0: the body ends where the connection does
        if not keep_alive:
            framing += b"Connection: close\r\n"
        elif request.minor == 0:
            framing += b"Connection: keep-alive\r\n"
        self.keep_alive = keep_alive
        self.out = response_head(status, fields.headers, framing)
        if ended:
            conn.write(self.out)
            self._done(keep_alive)
            return
        # What came with the head goes out with it; a task waits for the rest, if any.
        try:
            while (chunk := stream.read_nowait()) is not None:
                if not chunk:
                    self._finish_body()
                    return
                if not self._send(chunk):
                    return
        except (StreamReset, SessionClosed) as exc:
            self._broken(exc)
            return
        if self.out:
            conn.write(self.out)  # no body bytes to go with the head: send it now
            self.out = b""
        conn.streaming = True
        conn.arm(conn.loop.time() + self.relay.config.idle_timeout_s)
        conn.task = conn.loop.create_task(self._stream_body())

    def _send(self, chunk: bytes) -> bool:
        """Write one body chunk; False once the exchange ended (length overrun)."""
        self.sent += len(chunk)
        declared = self.declared
        if declared is not None and self.sent > declared:
            # Never more than the head announced: the surplus would be read as the
            # start of the next response on a keep-alive connection.
            chunk = chunk[: len(chunk) - (self.sent - declared)]
            self.conn.write(self.out + chunk)
            self.conn.abort()
            self._done(False)
            return False
        if self.chunked:
            chunk = b"%x\r\n%b\r\n" % (len(chunk), chunk)
        if self.out:
            chunk = self.out + chunk
            self.out = b""
        self.conn.write(chunk)
        return True

    def _finish_body(self) -> None:
        conn = self.conn
        if self.declared is not None and self.declared != self.sent:
            conn.write(self.out)
            conn.abort()
            self._done(False)
            return
        if self.chunked:
            conn.write(self.out + b"0\r\n\r\n")
        elif self.out:
            conn.write(self.out)
        self._done(self.keep_alive)

    def _broken(self, exc: Exception) -> None:
        # Headers are (about to be) out: the only honest signal left is a broken
        # connection.
        logger.debug("stream %d ended early: %s", self.stream.id, exc)
        self.conn.write(self.out)
        self.conn.abort()
        self._done(False)

    async def _stream_body(self) -> None:
        """Relay the rest of a response body as the visitor's socket takes it."""
        conn, stream = self.conn, self.stream
        try:
            while chunk := await stream.read():
                if not self._send(chunk):
                    return
                if conn.write_paused:
                    await conn.drain()
                if conn.closed:
                    self._done(False)
                    return
        except (StreamReset, SessionClosed) as exc:
            self._broken(exc)
            return
        except BaseException:
            self.conn.abort()
            self._done(False)
            raise
        self._finish_body()

    async def _relay_websocket(self, headers: list[tuple[str, str]]) -> None:
        """Complete the visitor's handshake with the app's 101, then relay frames."""
        conn = self.conn
        try:
            # No extension was offered to the app, so none can be in force.
            headers = [(n, v) for n, v in headers if n.lower() != "sec-websocket-extensions"]
            if not any(n.lower() == "sec-websocket-accept" for n, _ in headers):
                # A client from before the handshake passed end to end answers for the
                # app without the accept value (its relay computed it): compute it here.
                key = self.request.header("sec-websocket-key") or ""
                headers.append(("Sec-WebSocket-Accept", websocket_accept(key)))
            upgrade = b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
            conn.write(response_head(101, headers, upgrade))
            conn.upgrade()
            await bridge_codec(self.stream, WebSocketCodec(mask=False), _Channel(conn))
        finally:
            self._done(False)


class _Channel:
    """The visitor's connection, upgraded, as the WebSocket bridge's byte channel."""

    __slots__ = ("conn",)

    def __init__(self, conn: VisitorConnection) -> None:
        self.conn = conn

    async def read(self) -> bytes:
        return bytes(await self.conn.read())

    def write(self, data: bytes) -> None:
        self.conn.write(data)

    async def drain(self) -> None:
        await self.conn.drain()

    def close(self) -> None:
        self.conn.close()


@functools.lru_cache(maxsize=1024)
def _bare(host: str) -> str:
    """A Host value without its port, lowercased."""
    if host.endswith("]"):
        return host.lower()
    return host.rpartition(":")[0].lower() if ":" in host else host.lower()
