"""The asyncio driver (tunnel_client/protocol/aio.py) over an in-memory transport pair.

A relay :class:`Session` and a client :class:`Session` run in one event loop, joined by
:class:`MemoryTransport`; the client's ``on_stream`` handler plays the local server.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, NamedTuple

import pytest

from tests.protocol.helpers import (
    GET,
    OK,
    POST,
    SWITCH,
    WS,
    DirectMemoryTransport,
    MemoryTransport,
    frames_of,
    until,
)
from tunnel_client.protocol.aio import (
    HIGH_WATER_BYTES,
    Session,
    Stream,
    WebSocketClosed,
    WebSocketMessage,
    bridge_codec,
    bridge_websocket,
)
from tunnel_client.protocol.errors import (
    GoAwayCode,
    HeadTooLarge,
    InvalidState,
    RemoteProtocolError,
    ResetCode,
    SessionClosed,
    StreamReset,
)
from tunnel_client.protocol.frames import FrameType
from tunnel_client.protocol.heads import RequestHead, ResponseHead
from tunnel_client.protocol.mux import Mux, Role
from tunnel_client.protocol.window import MIN_WINDOW
from tunnel_client.protocol.wsframes import Close, Message, WebSocketCodec

WINDOW = MIN_WINDOW
Handler = Callable[[Stream], Awaitable[None]]


async def read_all(stream: Stream) -> bytes:
    chunks = []
    while chunk := await stream.read():
        chunks.append(chunk)
    return b"".join(chunks)


def make_session(
    transport: MemoryTransport,
    role: Role,
    on_stream: Handler | None = None,
    *,
    window: int = WINDOW,
    **options: float,
) -> Session:
    mux = Mux(role, window=window, peer_window=window, max_frame=8192)
    return Session(transport, mux, on_stream=on_stream, **options)  # type: ignore[arg-type]


class Tunnel:
    """A running relay session and client session, joined in memory."""

    def __init__(self, relay: Session, client: Session) -> None:
        self.relay = relay
        self.client = client
        self.relay_task = asyncio.create_task(relay.run())
        self.client_task = asyncio.create_task(client.run())

    async def finished(self) -> None:
        async with asyncio.timeout(10):
            await asyncio.gather(self.relay_task, self.client_task)


TRANSPORTS: dict[str, type[MemoryTransport]] = {
    "awaited": MemoryTransport,
    "direct": DirectMemoryTransport,
}
transport_kind = MemoryTransport
"""What :func:`tunnel` joins the sessions with: every test that uses it runs with a
transport the session awaits (the write and read loops) and with one it drives from
callbacks (sends at the end of the loop turn, messages handed over as they arrive)."""


@pytest.fixture(autouse=True, params=sorted(TRANSPORTS))
def _transport_kind(request: pytest.FixtureRequest) -> Iterator[None]:
    global transport_kind
    transport_kind = TRANSPORTS[request.param]
    try:
        yield
    finally:
        transport_kind = MemoryTransport


@contextlib.asynccontextmanager
async def tunnel(
    on_stream: Handler | None, *, window: int = WINDOW, **options: float
) -> AsyncIterator[Tunnel]:
    a, b = transport_kind.pair()
    running = Tunnel(
        make_session(a, Role.RELAY, window=window, **options),
        make_session(b, Role.CLIENT, on_stream, window=window, **options),
    )
    try:
        yield running
    finally:
        running.relay.close(GoAwayCode.NORMAL, "test over")
        await running.finished()


async def echo(stream: Stream) -> None:
    """A local server that answers with the request body."""
    body = await read_all(stream)
    stream.reply(ResponseHead(200, (("X-Method", stream.request.method),)))  # type: ignore[union-attr]
    await stream.write(body)
    await stream.end()


# -- requests and responses --------------------------------------------------------------


async def test_request_response_round_trip() -> None:
    async with tunnel(echo) as t:
        stream = t.relay.open_stream(POST)
        await stream.write(b"hello ")
        await stream.write(b"world")
        await stream.end()
        head, ended = await stream.response()
        assert head.status == 200 and head.header("x-method") == "POST"
        assert not ended
        await until(lambda: stream.has_data)
        assert await read_all(stream) == b"hello world"
        assert await stream.read() == b""  # stays at its end
        await until(lambda: t.relay.open_streams == 0 and t.client.open_streams == 0)
        assert not stream.live and not stream.writable and stream.error is None
        assert repr(stream) == f"<Stream {stream.id}>"


async def test_response_without_body() -> None:
    async def no_content(stream: Stream) -> None:
        assert await stream.read() == b""  # the OPEN had FIN: no body
        stream.reply(ResponseHead(204), end_stream=True)

    async with tunnel(no_content) as t:
        stream = t.relay.open_stream(GET, end_stream=True)
        assert not stream.writable
        assert await stream.response() == (ResponseHead(204), True)
        assert await stream.read() == b""


async def test_many_concurrent_streams() -> None:
    async with tunnel(echo) as t:

        async def one(i: int) -> bytes:
            stream = t.relay.open_stream(POST)
            await stream.write(str(i).encode() * 1000)
            await stream.end()
            await stream.response()
            return await read_all(stream)

        results = await asyncio.gather(*(one(i) for i in range(20)))
        assert results == [str(i).encode() * 1000 for i in range(20)]


async def test_only_a_relay_stream_has_a_response() -> None:
    seen: asyncio.Future[Exception] = asyncio.get_running_loop().create_future()

    async def handler(stream: Stream) -> None:
        try:
            await stream.response()
        except InvalidState as exc:
            seen.set_result(exc)
        stream.reply(OK, end_stream=True)

    async with tunnel(handler) as t:
        t.relay.open_stream(GET, end_stream=True)
        assert "only a stream the relay opened" in str(await seen)


# -- flow control ------------------------------------------------------------------------


async def test_large_body_through_small_windows_waits_for_the_reader() -> None:
    body = bytes(range(256)) * 4096  # 1 MiB, 64 windows
    gate = asyncio.Event()
    received: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    async def slow_reader(stream: Stream) -> None:
        await gate.wait()
        received.set_result(await read_all(stream))
        stream.reply(OK, end_stream=True)

    async with tunnel(slow_reader) as t:
        stream = t.relay.open_stream(POST)
        writer = asyncio.create_task(stream.write(body))
        # The writer spends the whole window and then waits: the reader has read nothing.
        await until(lambda: t.relay.mux.credit(stream.id) == 0)
        for _ in range(50):
            await asyncio.sleep(0)
        assert not writer.done()
        sent = sum(len(f.payload) for f in frames_of(t.relay.transport.sent))  # type: ignore[attr-defined]
        assert sent <= WINDOW + len(POST.encode())  # memory bound: one window in flight
        gate.set()
        await writer
        await stream.end()
        assert hashlib.sha256(await received).digest() == hashlib.sha256(body).digest()
        assert await stream.response() == (OK, True)


async def test_a_slow_stream_does_not_block_a_fast_one() -> None:
    big = b"x" * (8 * WINDOW)
    slow_started = asyncio.Event()

    async def handler(stream: Stream) -> None:
        assert stream.request is not None
        stream.reply(OK)
        if stream.request.target == "/slow":
            slow_started.set()
            await stream.write(big)  # blocks: the relay never reads this stream
        else:
            await stream.write(b"fast")
        await stream.end()

    async with tunnel(handler) as t:
        slow = t.relay.open_stream(RequestHead("GET", "/slow"), end_stream=True)
        await slow_started.wait()
        await until(lambda: t.client.mux.credit(slow.id) == 0)
        fast = t.relay.open_stream(GET, end_stream=True)
        assert (await fast.response())[0] == OK
        assert await read_all(fast) == b"fast"
        # Only now does anyone read the slow stream; all of it arrives.
        assert t.client.mux.is_live(slow.id)
        assert await read_all(slow) == big


async def test_writes_wait_while_the_transport_is_congested() -> None:
    """TCP backpressure: a writer pauses while more than the high-water mark is queued."""
    a, b = MemoryTransport.pair()
    gate = asyncio.Event()
    real_send = a.send

    async def congested_send(message: bytes) -> None:
        await gate.wait()
        await real_send(message)

    a.send = congested_send  # type: ignore[method-assign]
    received: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def sink(stream: Stream) -> None:
        received.set_result(len(await read_all(stream)))
        stream.reply(OK, end_stream=True)

    big_window = 8 << 20
    relay = make_session(a, Role.RELAY, window=big_window)
    client = make_session(b, Role.CLIENT, sink, window=big_window)
    t = Tunnel(relay, client)
    stream = relay.open_stream(POST)
    size = 3 * HIGH_WATER_BYTES
    writer = asyncio.create_task(stream.write(b"z" * size))
    await until(lambda: relay.mux.pending_bytes + relay._in_flight > HIGH_WATER_BYTES)
    for _ in range(20):
        await asyncio.sleep(0)
    assert not writer.done()
    gate.set()
    await writer
    await stream.end()
    assert await received == size
    relay.close()
    await t.finished()


async def test_direct_sends_wait_while_the_transport_is_full() -> None:
    """A transport that sends from callbacks: past the high-water mark in its buffer,
    writers wait, and everything arrives, in order, once it drains."""
    a, b = DirectMemoryTransport.pair()
    assert isinstance(a, DirectMemoryTransport)
    received: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    async def sink(stream: Stream) -> None:
        received.set_result(hashlib.sha256(await read_all(stream)).digest())
        stream.reply(OK, end_stream=True)

    big_window = 8 << 20
    relay = make_session(a, Role.RELAY, window=big_window)
    client = make_session(b, Role.CLIENT, sink, window=big_window)
    t = Tunnel(relay, client)
    a.stuck = True
    stream = relay.open_stream(POST)
    body = bytes(range(256)) * (3 * HIGH_WATER_BYTES // 256)
    writer = asyncio.create_task(stream.write(body))
    await until(lambda: a.buffered() > HIGH_WATER_BYTES)
    for _ in range(20):
        await asyncio.sleep(0)
    assert not writer.done()
    a.unstick()
    await writer
    await stream.end()
    assert await received == hashlib.sha256(body).digest()
    relay.close()
    await t.finished()


async def test_a_direct_transport_that_fails_is_a_lost_connection() -> None:
    class Broken(DirectMemoryTransport):
        def send_nowait(self, message: bytes) -> None:
            raise ConnectionResetError("peer reset")

    transport = Broken()
    session = make_session(transport, Role.RELAY)
    run = asyncio.create_task(session.run())
    stream = session.open_stream(GET, end_stream=True)
    ended = await asyncio.wait_for(run, 10)
    assert session.connection_lost
    assert ended.reason == "connection lost"
    with pytest.raises(SessionClosed):
        await stream.response()


async def test_a_text_message_on_a_push_transport_is_answered_with_goaway() -> None:
    a, _b = DirectMemoryTransport.pair()
    session = make_session(a, Role.RELAY)
    run = asyncio.create_task(session.run())
    await asyncio.sleep(0)
    assert isinstance(a, DirectMemoryTransport)
    a.arrive("hello")
    ended = await asyncio.wait_for(run, 10)
    assert ended.code is GoAwayCode.PROTOCOL_ERROR
    assert "binary only" in ended.reason
    assert not session.connection_lost
    (goaway,) = frames_of(a.sent)
    assert goaway.type is FrameType.GOAWAY


async def test_a_response_callback_sees_the_head_and_the_body_that_came_with_it() -> None:
    """The relay's callback runs once the message that carried the head was dispatched
    whole: a small response is there entire, head, body and end, without a task."""

    async def small(stream: Stream) -> None:
        stream.reply(OK)  # head, body and end leave in one transport message
        assert stream.write_nowait(b"hello", end=True) == 5

    seen: asyncio.Future[tuple[int, list[bytes | None]]] = (
        asyncio.get_running_loop().create_future()
    )
    async with tunnel(small) as t:
        stream = t.relay.open_stream(GET, end_stream=True)

        def on_response() -> None:
            head, _ = stream.response_nowait()
            seen.set_result((head.status, [stream.read_nowait(), stream.read_nowait()]))

        stream.add_response_callback(on_response)
        assert await asyncio.wait_for(seen, 10) == (200, [b"hello", b""])


async def test_a_response_callback_learns_of_a_reset_and_of_a_late_registration() -> None:
    async def refuse(stream: Stream) -> None:
        stream.reset(ResetCode.REFUSED, "no")

    async with tunnel(refuse) as t:
        stream = t.relay.open_stream(GET, end_stream=True)
        called = asyncio.Event()
        stream.add_response_callback(called.set)
        await asyncio.wait_for(called.wait(), 10)
        with pytest.raises(StreamReset):
            stream.response_nowait()
        again = asyncio.Event()
        stream.add_response_callback(again.set)  # after the outcome: still called
        await asyncio.wait_for(again.wait(), 10)


# -- resets ------------------------------------------------------------------------------


async def test_relay_reset_cancels_the_client_handler() -> None:
    cancelled = asyncio.Event()
    started = asyncio.Event()

    async def handler(stream: Stream) -> None:
        started.set()
        try:
            await asyncio.Event().wait()  # a local request that takes forever
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async with tunnel(handler) as t:
        stream = t.relay.open_stream(POST)
        await started.wait()
        stream.reset(ResetCode.CANCEL, "visitor left")
        stream.reset()  # twice: nothing more
        await asyncio.wait_for(cancelled.wait(), 10)
        with pytest.raises(StreamReset, match="visitor left"):
            await stream.read()
        with pytest.raises(StreamReset):
            await stream.write(b"x")
        with pytest.raises(StreamReset):
            await stream.response()
        assert isinstance(stream.error, StreamReset)
        await until(lambda: t.client.open_streams == 0)


async def test_client_reset_reaches_the_relay() -> None:
    async def refuse(stream: Stream) -> None:
        stream.reset(ResetCode.UPSTREAM_UNAVAILABLE, "nothing listens on port 7860")
        with pytest.raises(StreamReset):
            stream.reply(OK)

    async with tunnel(refuse) as t:
        stream = t.relay.open_stream(GET, end_stream=True)
        with pytest.raises(StreamReset) as info:
            await stream.response()
        assert info.value.code is ResetCode.UPSTREAM_UNAVAILABLE
        assert info.value.reason == "nothing listens on port 7860"


async def test_a_writer_waiting_for_credit_learns_of_a_reset() -> None:
    async def stalled(stream: Stream) -> None:
        await asyncio.Event().wait()

    async with tunnel(stalled) as t:
        stream = t.relay.open_stream(POST)
        writer = asyncio.create_task(stream.write(b"w" * (4 * WINDOW)))
        await until(lambda: t.relay.mux.credit(stream.id) == 0)
        t.client.mux.reset_stream(stream.id, ResetCode.UPSTREAM_ERROR, "gone")
        t.client.flush()
        with pytest.raises(StreamReset, match="gone"):
            await writer


async def test_a_reset_after_the_whole_body_keeps_it_readable() -> None:
    async def answer_then_cancel(stream: Stream) -> None:
        stream.reply(OK)
        await stream.write(b"complete")
        await stream.end()
        # Returning now leaves the request body unread: the session resets with CANCEL.

    async with tunnel(answer_then_cancel) as t:
        stream = t.relay.open_stream(POST)
        await stream.write(b"a body nobody reads")
        await until(lambda: stream.error is not None)
        assert stream.error.code is ResetCode.CANCEL  # type: ignore[union-attr]
        assert await stream.response() == (OK, False)
        assert await read_all(stream) == b"complete"
        with pytest.raises(StreamReset, match="response complete"):
            await stream.write(b"more")


@pytest.mark.parametrize(
    ("behaviour", "code", "reason"),
    [
        ("raise", ResetCode.INTERNAL_ERROR, "internal error"),
        ("return", ResetCode.INTERNAL_ERROR, "handler ended without finishing"),
        ("stream reset", ResetCode.INTERNAL_ERROR, "handler ended without finishing"),
    ],
)
async def test_handlers_that_fail_or_forget_reset_their_stream(
    behaviour: str, code: ResetCode, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def handler(stream: Stream) -> None:
        if behaviour == "raise":
            raise RuntimeError("bug in the local forwarder")
        if behaviour == "stream reset":
            raise StreamReset(ResetCode.CANCEL, "a StreamReset escaping is not a bug")

    async with tunnel(handler) as t:
        stream = t.relay.open_stream(GET, end_stream=True)
        with pytest.raises(StreamReset) as info:
            await stream.response()
        assert (info.value.code, info.value.reason) == (code, reason)
    assert ("stream handler failed" in caplog.text) == (behaviour == "raise")


async def test_a_side_without_handler_refuses_streams() -> None:
    async with tunnel(None) as t:
        stream = t.relay.open_stream(GET, end_stream=True)
        with pytest.raises(StreamReset) as info:
            await stream.response()
        assert info.value.code is ResetCode.REFUSED


# -- session end -------------------------------------------------------------------------


async def test_goaway_fails_pending_reads_on_both_sides() -> None:
    seen: asyncio.Future[BaseException] = asyncio.get_running_loop().create_future()

    async def waiting(stream: Stream) -> None:
        try:
            await stream.read()
        except SessionClosed as exc:
            seen.set_result(exc)
            raise

    async with tunnel(waiting) as t:
        stream = t.relay.open_stream(POST)
        response = asyncio.create_task(stream.response())
        await until(lambda: t.client.open_streams == 1)
        t.relay.close(GoAwayCode.SHUTDOWN, "relay restarting")
        with pytest.raises(SessionClosed, match="relay restarting"):
            await response
        error = await asyncio.wait_for(seen, 10)
        assert isinstance(error, SessionClosed)
        assert (error.code, error.reason) == (GoAwayCode.SHUTDOWN, "relay restarting")
        await t.finished()
        assert await t.client.wait_closed() == t.client.ended
        assert t.client.ended is not None and t.client.ended.by_peer
        assert t.relay.ended is not None and not t.relay.ended.by_peer
        assert not t.client.connection_lost and not t.relay.connection_lost
        with pytest.raises(SessionClosed):
            t.relay.open_stream(GET)
        with pytest.raises(SessionClosed):
            await stream.write(b"x")


async def test_connection_loss_ends_both_sessions() -> None:
    async def waiting(stream: Stream) -> None:
        await stream.read()

    async with tunnel(waiting) as t:
        stream = t.relay.open_stream(POST)
        await until(lambda: t.client.open_streams == 1)
        await t.client.transport.close()  # the network drops
        with pytest.raises(SessionClosed, match="connection lost"):
            await stream.read()
        await t.finished()
        for session in (t.relay, t.client):
            assert session.connection_lost
            assert session.ended is not None
            assert session.ended.code is GoAwayCode.INTERNAL_ERROR


async def test_a_failing_transport_is_a_lost_connection() -> None:
    class Broken(MemoryTransport):
        async def send(self, message: bytes) -> None:
            raise ConnectionResetError("peer reset")

    class Deaf(MemoryTransport):
        async def recv(self) -> bytes | None:
            raise OSError("read failed")

    for cls in (Broken, Deaf):
        transport = cls()
        session = make_session(transport, Role.RELAY)
        run = asyncio.create_task(session.run())
        if cls is Broken:
            session.mux.ping(b"12345678")
            session.flush()
        ended = await asyncio.wait_for(run, 10)
        assert session.connection_lost, cls
        assert ended.reason == "connection lost"


async def test_a_peer_breaking_the_transport_rules_hears_why() -> None:
    class TextSender(MemoryTransport):
        async def recv(self) -> bytes | None:
            raise RemoteProtocolError("text message on the tunnel")

    a, _b = MemoryTransport.pair()
    transport = TextSender()
    transport.peer, transport.inbox = a, asyncio.Queue()
    session = make_session(transport, Role.RELAY)
    ended = await asyncio.wait_for(session.run(), 10)
    assert (ended.code, ended.reason) == (GoAwayCode.PROTOCOL_ERROR, "text message on the tunnel")
    assert not session.connection_lost
    (goaway,) = frames_of(transport.sent)
    assert goaway.type is FrameType.GOAWAY and goaway.payload.endswith(
        b"text message on the tunnel"
    )


async def test_keepalive_ends_a_silent_session() -> None:
    silent, _peer_end = MemoryTransport.pair()
    session = make_session(silent, Role.CLIENT, keepalive_s=0.05, keepalive_timeout_s=0.3)
    ended = await asyncio.wait_for(session.run(), 10)
    assert ended.code is GoAwayCode.KEEPALIVE_TIMEOUT
    assert ended.reason.startswith("nothing received for")
    # It asked before it gave up.
    sent = frames_of(silent.sent)
    assert any(f.type is FrameType.PING for f in sent)


async def test_keepalive_pings_measure_the_round_trip() -> None:
    async with tunnel(echo, keepalive_s=0.05, keepalive_timeout_s=30.0) as t:
        await until(lambda: t.relay.rtt_s is not None and t.client.rtt_s is not None)
        assert t.relay.ended is None and t.client.ended is None
        assert 0 <= t.relay.rtt_s < 30  # type: ignore[operator]


async def test_close_is_idempotent() -> None:
    async with tunnel(echo) as t:
        t.client.close(GoAwayCode.NORMAL, "client done")
        t.client.close(GoAwayCode.INTERNAL_ERROR, "ignored")
        await t.finished()
        assert t.client.ended is not None and t.client.ended.reason == "client done"
        assert t.relay.ended is not None and t.relay.ended.by_peer


# -- WebSocket relay ---------------------------------------------------------------------


async def ws_echo(stream: Stream) -> None:
    assert stream.request is not None and stream.request.websocket
    stream.reply(SWITCH)
    while True:
        item = await stream.receive_message()
        if isinstance(item, WebSocketClosed):
            assert await stream.receive_message() == item  # the close stays
            stream.send_close(item.code, item.reason)
            return
        await stream.send_message(item.data, text=item.text)


async def test_websocket_messages_are_relayed_whole() -> None:
    async with tunnel(ws_echo) as t:
        stream = t.relay.open_stream(WS)
        assert await stream.response() == (SWITCH, False)
        big = bytes(range(256)) * 1000  # 256 kB: many windows, many fragments
        for data, text in [(b"hi", True), (b"", False), (big, False), ("h\u00e9".encode(), True)]:
            await stream.send_message(data, text=text)
            item = await stream.receive_message()
            assert isinstance(item, WebSocketMessage)
            assert (item.data, item.text) == (data, text)
        stream.send_close(4000, "bye")
        assert await stream.receive_message() == WebSocketClosed(4000, "bye")
        await until(lambda: t.relay.open_streams == 0 and t.client.open_streams == 0)


async def test_unread_whole_messages_hold_back_credit() -> None:
    """A reader that falls behind stops the sender once a window of messages waits."""
    arrived: asyncio.Queue[Stream] = asyncio.Queue()

    async def lazy(stream: Stream) -> None:
        stream.reply(SWITCH)
        arrived.put_nowait(stream)
        await asyncio.Event().wait()

    async with tunnel(lazy) as t:
        stream = t.relay.open_stream(WS)
        await stream.response()
        local = await arrived.get()
        await stream.send_message(b"first", text=True)
        await stream.send_message(b"second", text=True)
        big = asyncio.create_task(stream.send_message(b"s" * (3 * WINDOW), text=False))
        await until(lambda: t.relay.mux.credit(stream.id) == 0)
        for _ in range(50):
            await asyncio.sleep(0)
        assert not big.done()  # whole messages wait unread, so fragments are not granted
        for expected in (b"first", b"second"):
            item = await local.receive_message()
            assert isinstance(item, WebSocketMessage) and item.data == expected
        await big
        item = await local.receive_message()
        assert isinstance(item, WebSocketMessage) and item.data == b"s" * (3 * WINDOW)


async def test_an_oversized_websocket_message_resets_the_stream() -> None:
    async with tunnel(ws_echo, max_ws_message=2 * WINDOW) as t:
        stream = t.relay.open_stream(WS)
        await stream.response()
        with pytest.raises(StreamReset) as info:
            await stream.send_message(b"x" * (4 * WINDOW), text=False)
        assert info.value.code is ResetCode.TOO_LARGE


async def test_reads_of_a_reset_websocket_raise() -> None:
    async def reset_after_reply(stream: Stream) -> None:
        stream.reply(SWITCH)
        stream.reset(ResetCode.UPSTREAM_ERROR, "origin dropped the socket")

    async with tunnel(reset_after_reply) as t:
        stream = t.relay.open_stream(WS)
        with contextlib.suppress(StreamReset):
            await stream.response()
        with pytest.raises(StreamReset, match="origin dropped"):
            await stream.receive_message()


# -- heads too large to send -------------------------------------------------------------


async def test_a_request_head_too_large_is_refused_and_the_session_carries_on() -> None:
    huge = RequestHead("GET", "/", (("X-Junk", "\x01" * 50_000),))  # 300 kB as JSON
    async with tunnel(echo) as t:
        with pytest.raises(HeadTooLarge):
            t.relay.open_stream(huge)
        assert t.relay.open_streams == 0
        stream = t.relay.open_stream(POST)
        await stream.write(b"after")
        await stream.end()
        assert (await stream.response())[0].status == 200
        assert await read_all(stream) == b"after"


async def test_a_reply_too_large_leaves_the_stream_to_reset_and_the_session_up() -> None:
    cookies = tuple(("Set-Cookie", f"c{i}=" + "v" * 7996) for i in range(40))

    async def cookie_monster(stream: Stream) -> None:
        assert stream.request is not None
        if stream.request.target == "/cookies":
            with pytest.raises(HeadTooLarge) as info:
                stream.reply(ResponseHead(200, cookies))
            assert stream.writable
            stream.reset(ResetCode.UPSTREAM_HEAD_TOO_LARGE, f"{info.value.size} bytes")
            return
        await echo(stream)

    async with tunnel(cookie_monster) as t:
        big = t.relay.open_stream(RequestHead("GET", "/cookies"), end_stream=True)
        with pytest.raises(StreamReset) as reset:
            await big.response()
        assert reset.value.code is ResetCode.UPSTREAM_HEAD_TOO_LARGE
        small = t.relay.open_stream(GET, end_stream=True)
        assert (await small.response())[0].status == 200
        assert t.relay.ended is None and t.client.ended is None


# -- the WebSocket bridge ----------------------------------------------------------------

TEXT, BINARY, CLOSE, CLOSED = 0x1, 0x2, 0x8, 0x101  # aiohttp's WSMsgType values


class Received(NamedTuple):
    """What aiohttp's receive() returns (a NamedTuple too)."""

    type: int
    data: Any = None
    extra: Any = None


class FakeWebSocket:
    """An aiohttp WebSocket as the bridge sees it: messages in, calls recorded."""

    def __init__(self) -> None:
        self.incoming: asyncio.Queue[Received] = asyncio.Queue()
        self.sent: list[str | bytes] = []
        self.closes: list[tuple[int, bytes]] = []
        self.closed = False
        self.close_code: int | None = None

    def peer_sends(self, *messages: Received) -> None:
        for msg in messages:
            if msg.type == CLOSE:
                # aiohttp answers a close itself (autoclose) before returning it.
                self.closed, self.close_code = True, msg.data
            self.incoming.put_nowait(msg)

    async def receive(self) -> Received:
        return await self.incoming.get()

    async def send_str(self, data: str) -> None:
        self.sent.append(data)

    async def send_bytes(self, data: bytes) -> None:
        self.sent.append(data)

    async def close(self, *, code: int = 1000, message: bytes = b"") -> bool:
        self.closes.append((code, message))
        if self.closed:
            return False
        self.closed, self.close_code = True, code
        self.incoming.put_nowait(Received(CLOSED))  # what receive() says once closed
        return True


@contextlib.asynccontextmanager
async def bridged(
    grace_s: float = 5.0,
) -> AsyncIterator[tuple[Tunnel, Stream, FakeWebSocket, asyncio.Task[None]]]:
    """A WebSocket stream whose client end is bridged to a fake local WebSocket."""
    local = FakeWebSocket()
    bridge: asyncio.Future[asyncio.Task[None]] = asyncio.get_running_loop().create_future()

    async def serve(stream: Stream) -> None:
        stream.reply(SWITCH)
        bridging = bridge_websocket(stream, local, abort_code=1001, grace_s=grace_s)
        task = asyncio.create_task(bridging)
        bridge.set_result(task)
        await task

    async with tunnel(serve) as t:
        stream = t.relay.open_stream(WS)
        await stream.response()
        yield t, stream, local, await bridge


async def test_the_bridge_keeps_text_and_binary_both_ways() -> None:
    async with bridged() as (_, stream, local, _):
        await stream.send_message("h\u00e9".encode(), text=True)
        await stream.send_message(b"\x00\xff", text=False)
        await until(lambda: len(local.sent) == 2)
        assert local.sent == ["h\u00e9", b"\x00\xff"]
        local.peer_sends(Received(TEXT, "\u00fcber"), Received(BINARY, b"\x80"))
        for data, text in (("\u00fcber".encode(), True), (b"\x80", False)):
            item = await stream.receive_message()
            assert isinstance(item, WebSocketMessage)
            assert (item.data, item.text) == (data, text)


async def test_a_close_from_the_websocket_passes_on_and_waits_for_the_answer() -> None:
    async with bridged() as (_, stream, local, bridge):
        local.peer_sends(Received(CLOSE, 4001, "asked to close"))
        assert await stream.receive_message() == WebSocketClosed(4001, "asked to close")
        await asyncio.sleep(0.01)
        assert not bridge.done()  # waiting for the other end's close
        stream.send_close(4001, "asked to close")
        await bridge
        assert local.closes == [(4001, b"asked to close")]  # passed on, never 1011


async def test_a_close_from_the_stream_passes_on_and_comes_back() -> None:
    async with bridged() as (_, stream, local, bridge):
        stream.send_close(4002, "visitor leaves")
        # The local end closed with those; what it closed with goes back as the answer.
        assert await stream.receive_message() == WebSocketClosed(4002, "")
        await bridge
        assert local.closes == [(4002, b"visitor leaves")]


async def test_a_close_left_unanswered_ends_the_bridge_after_the_grace() -> None:
    async with bridged(grace_s=0.05) as (_, stream, local, bridge):
        local.peer_sends(Received(CLOSE, None, None))
        assert await stream.receive_message() == WebSocketClosed(1000, "")
        await asyncio.wait_for(bridge, 5)
        assert local.closes == []  # it closed itself: nothing more to send


async def test_a_reset_stream_closes_the_websocket_with_the_abort_code() -> None:
    async with bridged() as (_, stream, local, bridge):
        stream.reset(ResetCode.CANCEL, "the visitor went away")
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(bridge, 5)
        assert local.closes == [(1001, b"tunnel stream ended")]


async def test_a_broken_stream_ends_the_bridge_at_once_with_1011() -> None:
    """The relay's side: its stream fails while the visitor's WebSocket stays open."""
    visitor = FakeWebSocket()

    async def reset_after_upgrade(stream: Stream) -> None:
        stream.reply(SWITCH)
        await stream.receive_message()
        stream.reset(ResetCode.UPSTREAM_ERROR, "the local WebSocket broke")

    async with tunnel(reset_after_upgrade) as t:
        stream = t.relay.open_stream(WS)
        await stream.response()
        visitor.peer_sends(Received(TEXT, "hello"))
        await asyncio.wait_for(bridge_websocket(stream, visitor, grace_s=30), 5)
        assert visitor.closes == [(1011, b"tunnel stream ended")]


async def test_a_bridge_over_a_stream_that_ended_only_winds_down() -> None:
    visitor = FakeWebSocket()
    async with tunnel(ws_echo) as t:
        stream = t.relay.open_stream(WS)
        await stream.response()
        stream.reset(ResetCode.CANCEL, "gone already")
        visitor.peer_sends(Received(CLOSE, 1001, "going away"))
        await asyncio.wait_for(bridge_websocket(stream, visitor), 5)
        assert visitor.closes == []  # its own close was answered; nothing to pass on
        assert not t.relay.mux.is_live(stream.id)


# -- writing from callbacks ----------------------------------------------------------------


async def test_write_nowait_takes_what_credit_allows_and_ends_with_the_last_byte() -> None:
    body = bytes(range(256)) * (3 * WINDOW // 256)  # three windows, many frames
    taken: asyncio.Future[tuple[int, bool]] = asyncio.get_running_loop().create_future()

    async def answer(stream: Stream) -> None:
        assert stream.peer_ended and not stream.has_data  # the OPEN had FIN
        stream.reply(OK)
        first = stream.write_nowait(body, end=True)
        taken.set_result((first, stream.writable))
        await stream.write(body[first:])
        await stream.end()

    async with tunnel(answer) as t:
        stream = t.relay.open_stream(GET, end_stream=True)
        await stream.response()
        first, still_writable = await taken
        assert first == WINDOW and still_writable  # one window; no FIN without every byte
        assert await read_all(stream) == body


async def test_write_nowait_with_everything_sent_ends_the_stream_in_the_same_frame() -> None:
    async def answer(stream: Stream) -> None:
        stream.reply(OK)
        assert stream.write_nowait(b"small", end=True) == 5
        assert not stream.writable

    async with tunnel(answer) as t:
        stream = t.relay.open_stream(GET, end_stream=True)
        await stream.response()
        assert await read_all(stream) == b"small"
        data = [f for f in frames_of(t.client.transport.sent) if f.type is FrameType.DATA]  # type: ignore[attr-defined]
        assert len(data) == 1 and data[0].payload == b"small"


async def test_write_nowait_takes_nothing_while_the_session_is_congested() -> None:
    result: asyncio.Future[tuple[int, int]] = asyncio.get_running_loop().create_future()

    async def answer(stream: Stream) -> None:
        stream.reply(OK)
        session = stream._session
        session._queued = lambda: HIGH_WATER_BYTES + 1  # type: ignore[method-assign]
        assert session.congested  # as if the transport were stuck
        blocked = stream.write_nowait(b"x")
        del session._queued
        result.set_result((blocked, stream.write_nowait(b"", end=True)))

    async with tunnel(answer) as t:
        stream = t.relay.open_stream(GET, end_stream=True)
        await stream.response()
        assert await result == (0, 0)
        assert await read_all(stream) == b""


# -- the codec bridge ----------------------------------------------------------------------


class FakeChannel:
    """The local server's connection, played by a server-side codec in the test."""

    def __init__(self) -> None:
        self.incoming: asyncio.Queue[bytes] = asyncio.Queue()
        self.server = WebSocketCodec(mask=False)
        self.closed = False
        self.drained = 0

    async def read(self) -> bytes:
        return await self.incoming.get()

    def write(self, data: bytes) -> None:
        self.server.receive_data(data)

    async def drain(self) -> None:
        self.drained += 1

    def close(self) -> None:
        self.closed = True

    def server_sends(self, *calls: tuple[str, Any]) -> None:
        for name, args in calls:
            getattr(self.server, name)(*args[:-1], **args[-1])
        self.incoming.put_nowait(self.server.data_to_send())

    def received(self) -> list[Message | Close]:
        return self.server.events_received()


@contextlib.asynccontextmanager
async def codec_bridged(
    grace_s: float = 5.0,
) -> AsyncIterator[tuple[Stream, FakeChannel, asyncio.Task[None]]]:
    channel = FakeChannel()
    bridge: asyncio.Future[asyncio.Task[None]] = asyncio.get_running_loop().create_future()

    async def serve(stream: Stream) -> None:
        stream.reply(SWITCH)
        task = asyncio.create_task(
            bridge_codec(
                stream, WebSocketCodec(mask=True), channel, abort_code=1001, grace_s=grace_s
            )
        )
        bridge.set_result(task)
        await task

    async with tunnel(serve) as t:
        stream = t.relay.open_stream(WS)
        await stream.response()
        yield stream, channel, await bridge


async def test_the_codec_bridge_keeps_text_and_binary_both_ways_and_answers_pings() -> None:
    async with codec_bridged() as (stream, channel, _):
        await stream.send_message("h\u00e9".encode(), text=True)
        await stream.send_message(b"\x00\xff", text=False)
        await until(lambda: channel.drained == 2)
        assert channel.received() == [
            Message("h\u00e9".encode(), True),
            Message(b"\x00\xff", False),
        ]
        channel.server._frame(0x9, b"ping?")  # a PING from the server
        channel.server_sends(("send_message", (b"\x80", {"text": False})))
        item = await stream.receive_message()
        assert isinstance(item, WebSocketMessage) and (item.data, item.text) == (b"\x80", False)
        await until(lambda: channel.server._buffer == bytearray() and channel.received() == [])


async def test_a_close_from_the_server_passes_on_and_the_answer_comes_back() -> None:
    async with codec_bridged() as (stream, channel, bridge):
        channel.server_sends(("send_close", (4001, "asked to close", {})))
        assert await stream.receive_message() == WebSocketClosed(4001, "asked to close")
        assert not bridge.done()  # waiting for the visitor's answer
        stream.send_close(4001, "asked to close")
        await asyncio.wait_for(bridge, 5)
        assert channel.received() == [Close(4001, "asked to close")] and channel.closed


@pytest.mark.parametrize(("code", "expected"), [(4002, 4002), (1005, 1005), (1006, 1001)])
async def test_a_close_from_the_stream_reaches_the_server(code: int, expected: int) -> None:
    async with codec_bridged(grace_s=0.05) as (stream, channel, bridge):
        stream.send_close(code, "visitor leaves" if code == 4002 else "")
        await asyncio.wait_for(bridge, 5)
        (close,) = channel.received()
        assert isinstance(close, Close) and close.code == expected


async def test_a_reset_or_a_vanished_server_end_the_codec_bridge() -> None:
    async with codec_bridged() as (stream, channel, bridge):
        stream.reset(ResetCode.CANCEL, "the visitor went away")
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(bridge, 5)
        assert channel.received() == [Close(1001, "tunnel stream ended")] and channel.closed
    async with codec_bridged(grace_s=0.05) as (stream, channel, bridge):
        channel.incoming.put_nowait(b"")  # the connection closed without a close frame
        assert await stream.receive_message() == WebSocketClosed(
            1006, "the connection closed without a close"
        )
        await asyncio.wait_for(bridge, 5)
        assert channel.closed


async def test_a_server_breaking_the_framing_rules_gets_1002() -> None:
    async with codec_bridged(grace_s=0.05) as (stream, channel, bridge):
        channel.incoming.put_nowait(b"\x81\x82abcdef")  # masked by a server: forbidden
        item = await stream.receive_message()
        assert isinstance(item, WebSocketClosed) and item.code == 1002
        await asyncio.wait_for(bridge, 5)
        (close,) = channel.received()
        assert isinstance(close, Close) and close.code == 1002
