"""Public requests: a visitor's request to ``<sub>.<domain>`` becomes one tunnel stream.

The request body is pumped into the stream only while the stream has credit, so
aiohttp's read watermarks push back on the visitor's socket; the response body is
written out one chunk at a time, and each chunk is acknowledged (granting the client
more credit) only once the visitor's socket took it. Memory per request is therefore
bounded by the stream window, however large the body and however slow the visitor.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime
import hmac
import logging
import time
from typing import TYPE_CHECKING

from aiohttp import web
from yarl import URL

from tunnel_client.protocol.aio import Stream, bridge_websocket
from tunnel_client.protocol.errors import (
    HeadTooLarge,
    LocalProtocolError,
    ResetCode,
    SessionClosed,
    StreamReset,
    port_of_reason,
)
from tunnel_client.protocol.heads import RequestHead, ResponseHead

from . import pages
from .directory import Link, LinkState
from .forwarding import forward_request_headers, peer_address, response_headers
from .routing import PeerLink

if TYPE_CHECKING:
    from .app import Relay

__all__ = ["handle_public"]

logger = logging.getLogger(__name__)

_BAD_BODY_ERRORS = (ConnectionError, asyncio.IncompleteReadError, OSError)


def _header_bytes(request: web.BaseRequest) -> int:
    line = len(request.method) + len(request.raw_path) + 12
    return line + sum(len(n) + len(v) + 4 for n, v in request.raw_headers)


def _origin_form(request: web.BaseRequest) -> str | None:
    """The request target as a path, or None if an absolute-form target names another host."""
    target = request.raw_path
    if target.startswith("/"):
        return target
    if target == "*":
        return target
    url = URL(target, encoded=True)
    host = request.headers.get("Host", "").lower()
    if not url.is_absolute() or url.raw_authority.lower() != host:
        return None
    return url.raw_path_qs or "/"


def _wants_websocket(request: web.BaseRequest) -> bool:
    return (
        request.method == "GET"
        and request.headers.get("Upgrade", "").lower() == "websocket"
        and "upgrade" in request.headers.get("Connection", "").lower()
    )


def _authorized(tunnel: Link, request: web.BaseRequest) -> bool:
    assert tunnel.visitor_auth is not None
    scheme, _, encoded = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        given = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return False
    return hmac.compare_digest(given.encode(), tunnel.visitor_auth.encode())


def _rate_allows(relay: Relay, tunnel: Link) -> bool:
    """Token bucket per link: ``rate_per_link`` per second, bursts of four seconds' worth."""
    rate = relay.config.rate_per_link
    if rate <= 0:
        return True
    now = time.monotonic()
    burst = max(rate * 4, 1.0)  # below 0.25/s, four seconds' worth is not one request
    if tunnel.rate_checked == 0:
        tunnel.rate_tokens = burst
    else:
        tunnel.rate_tokens = min(burst, tunnel.rate_tokens + (now - tunnel.rate_checked) * rate)
    tunnel.rate_checked = now
    if tunnel.rate_tokens < 1:
        return False
    tunnel.rate_tokens -= 1
    return True


async def handle_public(relay: Relay, request: web.BaseRequest, sub: str) -> web.StreamResponse:
    """Serve one visitor request for the link ``sub``, and report it when it is over."""
    started = time.monotonic()
    response: web.StreamResponse | None = None
    status = 499  # cancelled: the visitor left before it had an answer
    try:
        response = await _serve(relay, request, sub)
        status = response.status
        return response
    except Exception:
        status = 500
        raise
    finally:
        relay.observe.request_done(
            sub,
            request.method,
            request.raw_path,
            status,
            request.content.total_bytes,
            _bytes_out(request, response),
            time.monotonic() - started,
            peer_address(request, relay.config.trusted_proxies),
        )


def _bytes_out(request: web.BaseRequest, response: web.StreamResponse | None) -> int:
    """Bytes written to the visitor: a relayed response's head and body as sent; for a
    page aiohttp has yet to send, its body."""
    writer = getattr(request, "_payload_writer", None)
    sent: int = getattr(writer, "output_size", 0)
    if sent == 0 and isinstance(response, web.Response) and not response.prepared:
        body = response.body
        return len(body) if isinstance(body, bytes | bytearray) else 0
    return sent


async def _serve(relay: Relay, request: web.BaseRequest, sub: str) -> web.StreamResponse:
    config = relay.config
    tunnel = relay.directory.get(sub)
    if tunnel is None:
        ended = relay.directory.ended(sub)
        if ended is None or ended[0] is LinkState.GONE:
            return pages.error_response(request, pages.not_found())
        state, expired_at = ended
        if state is LinkState.REVOKED:
            return pages.error_response(request, pages.revoked())
        when = datetime.datetime.fromtimestamp(expired_at, datetime.UTC)
        return pages.error_response(request, pages.expired(f"{when:%Y-%m-%d %H:%M} UTC"))
    if _header_bytes(request) > config.max_header_bytes:
        return pages.error_response(request, pages.headers_too_large(config.max_header_bytes))
    target = _origin_form(request)
    if target is None:
        return pages.error_response(
            request, pages.bad_request("The request target names a different host.")
        )
    limit = config.max_body_bytes
    if limit is not None and (request.content_length or 0) > limit:
        return pages.error_response(request, pages.too_large(limit))
    if tunnel.visitor_auth is not None and not _authorized(tunnel, request):
        response = pages.error_response(request, pages.unauthorized())
        response.headers["WWW-Authenticate"] = 'Basic realm="sharetunnel", charset="UTF-8"'
        return response
    session = tunnel.session
    if session is None or session.ended is not None:
        return pages.error_response(request, pages.client_away())
    if session.open_streams >= session.mux.max_streams:  # ours or the client's, the lower
        return pages.error_response(
            request, pages.too_many("This link is serving too many requests at once")
        )
    if not _rate_allows(relay, tunnel):
        return pages.error_response(request, pages.too_many("This link gets too many requests"))
    if relay.cluster is not None and isinstance(relay.seam.where(sub), PeerLink):
        relay.observe.cross_node_forward()  # the request goes on the hop to its node

    websocket = _wants_websocket(request)
    public_host = request.headers.get("Host", "")
    drop = ("authorization",) if tunnel.visitor_auth is not None else ()
    try:
        head = RequestHead(
            request.method,
            target,
            forward_request_headers(
                request,
                public_host=public_host,
                scheme=config.scheme,
                client_ip=peer_address(request, config.trusted_proxies),
                drop=drop,
            ),
            websocket=websocket,
        )
    except LocalProtocolError as exc:
        return pages.error_response(request, pages.bad_request(f"Unusable request: {exc}."))
    has_body = request.body_exists and not websocket
    try:
        stream = session.open_stream(head, end_stream=not has_body and not websocket)
    except HeadTooLarge as exc:
        # Under our limit as bytes, but JSON escaping (6 bytes per control or non-UTF-8
        # byte) made it too large for an OPEN: refused here, the session carries on.
        logger.debug("request head too large for the tunnel: %s", exc)
        return pages.error_response(request, pages.headers_too_large(config.max_header_bytes))
    except SessionClosed:
        return pages.error_response(request, pages.client_away())
    pump = (
        asyncio.create_task(_pump_body(request, stream, limit, config.idle_timeout_s))
        if has_body
        else None
    )
    try:
        return await _relay_response(relay, request, stream, websocket, public_host)
    except ConnectionError as exc:
        # The visitor left just as its answer was being written: nobody is left to tell
        # (aiohttp fails writing this one quietly), and the stream is reset below.
        logger.debug("the visitor of stream %d went away: %r", stream.id, exc)
        return web.Response(status=499)
    finally:
        if pump is not None and not pump.done():
            pump.cancel()
        # A WebSocket whose close we already passed on is not abandoned: a reset
        # now would cut the client off before it hands that close code to the
        # local server (the visitor drops its connection right after the close).
        closing = websocket and not stream.writable
        if stream.error is None and stream.live and not closing:
            # The visitor left (or we failed) before the exchange finished: let the
            # client cancel its local request.
            stream.reset(ResetCode.CANCEL, "the visitor went away")


class _IdleDeadline:
    """Pushes an ``asyncio.timeout`` back whenever bytes move, cheaply.

    Moving a timer is a heap operation and bytes move once per chunk, so the deadline is
    moved only once a sixteenth of the timeout has passed since it last was: a silent
    stream is cut after between 15/16 and all of the idle timeout.
    """

    __slots__ = ("_idle", "_loop", "_next_move", "_timeout")

    def __init__(self, timeout: asyncio.Timeout, idle: float) -> None:
        self._timeout = timeout
        self._idle = idle
        self._loop = asyncio.get_running_loop()
        self._next_move = self._loop.time() + idle / 16

    def progress(self) -> None:
        now = self._loop.time()
        if now >= self._next_move:
            self._timeout.reschedule(now + self._idle)
            self._next_move = now + self._idle / 16


async def _pump_body(
    request: web.BaseRequest, stream: Stream, limit: int | None, idle: float
) -> None:
    """Copy the visitor's body into the stream while it has credit."""
    if request.headers.get("Expect", "").lower() == "100-continue":
        # Visitors that ask (curl does above 1 MiB) wait for this before sending a body.
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    total = 0
    try:
        async with asyncio.timeout(idle) as idle_timer:
            deadline = _IdleDeadline(idle_timer, idle)
            while True:
                chunk = await request.content.readany()
                if not chunk:
                    break
                total += len(chunk)
                if limit is not None and total > limit:
                    stream.reset(ResetCode.TOO_LARGE, f"request body over {limit} bytes")
                    return
                await stream.write(chunk)
                deadline.progress()
        await stream.end()
    except TimeoutError:
        stream.reset(ResetCode.CANCEL, f"the visitor's upload stalled for {idle:g} s")
    except (StreamReset, SessionClosed):
        pass  # the response side reports what happened
    except _BAD_BODY_ERRORS as exc:
        logger.debug("visitor's request body broke off: %r", exc)
        stream.reset(ResetCode.CANCEL, "the visitor's request body broke off")
    except Exception as exc:  # aiohttp's payload errors do not share a base we can name
        logger.debug("cannot read the visitor's request body: %r", exc)
        stream.reset(ResetCode.CANCEL, "the visitor's request body was malformed")


def _error_page_for(relay: Relay, reset: StreamReset) -> pages.ErrorPage:
    # The reason is the client's text: it goes to our log, never onto a page (it could
    # carry the owner's internals, or anything a hostile client wants to show).
    logger.debug("stream reset by the client before its reply: %s", reset)
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


async def _relay_response(
    relay: Relay, request: web.BaseRequest, stream: Stream, websocket: bool, public_host: str
) -> web.StreamResponse:
    timeout = relay.config.response_timeout_s
    try:
        # asyncio.timeout, not wait_for: no extra task and loop turns per request.
        async with asyncio.timeout(timeout):
            head, ended = await stream.response()
    except TimeoutError:
        stream.reset(ResetCode.UPSTREAM_TIMEOUT, f"no response within {timeout:g} s")
        return pages.error_response(request, pages.local_timeout(timeout))
    except StreamReset as reset:
        return pages.error_response(request, _error_page_for(relay, reset))
    except SessionClosed as closed:
        # The request was already forwarded: it may have run, so the visitor must not
        # read "offline, try again" (a retried POST would run twice).
        return pages.error_response(request, pages.owner_lost(closed.code))
    if head.status == 101:
        return await _relay_websocket(request, stream, head)
    problem = _length_problem(request, head, ended)
    if problem is not None:
        # Passed on, a lying length would desync the visitor's keep-alive connection.
        logger.debug("stream %d: %s", stream.id, problem)
        stream.reset(ResetCode.PROTOCOL_ERROR, problem)
        return pages.error_response(request, pages.local_invalid())
    response = _Response(status=head.status)
    host = public_host.rsplit(":", 1)[0].lower() if ":" in public_host else public_host.lower()
    for name, value in response_headers(head.headers, domain=relay.config.domain, host=host):
        response.headers.add(name, value)
    if request.method == "HEAD" or head.status in (204, 304):
        ended = True
    declared = head.header("Content-Length")
    if declared is None and ended and head.status not in (204, 304) and request.method != "HEAD":
        response.headers["Content-Length"] = "0"
    await response.prepare(request)
    if ended:
        await response.write_eof()
        return response
    sent = 0
    idle = relay.config.idle_timeout_s
    try:
        # No cap on a streaming response, only on silence: a stream that moves no byte
        # for idle_timeout (default 15 min, far above an SSE heartbeat) is dropped.
        async with asyncio.timeout(idle) as idle_timer:
            deadline = _IdleDeadline(idle_timer, idle)
            if not stream.has_data:
                await response.write(b"")  # no body bytes to go with the head: send it now
            while chunk := await stream.read():
                sent += len(chunk)
                await response.write(chunk)
                deadline.progress()
    except TimeoutError:
        logger.info("stream %d idle for %g s: closing it", stream.id, idle)
        stream.reset(ResetCode.CANCEL, f"no data for {idle:g} s")
        _abort(request)
        return response
    except (StreamReset, SessionClosed) as exc:
        # Headers are out: the only honest signal left is a broken connection.
        logger.debug("stream %d ended early: %s", stream.id, exc)
        _abort(request)
        return response
    if declared is not None and declared.isdigit() and int(declared) != sent:
        _abort(request)
        return response
    await response.write_eof()
    return response


class _Response(web.StreamResponse):
    """A response whose head waits for the first body write (or write_eof).

    aiohttp sends a StreamResponse's head at once; holding it lets a body that arrived
    with the head (most small responses) leave in the same write and TCP segment.
    """

    _send_headers_immediately = False


def _length_problem(request: web.BaseRequest, head: ResponseHead, ended: bool) -> str | None:
    """Why a response head's Content-Length cannot frame its body, or None if it can."""
    lengths = [value.strip() for name, value in head.headers if name.lower() == "content-length"]
    if not lengths:
        return None
    if len(lengths) > 1 or not (lengths[0].isascii() and lengths[0].isdigit()):
        return f"invalid Content-Length {', '.join(lengths)!r:.100}"
    bodyless = request.method == "HEAD" or head.status in (204, 304)
    if ended and not bodyless and int(lengths[0]) != 0:
        return f"Content-Length {lengths[0]} for a body that was never sent"
    return None


def _abort(request: web.BaseRequest) -> None:
    transport = request.transport
    if transport is not None:
        transport.close()


async def _relay_websocket(
    request: web.BaseRequest, stream: Stream, head: ResponseHead
) -> web.StreamResponse:
    """Accept the visitor's WebSocket and relay it message by message, both ways."""
    protocol = head.header("Sec-WebSocket-Protocol")
    ws = web.WebSocketResponse(
        protocols=(protocol,) if protocol else (),
        autoping=True,
        compress=False,
        max_msg_size=16 << 20,
    )
    await ws.prepare(request)
    await bridge_websocket(stream, ws)
    return ws
