"""aio.splice: a stream served on one session, passed on to another, stream to stream.

Three sessions in memory, as in a cluster: the *edge* session (node A, relay role) opens
streams on the *hop* (node B, client role); B serves each by splicing it onto the
*link* session (B, relay role), whose client plays the local server.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator

import pytest

from tests.protocol.helpers import GET, POST, SWITCH, WS, MemoryTransport
from tests.protocol.test_aio import Handler, Tunnel, echo, make_session, read_all, until, ws_echo
from tunnel_client.protocol.aio import Session, Stream, WebSocketClosed, WebSocketMessage, splice
from tunnel_client.protocol.errors import GoAwayCode, ResetCode, SessionClosed, StreamReset
from tunnel_client.protocol.heads import RequestHead, ResponseHead
from tunnel_client.protocol.mux import Role
from tunnel_client.protocol.window import MIN_WINDOW

WINDOW = MIN_WINDOW
pytestmark = pytest.mark.timeout(20)


class Hop:
    """The edge's session to node B, and B's session to the link's client."""

    def __init__(self, hop: Tunnel, link: Tunnel) -> None:
        self.hop = hop
        self.link = link

    @property
    def edge(self) -> Session:
        return self.hop.relay


@contextlib.asynccontextmanager
async def hop(local_server: Handler) -> AsyncIterator[Hop]:
    a, b = MemoryTransport.pair()
    c, d = MemoryTransport.pair()
    link = Tunnel(make_session(c, Role.RELAY), make_session(d, Role.CLIENT, local_server))

    async def serve(stream: Stream) -> None:
        await splice(stream, link.relay)

    hop_tunnel = Tunnel(make_session(a, Role.RELAY), make_session(b, Role.CLIENT, serve))
    try:
        yield Hop(hop_tunnel, link)
    finally:
        for tunnel in (hop_tunnel, link):
            tunnel.relay.close(GoAwayCode.NORMAL, "test over")
        await hop_tunnel.finished()
        await link.finished()


async def test_a_request_and_its_body_pass_both_ways() -> None:
    body = bytes(range(256)) * 4096  # 1 MiB: many windows on both sessions
    async with hop(echo) as h:
        stream = h.edge.open_stream(POST)
        await stream.write(body)
        await stream.end()
        head, ended = await stream.response()
        assert head.status == 200 and head.header("X-Method") == "POST" and not ended
        assert hashlib.sha256(await read_all(stream)).digest() == hashlib.sha256(body).digest()
        await until(lambda: h.link.relay.open_streams == 0 and h.hop.client.open_streams == 0)


async def test_a_bodyless_request_opens_ended_and_an_empty_reply_ends_at_once() -> None:
    seen: list[bool] = []

    async def no_content(stream: Stream) -> None:
        seen.append(await stream.read() == b"")
        stream.reply(ResponseHead(204), end_stream=True)

    async with hop(no_content) as h:
        stream = h.edge.open_stream(GET, end_stream=True)
        assert await stream.response() == (ResponseHead(204), True)
        assert seen == [True]
        await until(lambda: h.link.relay.open_streams == 0 and h.hop.client.open_streams == 0)


async def test_a_slow_reader_holds_back_the_far_writer() -> None:
    """Nothing is read faster than credit allows: at most a window waits per session."""
    written = 0
    release = asyncio.Event()

    async def firehose(stream: Stream) -> None:
        nonlocal written
        stream.reply(ResponseHead(200))
        for _ in range(64):
            await stream.write(b"x" * 4096)
            written += 4096
        release.set()
        await stream.end()

    async with hop(firehose) as h:
        stream = h.edge.open_stream(GET, end_stream=True)
        await stream.response()
        await asyncio.sleep(0.3)  # the edge reads nothing meanwhile
        assert not release.is_set()
        # The edge's window, the hop's buffer, the link's window, and a chunk in hand.
        assert written <= 3 * WINDOW + 4096, written
        assert len(await read_all(stream)) == 64 * 4096


async def test_a_reset_before_the_reply_keeps_its_code_and_reason() -> None:
    async def refused(stream: Stream) -> None:
        stream.reset(ResetCode.UPSTREAM_UNAVAILABLE, "nothing is listening on port 7860")

    async with hop(refused) as h:
        stream = h.edge.open_stream(GET, end_stream=True)
        with pytest.raises(StreamReset) as reset:
            await stream.response()
        assert reset.value.code is ResetCode.UPSTREAM_UNAVAILABLE
        assert reset.value.reason == "nothing is listening on port 7860"


async def test_a_reset_mid_body_reaches_the_edge() -> None:
    async def broken(stream: Stream) -> None:
        stream.reply(ResponseHead(200))
        await stream.write(b"partial")
        stream.reset(ResetCode.UPSTREAM_ERROR, "broke off")

    async with hop(broken) as h:
        stream = h.edge.open_stream(GET, end_stream=True)
        await stream.response()
        with pytest.raises(StreamReset) as reset:
            await read_all(stream)
        assert reset.value.code is ResetCode.UPSTREAM_ERROR


async def test_a_visitor_who_leaves_cancels_the_local_request() -> None:
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def hang(stream: Stream) -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async with hop(hang) as h:
        stream = h.edge.open_stream(POST)
        await stream.write(b"some")
        await started.wait()
        stream.reset(ResetCode.UPSTREAM_TIMEOUT, "no response in time")
        async with asyncio.timeout(5):
            await cancelled.wait()
        await until(lambda: h.link.relay.open_streams == 0 and h.hop.client.open_streams == 0)


async def test_the_end_of_the_link_session_ends_forwarded_requests() -> None:
    started = asyncio.Event()

    async def hang(stream: Stream) -> None:
        started.set()
        await asyncio.Event().wait()

    async with hop(hang) as h:
        stream = h.edge.open_stream(GET, end_stream=True)
        await started.wait()
        h.link.client.close(GoAwayCode.NORMAL, "owner stopped")
        with pytest.raises(StreamReset) as reset:
            await stream.response()
        assert reset.value.code is ResetCode.INTERNAL_ERROR


async def test_an_ended_link_session_refuses_before_anything_is_sent() -> None:
    a, b = MemoryTransport.pair()
    link = make_session(a, Role.RELAY)
    link.close(GoAwayCode.NORMAL, "gone")
    c, d = MemoryTransport.pair()
    inbound_session = make_session(d, Role.CLIENT)
    inbound = Stream(inbound_session, 2, GET)
    with pytest.raises(SessionClosed):
        await splice(inbound, link)
    for transport in (a, b, c, d):
        await transport.close()


async def test_websocket_messages_and_closes_pass_both_ways() -> None:
    async with hop(ws_echo) as h:
        stream = h.edge.open_stream(WS)
        assert await stream.response() == (SWITCH, False)
        big = bytes(range(256)) * 1000  # several windows, many fragments
        for data, text in [(b"hi", True), (big, False), ("h\u00e9".encode(), True)]:
            await stream.send_message(data, text=text)
            item = await stream.receive_message()
            assert isinstance(item, WebSocketMessage)
            assert (item.data, item.text) == (data, text)
        stream.send_close(4000, "bye")
        assert await stream.receive_message() == WebSocketClosed(4000, "bye")
        await until(lambda: h.link.relay.open_streams == 0 and h.hop.client.open_streams == 0)


async def test_a_head_other_than_the_inbound_one_can_be_sent() -> None:
    async def show(stream: Stream) -> None:
        assert stream.request is not None
        stream.reply(ResponseHead(200, (("X-Target", stream.request.target),)), end_stream=True)

    a, b = MemoryTransport.pair()
    c, d = MemoryTransport.pair()
    link = Tunnel(make_session(c, Role.RELAY), make_session(d, Role.CLIENT, show))

    async def serve(stream: Stream) -> None:
        await splice(stream, link.relay, RequestHead("GET", "/rewritten"))

    hop_tunnel = Tunnel(make_session(a, Role.RELAY), make_session(b, Role.CLIENT, serve))
    try:
        stream = hop_tunnel.relay.open_stream(GET, end_stream=True)
        head, _ = await stream.response()
        assert head.header("X-Target") == "/rewritten"
    finally:
        for tunnel in (hop_tunnel, link):
            tunnel.relay.close(GoAwayCode.NORMAL, "test over")
        await hop_tunnel.finished()
        await link.finished()
