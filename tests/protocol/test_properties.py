"""Properties of two connected multiplexers, and of one fed hostile input (hypothesis).

The state machine drives a :class:`MuxPair` with every legal move either side can make
and checks, after each step, that flow control holds and every byte arrives in order.
It peeks at ``Mux._streams`` for the receive windows, which have no public accessor.
"""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass, field

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from tests.protocol.helpers import GET, OK, POST, SWITCH, WS, MuxPair, examples, pattern
from tunnel_client.protocol.errors import ResetCode
from tunnel_client.protocol.events import (
    CloseReceived,
    DataReceived,
    Event,
    MessageReceived,
    PingAcknowledged,
    ReplyReceived,
    ResetReceived,
    SessionEnded,
    StreamOpened,
    WindowOpened,
)
from tunnel_client.protocol.frames import HEADER, Flags, FrameType, decode_frames
from tunnel_client.protocol.heads import RequestHead, ResponseHead
from tunnel_client.protocol.mux import Mux, Role
from tunnel_client.protocol.window import MIN_WINDOW

U32 = struct.Struct("!I")

RELAY, CLIENT = "relay", "client"
WINDOW = MIN_WINDOW


@dataclass
class Flow:
    """One direction of one stream, as the test saw it."""

    sent: bytearray = field(default_factory=bytearray)
    received: bytearray = field(default_factory=bytearray)
    fin_sent: bool = False
    fin_received: bool = False
    unacked: int = 0
    """Bytes the receiving application got and has not acknowledged yet."""


@dataclass
class StreamModel:
    sid: int
    open_fin: bool
    """The OPEN itself ended the request (no body)."""
    opened_at_client: bool = False
    replied: bool = False
    reply_received: bool = False
    reset_by: set[str] = field(default_factory=set)
    reset_received: set[str] = field(default_factory=set)
    flows: dict[str, Flow] = field(default_factory=lambda: {RELAY: Flow(), CLIENT: Flow()})
    """Keyed by the sending side."""

    @property
    def reset(self) -> bool:
        return bool(self.reset_by or self.reset_received)


class TwoMuxes(RuleBasedStateMachine):
    """Random legal traffic between a relay and a client."""

    growth: tuple[int, int] | None = None
    """Window growth on both sides (``(max_window, budget)``), or fixed windows."""

    def __init__(self) -> None:
        super().__init__()
        self.pair = MuxPair(
            relay_window=WINDOW,
            client_window=WINDOW,
            max_streams=2,
            max_frame=WINDOW // 2,
            client_growth=self.growth,
            relay_growth=self.growth,
        )
        self.max_window, self.budget = self.growth or (WINDOW, 0)
        self.streams: dict[int, StreamModel] = {}
        self.clock = 0.0

    def mux(self, side: str) -> Mux:
        return self.pair.relay if side == RELAY else self.pair.client

    def live(self, side: str) -> list[StreamModel]:
        """Streams that ``side`` still holds, oldest first."""
        mux = self.mux(side)
        return [m for sid, m in sorted(self.streams.items()) if mux.is_live(sid)]

    def writable(self, side: str) -> list[StreamModel]:
        mux = self.mux(side)
        return [m for m in self.live(side) if mux.can_send(m.sid) and (side == RELAY or m.replied)]

    def unreplied(self) -> list[StreamModel]:
        return [m for m in self.live(CLIENT) if m.opened_at_client and not m.replied]

    def unacknowledged(self, side: str) -> list[StreamModel]:
        sender = CLIENT if side == RELAY else RELAY
        return [m for m in self.live(side) if m.flows[sender].unacked]

    # -- rules -----------------------------------------------------------------------------
    # Each rule acts on a stream where its move is legal (preconditions keep hypothesis
    # from wasting steps on moves that would do nothing).

    @precondition(lambda self: self.pair.relay.open_streams < 3)
    @rule(body=st.sampled_from([True, True, False]))
    def open_stream(self, body: bool) -> None:
        sid = self.pair.relay.open_stream(POST if body else GET, end_stream=not body)
        assert sid not in self.streams
        model = StreamModel(sid, open_fin=not body)
        model.flows[RELAY].fin_sent = not body
        self.streams[sid] = model

    @precondition(lambda self: self.unreplied())
    @rule(index=st.integers(0, 3), end=st.sampled_from([False, False, True]))
    def reply(self, index: int, end: bool) -> None:
        candidates = self.unreplied()
        model = candidates[index % len(candidates)]
        self.pair.client.send_reply(model.sid, OK, end_stream=end)
        model.replied = True
        model.flows[CLIENT].fin_sent = end

    @precondition(lambda self: self.writable(RELAY) or self.writable(CLIENT))
    @rule(
        side=st.sampled_from([RELAY, CLIENT]),
        index=st.integers(0, 3),
        n=st.integers(0, WINDOW),
        end=st.integers(0, 7).map(lambda n: n == 0),  # FIN one write in eight
    )
    def write(self, side: str, index: int, n: int, end: bool) -> None:
        """Write n bytes, maybe with FIN (which only goes out once every byte was taken)."""
        if not self.writable(side):
            side = CLIENT if side == RELAY else RELAY
        candidates = self.writable(side)
        self._send(side, candidates[index % len(candidates)], n, end)

    def _send(self, side: str, model: StreamModel, n: int, end: bool) -> None:
        mux = self.mux(side)
        flow = model.flows[side]
        credit = mux.credit(model.sid)
        data = pattern(model.sid, len(flow.sent), n, salt=side == CLIENT)
        taken = mux.send_data(model.sid, data, end_stream=end)
        assert taken == min(n, credit, mux.max_frame)
        if mux.is_live(model.sid):  # a FIN may have ended the stream in both directions
            assert mux.credit(model.sid) == credit - taken
        flow.sent += data[:taken]
        flow.fin_sent = end and taken == n

    @precondition(lambda self: self.writable(RELAY) or self.writable(CLIENT))
    @rule(side=st.sampled_from([RELAY, CLIENT]), index=st.integers(0, 3), rounds=st.integers(1, 4))
    def burst(self, side: str, index: int, rounds: int) -> None:
        """A fast transfer: the sender spends all its credit, the reader takes it at once."""
        if not self.writable(side):
            side = CLIENT if side == RELAY else RELAY
        candidates = self.writable(side)
        model = candidates[index % len(candidates)]
        sender, reader = self.mux(side), self.mux(CLIENT if side == RELAY else RELAY)
        for _ in range(rounds):
            while sender.can_send(model.sid) and sender.credit(model.sid):
                self._send(side, model, sender.credit(model.sid), False)
            self.pump()
            flow = model.flows[side]
            if not flow.unacked or not reader.is_live(model.sid):
                return
            reader.acknowledge(model.sid, flow.unacked, self.clock)
            flow.unacked = 0
            self.pump()

    @precondition(lambda self: self.writable(RELAY) or self.writable(CLIENT))
    @rule(side=st.sampled_from([RELAY, CLIENT]), index=st.integers(0, 3), chance=st.integers(0, 3))
    def end(self, side: str, index: int, chance: int) -> None:
        """End one direction with an empty DATA frame carrying FIN."""
        if chance:
            return  # like write(end=True): ending often would leave little traffic
        if not self.writable(side):
            side = CLIENT if side == RELAY else RELAY
        candidates = self.writable(side)
        model = candidates[index % len(candidates)]
        assert self.mux(side).send_data(model.sid, b"", end_stream=True) == 0
        assert not self.mux(side).can_send(model.sid)
        model.flows[side].fin_sent = True

    @precondition(lambda self: self.unacknowledged(RELAY) or self.unacknowledged(CLIENT))
    @rule(
        side=st.sampled_from([RELAY, CLIENT]),
        index=st.integers(0, 3),
        n=st.integers(1, WINDOW),
        later=st.sampled_from([0.0, 0.0001, 0.001, 0.1, 1.0]),
    )
    def acknowledge(self, side: str, index: int, n: int, later: float) -> None:
        if not self.unacknowledged(side):
            side = CLIENT if side == RELAY else RELAY
        candidates = self.unacknowledged(side)
        model = candidates[index % len(candidates)]
        flow = model.flows[CLIENT if side == RELAY else RELAY]
        n = min(n, flow.unacked)
        self.clock += later
        self.mux(side).acknowledge(model.sid, n, self.clock)
        flow.unacked -= n

    @precondition(lambda self: self.live(RELAY) or self.live(CLIENT))
    @rule(
        side=st.sampled_from([RELAY, CLIENT]),
        index=st.integers(0, 3),
        code=st.sampled_from(ResetCode),
        chance=st.integers(0, 3),
    )
    def reset(self, side: str, index: int, code: ResetCode, chance: int) -> None:
        if chance:
            return  # resets end streams for good: make them rarer than other moves
        if not self.live(side):
            side = CLIENT if side == RELAY else RELAY
        candidates = self.live(side)
        model = candidates[index % len(candidates)]
        self.mux(side).reset_stream(model.sid, code, "test")
        model.reset_by.add(side)

    def pending(self) -> bool:
        return bool(self.pair.relay.pending_bytes or self.pair.client.pending_bytes)

    @precondition(pending)
    @rule(side=st.sampled_from([RELAY, CLIENT]))
    def deliver(self, side: str) -> None:
        """Move what one side queued to the other (the other direction waits)."""
        receiver = CLIENT if side == RELAY else RELAY
        for event in self.pair.deliver(self.mux(side)):
            self.on_event(receiver, event)

    @precondition(pending)
    @rule()
    def pump(self) -> None:
        pumped = self.pair.pump()
        # pump() alternates directions; the events of each side keep their own order.
        for event in pumped.client:
            self.on_event(CLIENT, event)
        for event in pumped.relay:
            self.on_event(RELAY, event)

    # -- what each side sees -------------------------------------------------------------

    def on_event(self, side: str, event: Event) -> None:
        assert not isinstance(event, SessionEnded), event  # legal traffic never ends it
        assert isinstance(
            event, StreamOpened | DataReceived | ReplyReceived | ResetReceived | WindowOpened
        ), event
        model = self.streams[event.stream_id]
        sender = CLIENT if side == RELAY else RELAY
        # A side that reset a stream (or learned of its reset) hears nothing more of it.
        assert side not in model.reset_by, (side, event)
        assert side not in model.reset_received, (side, event)
        match event:
            case StreamOpened(end_stream=end):
                assert side == CLIENT and not model.opened_at_client
                model.opened_at_client = True
                assert end == model.open_fin
                if end:
                    model.flows[RELAY].fin_received = True
            case DataReceived(data=data, end_stream=end):
                flow = model.flows[sender]
                assert not flow.fin_received, "DATA after FIN"
                flow.received += data
                assert flow.received == flow.sent[: len(flow.received)], "bytes out of order"
                flow.unacked += len(data)
                if end:
                    assert flow.fin_sent
                    flow.fin_received = True
                    assert flow.received == flow.sent
            case ReplyReceived(end_stream=end):
                assert side == RELAY and model.replied and not model.reply_received
                model.reply_received = True
                if end:
                    model.flows[CLIENT].fin_received = True
            case ResetReceived(code=code):
                if code is ResetCode.REFUSED and not model.opened_at_client:
                    assert side == RELAY  # the client refused the stream: too many open
                else:
                    assert sender in model.reset_by
                model.reset_received.add(side)
            case WindowOpened(increment=increment):
                assert 0 < increment <= self.max_window

    # -- invariants ----------------------------------------------------------------------

    @invariant()
    def session_alive(self) -> None:
        assert self.pair.relay.ended is None and self.pair.client.ended is None

    @invariant()
    def streams_live_exactly_as_long_as_they_should(self) -> None:
        for model in self.streams.values():
            for side in (RELAY, CLIENT):
                peer = CLIENT if side == RELAY else RELAY
                known = side == RELAY or model.opened_at_client
                reset = side in model.reset_by or side in model.reset_received
                done = model.flows[side].fin_sent and model.flows[peer].fin_received
                live = known and not reset and not done
                assert self.mux(side).is_live(model.sid) == live, (side, model)
                assert self.mux(side).can_send(model.sid) == (
                    live and not model.flows[side].fin_sent
                )

    @invariant()
    def windows_and_credits_in_bounds(self) -> None:
        for side in (RELAY, CLIENT):
            mux = self.mux(side)
            sender = CLIENT if side == RELAY else RELAY
            grown = 0
            for sid, stream in mux._streams.items():
                window = stream.receive
                assert WINDOW <= window.size <= self.max_window
                assert window.size == WINDOW + stream.grown or not stream.remote_open
                grown += stream.grown
                assert 0 <= window.available <= window.size
                # Never above the peer's window, however far it grew.
                assert 0 <= mux.credit(sid) <= self.max_window
                if stream.remote_open:
                    unacked = self.streams[sid].flows[sender].unacked
                    # What the application holds unacknowledged is covered by the window.
                    assert unacked <= window.size - window.available <= window.size
            # The windows grew within the session's budget, and ended streams gave back.
            assert grown + mux._growth_left == self.budget or mux.ended is not None

    @invariant()
    def everything_arrives_once_quiet(self) -> None:
        if self.pair.relay.pending_bytes or self.pair.client.pending_bytes:
            return
        for model in self.streams.values():
            if model.reset:
                continue
            for flow in model.flows.values():
                assert flow.received == flow.sent
                assert flow.fin_received == flow.fin_sent
            # Credit conservation: what one side may send is what the other will accept.
            for side in (RELAY, CLIENT):
                receiver = self.mux(CLIENT if side == RELAY else RELAY)._streams.get(model.sid)
                if (
                    receiver is not None
                    and receiver.remote_open
                    and self.mux(side).is_live(model.sid)
                ):
                    assert self.mux(side).credit(model.sid) == receiver.receive.available


TwoMuxes.TestCase.settings = settings(
    max_examples=80,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
test_two_muxes = TwoMuxes.TestCase


class TwoGrowingMuxes(TwoMuxes):
    """The same, with windows that grow when their reader keeps up (a fake clock)."""

    growth = (4 * WINDOW, 5 * WINDOW)


# Fewer examples: its bursts move several windows each, and growth shows in every one.
TwoGrowingMuxes.TestCase.settings = settings(
    TwoMuxes.TestCase.settings, max_examples=30, stateful_step_count=40
)
test_two_growing_muxes = TwoGrowingMuxes.TestCase


# -- one client mux against arbitrary input --------------------------------------------------
# Mostly well-formed frames about streams the relay did open (so the input reaches every
# state: open, upgraded, half-closed, reset), mixed with rule breakers and plain garbage.

STREAM_TYPES = [
    FrameType.DATA,
    FrameType.WINDOW,
    FrameType.RESET,
    FrameType.MESSAGE,
    FrameType.CLOSE,
]
ANY_FLAGS = st.sampled_from([0, Flags.FIN, Flags.ACK, Flags.TEXT, Flags.MORE, 0x0C, 0x10])
LEGAL_FLAGS = {FrameType.DATA: [0, 0, Flags.FIN], FrameType.MESSAGE: [0, Flags.TEXT, Flags.MORE]}
PAYLOADS: dict[FrameType, st.SearchStrategy[bytes]] = {
    FrameType.REPLY: st.sampled_from([OK.encode(), SWITCH.encode(), b"{}"]),
    FrameType.DATA: st.binary(max_size=20) | st.sampled_from([b"d" * WINDOW, b"e" * 4000]),
    FrameType.MESSAGE: st.binary(max_size=20) | st.sampled_from([b"m" * WINDOW, b"n" * 4000]),
    FrameType.WINDOW: st.sampled_from([1, 1000, 0, 2**31 - 1, 2**32 - 1]).map(U32.pack),
    FrameType.RESET: st.integers(0, 9).map(lambda c: U32.pack(c) + b"why"),
    FrameType.CLOSE: st.sampled_from([b"\x03\xe8", b"\x0f\xa0bye", b"\xff\xff\xff"]),
}
# Weights by repetition: mostly legal-looking moves, so that sessions live long enough
# to reach every state; each kind of fault is rare but present.
KINDS = ["stream"] * 12 + ["open"] * 6 + ["ping"] * 2 + ["odd stream", "bad flags", "fault"]


@st.composite
def peer_moves(draw: st.DrawFn) -> tuple[object, ...]:
    """One thing a (possibly hostile) relay sends, before stream ids are assigned."""
    kind = draw(st.sampled_from(KINDS))
    if kind == "open":
        return ("open", draw(st.sampled_from([GET, POST, WS])), draw(st.booleans()))
    if kind == "ping":
        return ("ping", draw(st.sampled_from([0, Flags.ACK])))
    if kind == "fault":
        return draw(
            st.tuples(st.just("garbage"), st.binary(max_size=30))
            | st.tuples(st.just("goaway"), st.integers(0, 12))
            | st.just(("hello",))
            | st.tuples(
                st.just("stream"),
                st.just(FrameType.REPLY),
                st.just(0),
                st.just(0),
                PAYLOADS[FrameType.REPLY],
            )
        )
    type_ = draw(st.sampled_from(STREAM_TYPES))
    flags = draw(ANY_FLAGS if kind == "bad flags" else st.sampled_from(LEGAL_FLAGS.get(type_, [0])))
    # 0..3: one of the streams opened so far, newest first; 4..9: an id never opened.
    which = draw(st.integers(4, 9) if kind == "odd stream" else st.integers(0, 2))
    return ("stream", type_, flags, which, draw(PAYLOADS[type_]))


def raw_frame(type_: int, flags: int, stream_id: int, payload: bytes) -> bytes:
    return HEADER.pack(type_, flags, stream_id, len(payload)) + payload


def assemble(move: tuple[object, ...], opened: list[int]) -> bytes:
    """The bytes of one move; OPENs take the next even id, as a relay would."""
    match move:
        case ("garbage", bytes() as data):
            return data
        case ("goaway", int() as code):
            return raw_frame(FrameType.GOAWAY, 0, 0, U32.pack(code) + b"bye")
        case ("hello",):
            return raw_frame(FrameType.HELLO, 0, 0, b"{}")
        case ("open", RequestHead() as head, bool() as fin):
            opened.append(opened[-1] + 2 if opened else 2)
            return raw_frame(FrameType.OPEN, Flags.FIN if fin else 0, opened[-1], head.encode())
        case ("ping", int() as flags):
            return raw_frame(FrameType.PING, flags, 0, b"pingpong")
        case ("stream", int() as type_, int() as flags, int() as which, bytes() as payload):
            if which < 4:
                stream_id = opened[-1 - which % len(opened)]
            else:
                stream_id = (opened[-1] if opened else 0) + (1 if which % 2 else 2)
            return raw_frame(type_, flags, stream_id, payload)
    raise AssertionError(move)


@examples(200)
@given(
    st.lists(st.lists(peer_moves(), min_size=1, max_size=3), max_size=30),
    st.randoms(use_true_random=False),
)
def test_property_client_mux_survives_any_input(
    moves: list[list[tuple[object, ...]]], rng: random.Random
) -> None:
    """The client never raises for the peer's input, and falls silent once it ended."""
    mux = Mux(Role.CLIENT, window=WINDOW, max_streams=4, max_frame=1024)
    opened: list[int] = []
    heads: dict[int, RequestHead] = {}
    replied: set[int] = set()
    upgraded: set[int] = set()
    unacked: dict[int, int] = {}
    ended = False
    # The session starts with a plain stream and a WebSocket one, so early moves have targets.
    moves = [[("open", POST, False), ("open", WS, False)], *moves]
    for group in moves:
        mux.receive_message(b"".join(assemble(move, opened) for move in group))
        events = mux.events_received()
        output = [f for m in mux.data_to_send() for f in decode_frames(m)]
        if ended:
            assert events == [] and output == [], "activity after SessionEnded"
            continue
        for event in events:
            assert not ended, "an event after SessionEnded"
            if isinstance(event, SessionEnded):
                ended = True
            elif isinstance(event, StreamOpened):
                heads[event.stream_id] = event.head
            elif isinstance(event, DataReceived | MessageReceived):
                unacked[event.stream_id] = unacked.get(event.stream_id, 0) + len(event.data)
            else:
                assert isinstance(
                    event, CloseReceived | ResetReceived | WindowOpened | PingAcknowledged
                )
        if ended:
            assert mux.open_streams == 0
            if not events[-1].by_peer:  # type: ignore[union-attr]
                assert output[-1].type is FrameType.GOAWAY
            assert all(f.type is not FrameType.GOAWAY for f in output[:-1])
            continue
        # Act like an application: answer, send a little, acknowledge what arrived.
        for sid, head in heads.items():
            if not mux.can_send(sid):
                continue
            if sid not in replied:
                upgrade = head.websocket and rng.random() < 0.8
                mux.send_reply(sid, SWITCH if upgrade else ResponseHead(200))
                replied.add(sid)
                if upgrade:
                    upgraded.add(sid)
            elif sid in upgraded:
                mux.send_message_part(sid, b"m", text=True, final=rng.random() < 0.5)
            else:
                mux.send_data(sid, b"x" * rng.randrange(50), end_stream=rng.random() < 0.3)
        for sid, n in unacked.items():
            mux.acknowledge(sid, n)
        unacked.clear()
        mux.data_to_send()
