"""aiohttp's server with one addition: a deadline for receiving request headers.

aiohttp limits idle keep-alive time but not how long a visitor may take to send a
request head, so a client trickling one header byte at a time (slowloris) could hold a
connection forever. Here a timer starts when a connection opens, and again with the
first byte of each later request head; it is cancelled once the head is complete, and
closes the connection if it fires first.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

__all__ = ["RelayHTTPServer"]


class _HeaderDeadlineHandler(RequestHandler):
    """A RequestHandler that drops connections slow to send a request head."""

    def __init__(self, manager: web.Server, *, header_timeout_s: float, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self.header_timeout_s = header_timeout_s
        self._header_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._header_deadline is None and self._between_requests():
            self._arm()  # the first byte of a new request head
        before = self._request_count
        super().data_received(data)
        if self._request_count != before:
            self._disarm()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _between_requests(self) -> bool:
        return not self._request_in_progress and not self._messages and not self._upgraded

    def _arm(self) -> None:
        self._header_deadline = self._loop.call_later(self.header_timeout_s, self._expire)

    def _disarm(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _expire(self) -> None:
        self._header_deadline = None
        if self.transport is not None and self._between_requests():
            self.transport.close()


class RelayHTTPServer(web.Server):
    """``web.Server`` whose connections enforce a request-head deadline."""

    def __init__(self, handler: Any, *, header_timeout_s: float, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.header_timeout_s = header_timeout_s

    def __call__(self) -> RequestHandler:
        return _HeaderDeadlineHandler(
            self, loop=self._loop, header_timeout_s=self.header_timeout_s, **self._kwargs
        )
