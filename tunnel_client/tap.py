"""The hook interface between a forwarder and whatever watches its traffic.

A forwarder that is given a :class:`Tap` tells it about every exchange it forwards, at
five points, all synchronous calls that return at once (they may copy a few bytes,
never await or block, and never raise for anything the traffic contains)::

    exchange = tap.request(head)        # the request head is known, before anything is sent
    exchange.request_body(chunk)        # each request body chunk, as it is passed on
    exchange.response(head)             # the response head is known (the REPLY is sent)
    exchange.response_body(chunk)       # each response body chunk, as it is passed on
    exchange.finished(status, error)    # last, exactly once: the status the visitor saw
                                        # (502/504 on failures, 499 if the visitor left)
                                        # and the reason of a failure, or None

A WebSocket upgrade is finished once it is answered (101, or the local server's
refusal); its messages are not reported. A forwarder with no tap (``--no-inspect``)
calls nothing: the traffic is never seen.
"""

from __future__ import annotations

from typing import Protocol

from .protocol.heads import RequestHead, ResponseHead

__all__ = ["Exchange", "Tap"]


class Exchange(Protocol):
    """What a :class:`Tap` hears about one request, in order."""

    def request_body(self, chunk: bytes) -> None:
        """A chunk of the request body was passed to the local server."""

    def response(self, head: ResponseHead) -> None:
        """The local server's response head was passed to the visitor."""

    def response_body(self, chunk: bytes) -> None:
        """A chunk of the response body was passed to the visitor."""

    def finished(self, status: int, error: str | None = None) -> None:
        """The exchange ended with the status the visitor saw (and why, if it failed)."""


class Tap(Protocol):
    """Watches the exchanges of a forwarder."""

    def request(self, head: RequestHead) -> Exchange:
        """A request arrived; the returned exchange hears the rest of it."""
