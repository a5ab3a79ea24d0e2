"""What the inspector remembers: the most recent requests, each with the start of its bodies.

:class:`Capture` is the forwarder's :class:`~tunnel_client.tap.Tap` and :class:`Entry`
its :class:`~tunnel_client.tap.Exchange`. Both live on the hot path of every request,
so they only append: no awaits, no parsing, no copies beyond the captured bytes. Bodies
are kept as they stream, up to ``body_limit`` bytes each, and only counted beyond it.
Everything the page or the API shows (text or binary, pretty JSON, the visitor's
address) is worked out when asked for, in :mod:`.render`.

Memory is bounded twice: at most ``capacity`` requests (the oldest are forgotten), and
at most ``budget`` bytes of captured bodies in all (the oldest bodies are dropped first,
their request stays listed). Neither depends on how big or how many the bodies are.

An entry keeps the parts of the heads (strings, and headers as tuples of string pairs),
not the head objects. Kept for 500 requests, objects the cyclic garbage collector tracks
reach its oldest generation and make its full collections more frequent (each one
walks the whole heap: tens of milliseconds for every request in flight); tuples of
strings it stops tracking at their first collection, and bytes and bytearrays it never
tracks. So each request leaves one tracked object behind, the entry itself.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator

from ..protocol.heads import Headers, RequestHead, ResponseHead

__all__ = ["CAPACITY", "Capture", "Entry"]

CAPACITY = 500
"""Requests remembered (ngrok's inspector keeps about as many)."""

MIN_BUDGET = 32 << 20
"""Captured body bytes kept in all, at least: 32 MiB, or 8 bodies at the limit if more."""


class Entry:
    """One request: heads, the start of both bodies, sizes, timing and outcome."""

    __slots__ = (
        "_capture",
        "_request_room",
        "_response_room",
        "_t0",
        "dropped",
        "duration_s",
        "error",
        "id",
        "method",
        "replay_of",
        "request_captured",
        "request_headers",
        "request_size",
        "response_captured",
        "response_headers",
        "response_size",
        "response_status",
        "started_at",
        "status",
        "target",
        "version",
        "websocket",
    )

    def __init__(
        self, capture: Capture, entry_id: int, head: RequestHead, replay_of: int | None
    ) -> None:
        self._capture = capture
        self.id = entry_id
        self.method = head.method
        self.target = head.target
        self.websocket = head.websocket
        self.request_headers = head.headers
        self.replay_of = replay_of
        """The id of the request this one replays, or None for a visitor's request."""
        self.started_at = time.time()
        self._t0 = time.monotonic()
        self.response_status: int | None = None
        """The local server's status, once its response head passed (None before)."""
        self.response_headers: Headers = ()
        self.status: int | None = None
        """The status the visitor saw, once finished."""
        self.error: str | None = None
        self.duration_s: float | None = None
        self.request_size = 0
        self.response_size = 0
        self.request_captured = bytearray()
        """The first ``body_limit`` bytes of the request body."""
        self.response_captured = bytearray()
        self._request_room = capture.body_limit
        self._response_room = capture.body_limit
        self.dropped = False
        """True once the captured bodies were dropped to stay within the budget."""
        self.version = 0

    # -- the Exchange hooks: called by the forwarder on every request ---------------------

    def request_body(self, chunk: bytes) -> None:
        self.request_size += len(chunk)
        if self._request_room:
            piece = chunk[: self._request_room]
            self.request_captured += piece
            self._request_room -= len(piece)
            self._capture.captured_bytes += len(piece)

    def response(self, head: ResponseHead) -> None:
        self.response_status = head.status
        self.response_headers = head.headers
        self._capture.touch(self)

    def response_body(self, chunk: bytes) -> None:
        self.response_size += len(chunk)
        if self._response_room:
            piece = chunk[: self._response_room]
            self.response_captured += piece
            self._response_room -= len(piece)
            self._capture.captured_bytes += len(piece)

    def finished(self, status: int, error: str | None = None) -> None:
        if self.status is not None:
            return  # exactly once; a second call would be the caller's bug, not worth a crash
        self.duration_s = time.monotonic() - self._t0
        self.status = status
        self.error = error
        self._capture.touch(self)

    # -- for the inspector -------------------------------------------------------------------

    @property
    def done(self) -> bool:
        return self.status is not None

    def drop_bodies(self) -> int:
        """Forget the captured bodies (and capture no more); the bytes freed."""
        freed = len(self.request_captured) + len(self.response_captured)
        self.request_captured.clear()
        self.response_captured.clear()
        self._request_room = self._response_room = 0
        self.dropped = True
        return freed


class Capture:
    """The most recent requests, newest last; the forwarder's tap."""

    def __init__(
        self, *, body_limit: int, capacity: int = CAPACITY, budget: int | None = None
    ) -> None:
        self.body_limit = body_limit
        self.capacity = capacity
        self.budget = max(MIN_BUDGET, 8 * body_limit) if budget is None else budget
        self.captured_bytes = 0
        """Bytes of bodies held now (kept up to date by the entries)."""
        self.version = 0
        """Grows with every change; each entry has the version of its last change."""
        self._entries: deque[Entry] = deque()
        self._by_id: dict[int, Entry] = {}
        self._with_bodies: deque[Entry] = deque()
        self._next_id = 1
        self._listeners: list[Callable[[], None]] = []

    def request(self, head: RequestHead, *, replay_of: int | None = None) -> Entry:
        """A new entry for a request whose head is known (the Tap hook)."""
        entry = Entry(self, self._next_id, head, replay_of)
        self._next_id += 1
        self._entries.append(entry)
        self._by_id[entry.id] = entry
        if self.body_limit:
            self._with_bodies.append(entry)
        if len(self._entries) > self.capacity:
            old = self._entries.popleft()
            del self._by_id[old.id]
            if not old.dropped:
                self.captured_bytes -= old.drop_bodies()
            with_bodies = self._with_bodies
            while with_bodies and with_bodies[0].id <= old.id:
                with_bodies.popleft()
        self.touch(entry)
        return entry

    def touch(self, entry: Entry) -> None:
        """Note a change to ``entry`` and tell the listeners; keep bodies within budget."""
        self.version += 1
        entry.version = self.version
        while self.captured_bytes > self.budget and self._with_bodies:
            oldest = self._with_bodies.popleft()
            if not oldest.dropped:
                self.captured_bytes -= oldest.drop_bodies()
        for listener in self._listeners:
            listener()

    def get(self, entry_id: int) -> Entry | None:
        return self._by_id.get(entry_id)

    def __len__(self) -> int:
        return len(self._entries)

    def newest_first(self) -> Iterator[Entry]:
        return reversed(self._entries)

    def changed_since(self, version: int) -> list[Entry]:
        """Entries changed after ``version``, oldest first."""
        return [e for e in self._entries if e.version > version]

    def listen(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Call ``listener()`` after every change (it must return at once); returns a
        function that stops it."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)
