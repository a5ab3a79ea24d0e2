"""Test plumbing for the sans-I/O protocol (after h11's ``ConnectionPair``).

:class:`MuxPair` wires a relay :class:`~tunnel_client.protocol.mux.Mux` to a client one
and moves ``data_to_send()`` across on demand, so tests drive both ends of a session in
one thread with no I/O. :class:`MemoryTransport` does the same for the asyncio driver:
two queues, and a ``close()`` that makes both ends' ``recv()`` return None.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from hypothesis import HealthCheck, settings

from tunnel_client.protocol.events import Event
from tunnel_client.protocol.frames import Flags, Frame, FrameType, decode_frames, encode_frame
from tunnel_client.protocol.heads import RequestHead, ResponseHead
from tunnel_client.protocol.mux import Mux, Role
from tunnel_client.protocol.window import MIN_WINDOW

GET = RequestHead("GET", "/", (("Host", "x.example"),))
POST = RequestHead("POST", "/upload", (("Content-Type", "application/octet-stream"),))
WS = RequestHead("GET", "/ws", (("Upgrade", "websocket"),), websocket=True)
OK = ResponseHead(200, (("Content-Type", "text/plain"),))
SWITCH = ResponseHead(101, (("Upgrade", "websocket"),))


def pattern(stream_id: int, offset: int, n: int, salt: int = 0) -> bytes:
    """Bytes that differ per stream, direction (``salt``) and offset: misordering shows."""
    return bytes((stream_id * 7 + salt * 13 + i) % 251 for i in range(offset, offset + n))


def frames_of(messages: list[bytes]) -> list[Frame]:
    """Every frame of a list of transport messages."""
    return [frame for message in messages for frame in decode_frames(message)]


def message(*frames: Frame) -> bytes:
    """One transport message holding ``frames``."""
    return b"".join(encode_frame(f) for f in frames)


def open_frame(stream_id: int, head: RequestHead = GET, *, fin: bool = True) -> Frame:
    return Frame(FrameType.OPEN, Flags.FIN if fin else 0, stream_id, head.encode())


@dataclass
class Pumped:
    """Events each side reported during one :meth:`MuxPair.pump`."""

    relay: list[Event] = field(default_factory=list)
    client: list[Event] = field(default_factory=list)


class MuxPair:
    """A relay Mux and a client Mux joined by an in-memory, ordered transport."""

    def __init__(
        self,
        *,
        relay_window: int = MIN_WINDOW,
        client_window: int = MIN_WINDOW,
        max_streams: int = 1024,
        max_frame: int = 4096,
        client_growth: tuple[int, int] | None = None,
        relay_growth: tuple[int, int] | None = None,
    ) -> None:
        self.relay = Mux(
            Role.RELAY,
            window=relay_window,
            peer_window=client_window,
            max_frame=max_frame,
            growth=relay_growth,
        )
        self.client = Mux(
            Role.CLIENT,
            window=client_window,
            peer_window=relay_window,
            max_streams=max_streams,
            max_frame=max_frame,
            growth=client_growth,
        )

    def peer(self, mux: Mux) -> Mux:
        return self.client if mux is self.relay else self.relay

    def deliver(self, sender: Mux) -> list[Event]:
        """Move what ``sender`` queued to its peer; return the peer's events."""
        receiver = self.peer(sender)
        for item in sender.data_to_send():
            receiver.receive_message(item)
        return receiver.events_received()

    def pump(self) -> Pumped:
        """Move data both ways until neither side has anything left to send."""
        pumped = Pumped()
        while self.relay.pending_bytes or self.client.pending_bytes:
            pumped.client += self.deliver(self.relay)
            pumped.relay += self.deliver(self.client)
        return pumped

    def open(self, head: RequestHead = GET, *, end_stream: bool = True) -> int:
        """Open a stream from the relay and deliver the OPEN; return its id."""
        stream_id = self.relay.open_stream(head, end_stream=end_stream)
        self.pump()
        return stream_id

    def open_websocket(self) -> int:
        """Open a WebSocket stream and upgrade it with a 101 reply."""
        stream_id = self.open(WS, end_stream=False)
        self.client.send_reply(stream_id, SWITCH)
        self.pump()
        return stream_id


async def until(predicate: Callable[[], object], timeout: float = 10.0) -> None:
    """Wait until ``predicate()`` holds, letting the loops run in between."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.001)


class MemoryTransport:
    """One end of an in-memory message connection for :class:`~.aio.Session`.

    ``close()`` on either end makes ``recv()`` on both ends return None (after the
    messages already queued), and ``send()`` raise, like a closed WebSocket.
    """

    def __init__(self) -> None:
        self.inbox: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.peer: MemoryTransport = self
        self.closed = False
        self.sent: list[bytes] = []

    @classmethod
    def pair(cls) -> tuple[MemoryTransport, MemoryTransport]:
        a, b = cls(), cls()
        a.peer, b.peer = b, a
        return a, b

    async def send(self, message: bytes) -> None:
        if self.closed:
            raise ConnectionError("transport closed")
        self.sent.append(message)
        self.peer.inbox.put_nowait(message)

    async def recv(self) -> bytes | None:
        item = await self.inbox.get()
        if item is None:
            self.inbox.put_nowait(None)  # stays closed for every later recv()
        return item

    async def close(self) -> None:
        for end in (self, self.peer):
            if not end.closed:
                end.closed = True
                end.inbox.put_nowait(None)


def examples(n: int) -> settings:
    """Hypothesis settings for this suite: ``n`` examples, no per-example deadline.

    The machine is shared and loaded; a deadline would make timing, not logic, fail.
    """
    return settings(max_examples=n, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class DirectMemoryTransport(MemoryTransport):
    """:class:`MemoryTransport` that is also a ``PushTransport`` (sends without a task,
    hands over messages in a callback), like the relay's and the client's real ones.

    Messages reach the peer in a later loop callback, as ``data_received`` would. While
    ``stuck`` is set, what is sent waits here (:meth:`buffered` counts it) as in a full
    socket buffer, and :meth:`drain` waits for :meth:`unstick`.
    """

    def __init__(self) -> None:
        super().__init__()
        self.stuck = False
        self._held: list[bytes] = []
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._on_message: Callable[[bytes | str], None] | None = None
        self._on_closed: Callable[[], None] | None = None

    def send_nowait(self, message: bytes) -> None:
        if self.closed:
            raise ConnectionError("transport closed")
        self.sent.append(message)
        if self.stuck:
            self._held.append(message)
            self._flowing.clear()
        else:
            asyncio.get_running_loop().call_soon(self.peer.arrive, message)

    async def send(self, message: bytes) -> None:
        self.send_nowait(message)
        await self.drain()

    def buffered(self) -> int:
        return sum(map(len, self._held))

    def unstick(self) -> None:
        self.stuck = False
        held, self._held = self._held, []
        for message in held:
            asyncio.get_running_loop().call_soon(self.peer.arrive, message)
        self._flowing.set()

    async def drain(self) -> None:
        await self._flowing.wait()
        if self.closed:
            raise ConnectionError("transport closed")

    def arrive(self, message: bytes | str | None) -> None:
        """The peer's message reaches this end (None: the connection closed)."""
        if self._on_message is None:
            self.inbox.put_nowait(message)  # type: ignore[arg-type]
        elif message is None:
            if self._on_closed is not None:
                on_closed, self._on_closed = self._on_closed, None
                on_closed()
        else:
            self._on_message(message)

    def receive_with(
        self, on_message: Callable[[bytes | str], None], on_closed: Callable[[], None]
    ) -> None:
        self._on_message, self._on_closed = on_message, on_closed
        while not self.inbox.empty():
            self.arrive(self.inbox.get_nowait())

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        for end in (self, self.peer):
            if not end.closed:
                end.closed = True
                assert isinstance(end, DirectMemoryTransport)
                end._flowing.set()
                loop.call_soon(end.arrive, None)
