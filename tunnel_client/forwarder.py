"""Each stream the relay opens becomes one request to the local server, and back.

The request target goes out exactly as the visitor sent it (no normalisation: Gradio's
``/file=<absolute path>`` URLs depend on it), bodies pass through byte for byte (no
decompression), and nothing is buffered whole: the request body is read from the stream
as the local server consumes it, the response body is written as credit allows.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from .protocol.aio import Stream, bridge_websocket
from .protocol.errors import (
    HeadTooLarge,
    ResetCode,
    SessionClosed,
    StreamReset,
    unavailable_reason,
)
from .protocol.heads import RequestHead, ResponseHead, strip_hop_by_hop

__all__ = ["Forwarder", "RequestRecord"]

logger = logging.getLogger(__name__)

READ_BUFFER_BYTES = 64 * 1024
"""aiohttp's read buffer per local response (it pauses reading at twice this)."""

# aiohttp would otherwise add its own values for these when the visitor sent none.
_SKIP_AUTO_HEADERS = frozenset({"Accept", "Accept-Encoding", "User-Agent", "Content-Type"})
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
    """What went wrong, with the details (for the owner's eyes only: visitors see a page
    that says what happened in plain words, never this)."""


class Forwarder:
    """Serves tunnel streams from a local HTTP server."""

    def __init__(
        self,
        local_host: str,
        port: int,
        *,
        scheme: str = "http",
        insecure: bool = False,
        on_request: Callable[[RequestRecord], None] | None = None,
    ) -> None:
        self.local_host = local_host
        self.port = port
        host = f"[{local_host}]" if ":" in local_host else local_host
        self.base = f"{scheme}://{host}:{port}"
        # https: aiohttp verifies the local server's certificate unless told to accept any.
        self._verify = not insecure
        self.label = f"{host}:{port}"
        self.on_request = on_request
        self._http: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Forwarder:
        self._http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                limit=0, force_close=False, enable_cleanup_closed=True, ssl=self._verify
            ),
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
        self, head: RequestHead, status: int, started: float, sent: int, error: str | None = None
    ) -> None:
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
        if head.websocket:
            await self._serve_websocket(stream, head, started)
            return
        url = URL(self.base + head.target, encoded=True)
        headers = CIMultiDict(head.headers)
        body = None if stream._eof and not stream._chunks else _body(stream)
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
                reply_headers = tuple(strip_hop_by_hop(response.headers.items()))
                no_body = head.method == "HEAD" or status in (204, 304)
                stream.reply(ResponseHead(status, reply_headers), end_stream=no_body)
                if not no_body:
                    async for chunk in response.content.iter_any():
                        sent += len(chunk)
                        await stream.write(chunk)
                    await stream.end()
        except aiohttp.ClientConnectorError as exc:
            self._unavailable(stream, head, started, exc)
            return
        except HeadTooLarge as exc:
            # Sent, this head would end the whole session (the relay must refuse it), and
            # every other request with it: only this one fails.
            detail = (
                f"the response head of {exc.size} bytes (encoded) is over the tunnel's "
                f"limit of {exc.limit} bytes: send fewer or smaller headers (cookies?)"
            )
            self._fail(stream, head, started, ResetCode.UPSTREAM_HEAD_TOO_LARGE, detail)
            return
        except (StreamReset, SessionClosed):
            status, why = _ended_early(stream, status)
            self._record(head, status, started, sent, why)
            return
        except asyncio.CancelledError:
            status, why = _ended_early(stream, status)
            self._record(head, status, started, sent, why)
            raise
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as exc:
            detail = f"the local server at {self.label} failed: {_why(exc)}"
            self._fail(stream, head, started, ResetCode.UPSTREAM_ERROR, detail, sent)
            return
        self._record(head, status, started, sent)

    def _fail(
        self,
        stream: Stream,
        head: RequestHead,
        started: float,
        code: ResetCode,
        detail: str,
        sent: int = 0,
    ) -> None:
        """Reset the stream with a reason of our own words; the details go to the owner.

        The relay turns the code into a page for the visitor: what the local server or
        its exception said (an SSH banner, an address) is the owner's business only.
        """
        logger.debug("stream %d: %s", stream.id, detail)
        if code is ResetCode.UPSTREAM_UNAVAILABLE:
            # The relay's page names the port: the one we were configured with.
            reason = unavailable_reason(self.port)
        else:
            reason = _RESET_REASONS[code]
        stream.reset(code, reason)
        self._record(head, 502, started, sent, detail)

    def _unavailable(
        self, stream: Stream, head: RequestHead, started: float, exc: Exception
    ) -> None:
        detail = f"nothing accepted the connection on {self.label} ({_why(exc)})"
        self._fail(stream, head, started, ResetCode.UPSTREAM_UNAVAILABLE, detail)

    async def _serve_websocket(self, stream: Stream, head: RequestHead, started: float) -> None:
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
            stream.reply(ResponseHead(status, (("Content-Length", "0"),)), end_stream=True)
            self._record(head, status, started, 0)
            return
        except aiohttp.ClientConnectorError as exc:
            self._unavailable(stream, head, started, exc)
            return
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            detail = f"the local server at {self.label} failed: {_why(exc)}"
            self._fail(stream, head, started, ResetCode.UPSTREAM_ERROR, detail)
            return
        reply = (("Sec-WebSocket-Protocol", ws.protocol),) if ws.protocol else ()
        stream.reply(ResponseHead(101, reply))
        self._record(head, 101, started, 0)
        async with ws:
            # 1001 (going away) if the visitor or the tunnel vanished without a close.
            await bridge_websocket(stream, ws, abort_code=1001)


# What the relay hears with a reset: fixed words, never an exception's text.
_RESET_REASONS = {
    ResetCode.UPSTREAM_ERROR: "the local server's answer was not valid HTTP or broke off",
    ResetCode.UPSTREAM_HEAD_TOO_LARGE: "the local server's response head is too large",
}


async def _body(stream: Stream) -> AsyncIterator[bytes]:
    while chunk := await stream.read():
        yield chunk


def _ended_early(stream: Stream, status: int) -> tuple[int, str]:
    """What the visitor saw when the relay reset the stream before we finished."""
    error = stream.error
    if isinstance(error, StreamReset) and error.code is ResetCode.UPSTREAM_TIMEOUT:
        return 504, "the app did not answer within the relay's response timeout"
    return status or 499, "visitor went away"


def _why(exc: BaseException) -> str:
    if isinstance(exc, aiohttp.ClientConnectorError):
        return exc.os_error.strerror or str(exc.os_error)
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    if isinstance(exc, aiohttp.ClientResponseError) and exc.message:
        # A parser complaint ("Bad status line: ... b'SSH-2.0-OpenSSH_9.2'") spans lines,
        # and its last lines say what the server sent instead of HTTP: keep them all.
        return _shorten(" ".join(exc.message.split()))
    return _shorten((str(exc) or type(exc).__name__).splitlines()[0])


def _shorten(text: str) -> str:
    return text if len(text) <= 160 else text[:157] + "..."
