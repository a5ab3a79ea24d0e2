"""aiohttp's server with one addition: a deadline for receiving request headers.

aiohttp limits idle keep-alive time but not how long a visitor may take to send a
request head, so a client trickling one header byte at a time (slowloris) could hold a
connection forever. Here a timer starts when a connection opens, and again with the
first byte of each later request head; it is cancelled once the head is complete, and
closes the connection if it fires first.

Two more things strangers can do to any aiohttp server are handled here too:

* a request head that grows without end (headers each under the parser's line limit,
  but many of them) is answered with 431 as soon as it exceeds ``max_header_bytes``,
  so a connection never buffers more than about that much of a head;
* a malformed request is the visitor's fault, not the relay's: the parser's complaint
  becomes our 400 page (431 for a line or header count over the parser's limits)
  and a debug log line, never an ERROR with a traceback per hostile request.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong
from aiohttp.web_protocol import RequestHandler

from . import pages

__all__ = ["RelayHTTPServer"]


class _HeaderDeadlineHandler(RequestHandler):
    """A RequestHandler that drops connections slow to send a request head."""

    def __init__(
        self,
        manager: web.Server,
        *,
        header_timeout_s: float,
        max_header_bytes: int,
        **kwargs: Any,
    ) -> None:
        super().__init__(manager, **kwargs)
        self.header_timeout_s = header_timeout_s
        self.max_header_bytes = max_header_bytes
        self._header_deadline: asyncio.TimerHandle | None = None
        self._head_bytes = 0
        """Bytes of the current, still incomplete request head."""
        self._last_body: Any = None
        """The body stream of the last request parsed; a new head starts only after it."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._header_deadline is None and self._between_requests() and self._body_done():
            self._arm()  # the first byte of a new request head
        head_started = self._header_deadline is not None
        before = self._request_count
        super().data_received(data)
        if self._request_count != before:
            self._last_body = self._messages[-1][1] if self._messages else None
            self._disarm()
        elif head_started and self._header_deadline is not None:
            # Every byte of this chunk belongs to the unfinished head.
            self._head_bytes += len(data)
            if self._head_bytes > self.max_header_bytes:
                self._refuse_head()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _body_done(self) -> bool:
        # start() runs a parsed request in a task of its own, so a body chunk can arrive
        # before the handler counts as in progress: it is not a new head if the last
        # request's body is still coming.
        return self._last_body is None or bool(self._last_body.is_eof())

    def _between_requests(self) -> bool:
        return not self._request_in_progress and not self._messages and not self._upgraded

    def _arm(self) -> None:
        self._header_deadline = self._loop.call_later(self.header_timeout_s, self._expire)

    def _disarm(self) -> None:
        self._head_bytes = 0
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _refuse_head(self) -> None:
        """Answer 431 at once and close, without waiting for the rest of the head."""
        self._disarm()
        if self.transport is None:
            return
        page = pages.headers_too_large(self.max_header_bytes)
        body = f"{page.status} {page.title}\n\n{page.detail}\n{page.hint}\n".encode()
        head = (
            "HTTP/1.1 431 Request Header Fields Too Large\r\n"
            "Content-Type: text/plain; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\n"
            "Cache-Control: no-store\r\n"
            "X-Sharetunnel-Error: 431\r\n"
            "Connection: close\r\n\r\n"
        )
        self.transport.write(head.encode() + body)
        self.transport.close()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if not isinstance(exc, BadHttpMessage):
            return super().handle_error(request, status, exc, message)
        self.logger.debug("malformed request from %s: %s", request.remote, exc)
        # aiohttp says "Too many headers" only with a plain BadHttpMessage.
        if isinstance(exc, LineTooLong) or "Too many headers" in str(exc):
            page = pages.headers_too_large(self.max_header_bytes)
        else:
            page = pages.bad_request(f"The request is malformed: {exc.message}")
        response = pages.error_response(request, page)
        response.force_close()  # the parser cannot be trusted to find the next request
        return response

    def _expire(self) -> None:
        self._header_deadline = None
        if self.transport is not None and self._between_requests():
            self.transport.close()


class RelayHTTPServer(web.Server):
    """``web.Server`` whose connections enforce a request-head deadline."""

    def __init__(
        self, handler: Any, *, header_timeout_s: float, max_header_bytes: int, **kwargs: Any
    ) -> None:
        super().__init__(handler, **kwargs)
        self.header_timeout_s = header_timeout_s
        self.max_header_bytes = max_header_bytes

    def __call__(self) -> RequestHandler:
        return _HeaderDeadlineHandler(
            self,
            loop=self._loop,
            header_timeout_s=self.header_timeout_s,
            max_header_bytes=self.max_header_bytes,
            **self._kwargs,
        )
