"""Each stream the relay opens becomes one request to the local server, and back.

The request target goes out exactly as the visitor sent it (no normalisation: Gradio's
``/file=<absolute path>`` URLs depend on it), bodies pass through byte for byte (no
decompression), and nothing is buffered whole: the request body is read from the stream
as the local server consumes it, the response body is written as credit allows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from .protocol.aio import Stream, WebSocketClosed
from .protocol.errors import ResetCode, SessionClosed, StreamReset
from .protocol.heads import RequestHead, ResponseHead, strip_hop_by_hop
from .tap import Exchange, Tap

__all__ = ["Forwarder", "RequestRecord"]

logger = logging.getLogger(__name__)

READ_BUFFER_BYTES = 64 * 1024
"""aiohttp's read buffer per local response (it pauses reading at twice this)."""

# aiohttp would otherwise add its own values for these when the visitor sent none.
_SKIP_AUTO_HEADERS = frozenset({"Accept", "Accept-Encoding", "User-Agent", "Content-Type"})
_WS_DATA = (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY)
# The client does its own WebSocket handshake with the local server.
_WS_HANDSHAKE_HEADERS = frozenset(
    {
        "sec-websocket-key",
        "sec-websocket-version",
        "sec-websocket-extensions",
        "sec-websocket-protocol",
    }
)


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


class Forwarder:
    """Serves tunnel streams from a local HTTP server."""

    def __init__(
        self,
        local_host: str,
        port: int,
        *,
        on_request: Callable[[RequestRecord], None] | None = None,
        tap: Tap | None = None,
    ) -> None:
        self.local_host = local_host
        self.port = port
        host = f"[{local_host}]" if ":" in local_host else local_host
        self.base = f"http://{host}:{port}"
        self.label = f"{host}:{port}"
        self.on_request = on_request
        self.tap = tap
        """Told about every exchange (tunnel_client.tap), e.g. the request inspector."""
        self._http: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Forwarder:
        self._http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, force_close=False, enable_cleanup_closed=True),
            cookie_jar=aiohttp.DummyCookieJar(),  # never carry one visitor's cookies to another
            auto_decompress=False,
            # aiohttp buffers up to twice this per response before it stops reading the
            # local server; its 256 KiB default let each stalled download hold ~1.5 MiB.
            read_bufsize=READ_BUFFER_BYTES,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
            skip_auto_headers=_SKIP_AUTO_HEADERS,
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._http is not None:
            await self._http.close()

    def _record(
        self,
        head: RequestHead,
        status: int,
        started: float,
        sent: int,
        error: str | None = None,
        *,
        exchange: Exchange | None,
    ) -> None:
        if exchange is not None:
            exchange.finished(status, error)
        if self.on_request is not None:
            path = head.target if len(head.target) <= 200 else head.target[:197] + "..."
            self.on_request(
                RequestRecord(head.method, path, status, time.monotonic() - started, sent, error)
            )

    async def serve(self, stream: Stream) -> None:
        """Answer one stream; never raises for the local server's failures."""
        assert stream.request is not None and self._http is not None
        head = stream.request
        started = time.monotonic()
        if head.target == "*":
            stream.reset(ResetCode.PROTOCOL_ERROR, "OPTIONS * is not forwarded")
            return
        exchange = self.tap.request(head) if self.tap is not None else None
        if head.websocket:
            await self._serve_websocket(stream, head, started, exchange)
            return
        url = URL(self.base + head.target, encoded=True)
        headers = CIMultiDict(head.headers)
        body = None if stream._eof and not stream._chunks else _body(stream, exchange)
        status, sent = 0, 0
        try:
            async with self._http.request(
                head.method,
                url,
                headers=headers,
                data=body,
                allow_redirects=False,
                compress=None,
                chunked=None,
                expect100=False,
            ) as response:
                status = response.status
                reply = ResponseHead(status, tuple(strip_hop_by_hop(response.headers.items())))
                no_body = head.method == "HEAD" or status in (204, 304)
                stream.reply(reply, end_stream=no_body)
                if exchange is not None:
                    exchange.response(reply)
                if not no_body:
                    async for chunk in response.content.iter_any():
                        sent += len(chunk)
                        if exchange is not None:
                            exchange.response_body(chunk)
                        await stream.write(chunk)
                    await stream.end()
        except aiohttp.ClientConnectorError as exc:
            reason = f"nothing accepted the connection on {self.label} ({_why(exc)})"
            stream.reset(ResetCode.UPSTREAM_UNAVAILABLE, reason)
            self._record(head, 502, started, sent, reason, exchange=exchange)
            return
        except (StreamReset, SessionClosed):
            self._record(head, status or 499, started, sent, "visitor went away", exchange=exchange)
            return
        except asyncio.CancelledError:
            self._record(head, status or 499, started, sent, "visitor went away", exchange=exchange)
            raise
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as exc:
            reason = f"the local server at {self.label} failed: {_why(exc)}"
            stream.reset(ResetCode.UPSTREAM_ERROR, reason)
            self._record(head, 502, started, sent, reason, exchange=exchange)
            return
        self._record(head, status, started, sent, exchange=exchange)

    async def _serve_websocket(
        self, stream: Stream, head: RequestHead, started: float, exchange: Exchange | None
    ) -> None:
        assert self._http is not None
        url = URL(self.base + head.target, encoded=True)
        offered = head.header("Sec-WebSocket-Protocol") or ""
        protocols = tuple(p.strip() for p in offered.split(",") if p.strip())
        headers = CIMultiDict(
            (n, v) for n, v in head.headers if n.lower() not in _WS_HANDSHAKE_HEADERS
        )
        try:
            ws = await self._http.ws_connect(
                url,
                headers=headers,
                protocols=protocols,
                autoping=True,
                compress=0,
                max_msg_size=16 << 20,
                autoclose=True,
            )
        except aiohttp.WSServerHandshakeError as exc:
            # The local server declined the upgrade: pass its status on.
            status = exc.status if 200 <= exc.status <= 599 else 502
            refusal = ResponseHead(status, (("Content-Length", "0"),))
            stream.reply(refusal, end_stream=True)
            if exchange is not None:
                exchange.response(refusal)
            self._record(head, status, started, 0, exchange=exchange)
            return
        except aiohttp.ClientConnectorError as exc:
            reason = f"nothing accepted the connection on {self.label} ({_why(exc)})"
            stream.reset(ResetCode.UPSTREAM_UNAVAILABLE, reason)
            self._record(head, 502, started, 0, reason, exchange=exchange)
            return
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            reason = f"the local server at {self.label} failed: {_why(exc)}"
            stream.reset(ResetCode.UPSTREAM_ERROR, reason)
            self._record(head, 502, started, 0, reason, exchange=exchange)
            return
        protocol = (("Sec-WebSocket-Protocol", ws.protocol),) if ws.protocol else ()
        upgraded = ResponseHead(101, protocol)
        stream.reply(upgraded)
        if exchange is not None:
            exchange.response(upgraded)
        self._record(head, 101, started, 0, exchange=exchange)
        async with ws:
            await _relay_websocket(stream, ws)


async def _relay_websocket(stream: Stream, ws: aiohttp.ClientWebSocketResponse) -> None:
    async def local_to_visitor() -> None:
        # receive(), not `async for`: the CLOSE message carries the reason to pass on.
        while (msg := await ws.receive()).type in _WS_DATA:
            if msg.type is aiohttp.WSMsgType.TEXT:
                await stream.send_message(msg.data.encode(), text=True)
            else:
                await stream.send_message(msg.data, text=False)
        reason = msg.extra if msg.type is aiohttp.WSMsgType.CLOSE and msg.extra else ""
        if stream.writable:
            stream.send_close(ws.close_code or 1000, reason)

    async def visitor_to_local() -> None:
        while True:
            item = await stream.receive_message()
            if isinstance(item, WebSocketClosed):
                await ws.close(code=item.code, message=item.reason.encode())
                return
            if item.text:
                await ws.send_str(item.data.decode("utf-8", "replace"))
            else:
                await ws.send_bytes(item.data)

    down = asyncio.create_task(local_to_visitor())
    up = asyncio.create_task(visitor_to_local())
    try:
        done, _ = await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
        other = down if up in done else up
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(other), 5)
    finally:
        for task in (up, down):
            task.cancel()
        await asyncio.gather(up, down, return_exceptions=True)


async def _body(stream: Stream, exchange: Exchange | None) -> AsyncIterator[bytes]:
    while chunk := await stream.read():
        if exchange is not None:
            exchange.request_body(chunk)
        yield chunk


def _why(exc: BaseException) -> str:
    if isinstance(exc, aiohttp.ClientConnectorError):
        return exc.os_error.strerror or str(exc.os_error)
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    text = (str(exc) or type(exc).__name__).splitlines()[0]
    return text if len(text) <= 160 else text[:157] + "..."
