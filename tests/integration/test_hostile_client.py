"""Hostile tunnel clients cannot crash the relay or touch another tunnel.

A real ``tunnel-relay`` process serves a bystander ``tunnel`` process whose link is
fetched all the time, while raw clients (tests/rawclient.py) send the relay's
``/_tunnel`` endpoint hypothesis-generated frame sequences (tests/hostile.py): broken
handshakes, malformed, oversized, truncated and out-of-order frames, ids never opened
(or opened only in other sessions), DATA beyond credit, WINDOW overflow, floods of
tiny frames, text messages, garbage. Each hostile session must end with its own GOAWAY
(or a plain close where the WebSocket layer itself refuses a message), or, when what
it sent was legal, keep being served. The relay must never crash or log an unhandled
error, and every bystander request must succeed with the right body.

Targeted tests follow: a client that never answers its visitors, never grants credit or
stops reading stalls nobody else; a client flooding PINGs without reading is cut off; a
client whose response heads lie about the body length cannot desync its visitors.

Run: ``pytest tests/integration/test_hostile_client.py -s`` (``-s`` prints the figures:
sequences run, time, bystander requests, relay memory).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import threading
import time
from collections import Counter
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.hostile import (
    Oracle,
    Script,
    handshake_outcome_ok,
    same_kind,
    scripts,
    session_outcome_ok,
)
from tests.origin import pattern_bytes
from tests.processes import (
    Origin,
    RelayProcess,
    TunnelProcess,
    fetch,
    rss_bytes,
    run_relay,
    run_tunnel,
)
from tests.rawclient import Alive, Closed, GoAway, Outcome, RawClient, hello_message, raw_frame
from tunnel_client.protocol.errors import GoAwayCode
from tunnel_client.protocol.frames import Flags, FrameType, encode_frame, goaway_frame

pytestmark = pytest.mark.integration

T = TypeVar("T")

MIB = 1 << 20
BATCH = 16
"""Hostile connections run side by side in one hypothesis example."""
EXAMPLES = int(os.environ.get("HOSTILE_EXAMPLES", "640"))
"""Hypothesis examples: at least BATCH * EXAMPLES = 10,240 sequences."""
MIN_SEQUENCES = 10_000


class Bystander(threading.Thread):
    """Fetches an honest link over and over, checking every body."""

    def __init__(self, relay_port: int, host: str) -> None:
        super().__init__(daemon=True)
        self.relay_port = relay_port
        self.host = host
        self.ok = 0
        self.failures: list[str] = []
        self.slowest_s = 0.0
        self._stop_event = threading.Event()

    def run(self) -> None:
        i = 0
        while not self._stop_event.wait(0.02):
            i += 1
            started = time.monotonic()
            try:
                self.one(i)
            except Exception as exc:
                self.failures.append(f"request {i}: {exc!r}")
            else:
                self.ok += 1
            self.slowest_s = max(self.slowest_s, time.monotonic() - started)

    def one(self, i: int) -> None:
        if i % 2:
            n = (i * 7919) % (256 * 1024) + 1
            reply = fetch(self.relay_port, self.host, f"/bytes/{n}", timeout=30)
            assert reply.status == 200, reply.status
            assert reply.body == pattern_bytes(n), f"wrong body for /bytes/{n}"
        else:
            body = os.urandom(i % 50_000 + 1)
            reply = fetch(
                self.relay_port, self.host, f"/echo?i={i}", method="POST", body=body, timeout=30
            )
            assert reply.status == 200, reply.status
            echo = json.loads(reply.body)
            assert echo["target"] == f"/echo?i={i}"
            assert echo["length"] == len(body)
            assert echo["sha256"] == hashlib.sha256(body).hexdigest()
            assert dict(echo["headers"])["X-Forwarded-Host"] == self.host

    def stop(self) -> None:
        self._stop_event.set()
        self.join(60)

    def check(self, at_least: int) -> None:
        assert not self.failures, f"{len(self.failures)} bystander failures: {self.failures[:5]}"
        assert self.ok >= at_least, f"only {self.ok} bystander requests succeeded"


@dataclass
class Stage:
    relay: RelayProcess
    tunnel: TunnelProcess
    stats: Counter[str] = field(default_factory=Counter)


@contextlib.contextmanager
def bystander_running(relay: RelayProcess, tunnel: TunnelProcess) -> Iterator[Bystander]:
    bystander = Bystander(relay.port, tunnel.host)
    bystander.start()
    try:
        yield bystander
    finally:
        bystander.stop()


def assert_relay_healthy(relay: RelayProcess, tunnel: TunnelProcess) -> dict[str, Any]:
    """The relay runs, answers /_health, and the bystander never had to reconnect."""
    assert relay.proc.poll() is None, "the relay process died"
    health = fetch(relay.port, f"127.0.0.1:{relay.port}", "/_health")
    assert health.status == 200, health
    numbers: dict[str, Any] = json.loads(health.body)
    assert numbers["status"] == "ok"
    troubles = [e for e in tunnel.events if e.get("event") in ("reconnecting", "error", "closed")]
    assert not troubles, f"the bystander tunnel was disturbed: {troubles}"
    return numbers


def assert_clean_log(relay: RelayProcess) -> str:
    """Stop the relay and check it logged no unhandled error."""
    log = relay.stderr_text()
    for marker in ("Traceback", "Error handling request", "Unhandled", "exception"):
        assert marker not in log, f"relay logged {marker!r}:\n{log[-4000:]}"
    return log


# -- running scripts --------------------------------------------------------------------


async def _open_visitor(port: int, host: str, n: int) -> asyncio.StreamWriter:
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET /v{n} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    await writer.drain()
    return writer


async def _close_writer(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(Exception):
        await writer.wait_closed()


async def run_script(port: int, script: Script, stats: Counter[str]) -> None:
    """Play one hostile connection and check every reaction of the relay."""
    if script.prehello is not None:
        client = await RawClient.connect(port)
        try:
            await client.send(script.prehello)
            outcome = await client.outcome()
        finally:
            await client.close()
        assert handshake_outcome_ok(script.prehello, outcome), f"{script}: got {outcome}"
        stats["sequences"] += 1
        stats[f"handshake {type(outcome).__name__}"] += 1
        return
    client = await RawClient.connect(port, hello=hello_message(window=script.window))
    visitors: list[asyncio.StreamWriter] = []
    try:
        host = f"{client.subdomain}.localhost:{port}"
        visitors = [await _open_visitor(port, host, n) for n in range(script.visitors)]
        opened = [(await client.wait_for(FrameType.OPEN)).stream_id for _ in visitors]
        assert sorted(opened) == [2 * (i + 1) for i in range(script.visitors)], opened
        strict = Oracle(permissive=False, window=script.window, visitors=script.visitors)
        permissive = Oracle(permissive=True, window=script.window, visitors=script.visitors)
        for number, sequence in enumerate(script.sequences):
            for message in sequence:
                strict.feed(message)
                permissive.feed(message)
                await client.send(message)
            strict.probe()
            permissive.probe()
            outcome = await client.outcome()
            expected = (strict.state, permissive.state)
            assert session_outcome_ok(*expected, outcome), (
                f"{script}: sequence {number}: got {outcome}, expected between {expected}"
            )
            stats["sequences"] += 1
            stats["exact" if same_kind(*expected) else "bracketed"] += 1
            stats[f"session {type(outcome).__name__}"] += 1
            if not isinstance(outcome, Alive):
                break
            strict.probe_answered()
            permissive.probe_answered()
        else:
            # Survived every sequence: stop sharing as a real client does.
            await client.send(encode_frame(goaway_frame(GoAwayCode.NORMAL, "done")))
    finally:
        for writer in visitors:
            await _close_writer(writer)
        await client.close()


async def run_batch(port: int, batch: list[Script], stats: Counter[str]) -> None:
    results = await asyncio.gather(
        *(run_script(port, script, stats) for script in batch), return_exceptions=True
    )
    for result in results:
        if isinstance(result, BaseException):
            raise result


@pytest.mark.timeout(600)
def test_generated_hostile_sequences_end_only_their_own_session(origin: Origin) -> None:
    """At least 10,000 generated sequences against one relay, a bystander served throughout.

    The relay's stream window is the smallest allowed (16 KiB), so that DATA beyond
    credit is within reach of a few frames. The per-address limit is the default (20)
    although every hostile connection comes from 127.0.0.1, 16 at a time: a session the
    relay ends for a protocol error frees its link at once, and one that survives its
    script ends as a real client stops (GOAWAY NORMAL); the few that just vanish are
    away until the (short, here) reconnect grace ends and yield their slot to new links
    meanwhile. At the end, the relay's link count and this address's count are back
    where they started.
    """
    relay_args = ("--stream-window", "16KiB", "--reconnect-grace", "2s", "--log-level", "warning")
    stats: Counter[str] = Counter()
    with (
        run_relay(*relay_args) as relay,
        run_tunnel(origin.port, relay=relay) as tunnel,
        bystander_running(relay, tunnel) as bystander,
    ):
        before = assert_relay_healthy(relay, tunnel)
        started = time.monotonic()

        @settings(
            max_examples=EXAMPLES,
            derandomize=True,
            database=None,
            deadline=None,
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(batch=st.lists(scripts(), min_size=BATCH, max_size=BATCH))
        def hostile(batch: list[Script]) -> None:
            began = time.monotonic()
            asyncio.run(run_batch(relay.port, batch, stats))
            stats["io_ms"] += int((time.monotonic() - began) * 1000)
            assert relay.proc.poll() is None, "the relay process died"

        hostile()
        elapsed = time.monotonic() - started
        rss = rss_bytes(relay.proc.pid)
        counts = ("tunnels", "links_from_you")
        deadline = time.monotonic() + 20
        while True:
            health = assert_relay_healthy(relay, tunnel)
            if [health[k] for k in counts] == [before[k] for k in counts]:
                break
            assert time.monotonic() < deadline, f"counts did not come back: {before} {health}"
            time.sleep(0.1)
        bystander.stop()
        bystander.check(at_least=50)
        log = assert_clean_log(relay)
    print(
        f"\n{stats['sequences']} hostile sequences in {elapsed:.0f} s; {dict(stats)}; "
        f"bystander: {bystander.ok} requests ok, slowest {bystander.slowest_s:.2f} s; "
        f"relay RSS {rss / MIB:.0f} MiB, links held {health['tunnels']} "
        f"({health['connected']} connected); relay log {len(log.splitlines())} lines"
    )
    assert stats["sequences"] >= MIN_SEQUENCES


# -- targeted tests ---------------------------------------------------------------------


async def _flood_without_reading(port: int, count: int, deadline_s: float) -> tuple[int, Outcome]:
    """Send ``count`` PINGs (100 per message) without reading a byte, then read what came
    back: return how many PINGs were answered and how the session ended."""
    client = await RawClient.connect(port, hello=hello_message(), max_queue=1)
    burst = raw_frame(FrameType.PING, 0, 0, b"flooding") * 100
    answered = 0
    try:
        async with asyncio.timeout(deadline_s):
            for _ in range(0, count, 100):
                if not await client.send(burst):
                    break
                await asyncio.sleep(0)  # a steady stream, not one giant burst
            # Only now read: the answers the relay managed to send, then its verdict.
            while (frames := await client.next_frames(deadline_s)) is not None:
                for frame in frames:
                    if frame.type is FrameType.PING:
                        answered += 1
                    elif frame.type is FrameType.GOAWAY:
                        code = GoAwayCode(int.from_bytes(frame.payload[:4], "big"))
                        return answered, GoAway(code, frame.payload[4:].decode())
                client.received.clear()
        return answered, Closed(client.ws.close_code)
    finally:
        await client.close()


async def _ping_and_read(port: int, total: int, deadline_s: float) -> bool:
    """Send as many PINGs, 1000 at a time, each time reading the 1000 answers first;
    return whether the session is still served at the end."""
    client = await RawClient.connect(port, hello=hello_message())
    burst = raw_frame(FrameType.PING, 0, 0, b"flooding") * 1000
    try:
        async with asyncio.timeout(deadline_s):
            for _ in range(0, total, 1000):
                if not await client.send(burst):
                    return False
                answered = 0
                while answered < 1000:
                    frames = await client.next_frames(deadline_s)
                    if frames is None:
                        return False
                    answered += sum(f.type is FrameType.PING for f in frames)
                client.received.clear()
        return isinstance(await client.outcome(), Alive)
    finally:
        await client.close()


@pytest.mark.timeout(300)
def test_a_client_flooding_pings_without_reading_is_cut_off(origin: Origin) -> None:
    """Every PING needs an answer; one who never reads them is dropped, one who reads is not."""
    count = 1_500_000  # 27 MB of answers: more than any socket buffers hold
    with (
        run_relay("--log-level", "info") as relay,
        run_tunnel(origin.port, relay=relay) as tunnel,
        bystander_running(relay, tunnel) as bystander,
    ):
        started = time.monotonic()
        answered, ended = asyncio.run(_flood_without_reading(relay.port, count, deadline_s=120))
        took = time.monotonic() - started
        assert answered < count, "a client that never reads had every PING answered"
        if isinstance(ended, GoAway):
            assert ended.code is GoAwayCode.PROTOCOL_ERROR and "floods" in ended.reason, ended
        # As many PINGs from a client that reads the answers are fine.
        alive = asyncio.run(_ping_and_read(relay.port, count, deadline_s=120))
        assert alive, "a client that reads its answers was cut off"
        assert_relay_healthy(relay, tunnel)
        bystander.stop()
        for i in range(10):
            bystander.one(i)
        bystander.check(at_least=1)
        log = assert_clean_log(relay)
    print(
        f"\nnon-reading client: {answered} of {count} PINGs answered, then {ended} ({took:.1f} s)"
    )
    assert log.count("! closing session: peer floods frames that need answers") == 1


class LoopThread:
    """An asyncio loop in a thread, so blocking bystander requests can run meanwhile."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> LoopThread:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)


@dataclass
class Uploader:
    """A visitor POSTing a large body to a link, as fast as the relay takes it."""

    writer: asyncio.StreamWriter
    task: asyncio.Task[None] | None = None
    sent: int = 0


async def _upload(port: int, host: str, size: int) -> Uploader:
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        f"POST /upload HTTP/1.1\r\nHost: {host}\r\nContent-Length: {size}\r\n\r\n".encode()
    )
    uploader = Uploader(writer)

    async def push() -> None:
        chunk = b"u" * 65536
        while uploader.sent < size:
            writer.write(chunk)
            await writer.drain()
            uploader.sent += len(chunk)

    uploader.task = asyncio.create_task(push())
    return uploader


@dataclass
class Hostiles:
    """Three misbehaving tunnel clients and the visitors stuck on their links."""

    silent: RawClient
    """Reads everything, answers nothing, grants no credit."""
    deaf: RawClient
    """Offers a huge window, then never reads its socket again."""
    staller: RawClient
    """Starts each response, sends part of the body, then stops."""
    visitors: list[asyncio.StreamWriter] = field(default_factory=list)
    uploads: list[Uploader] = field(default_factory=list)
    drain: asyncio.Task[None] | None = None

    async def close(self) -> None:
        for uploader in self.uploads:
            assert uploader.task is not None
            uploader.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await uploader.task
            uploader.writer.transport.abort()  # what is still buffered will never go
        for writer in self.visitors:
            await _close_writer(writer)
        if self.drain is not None:
            self.drain.cancel()
        for client in (self.silent, self.deaf, self.staller):
            await client.close()


async def _start_hostiles(port: int) -> Hostiles:
    from tunnel_client.protocol.window import MAX_WINDOW, MIN_WINDOW

    hostiles = Hostiles(
        silent=await RawClient.connect(port, hello=hello_message(window=MIN_WINDOW)),
        deaf=await RawClient.connect(port, hello=hello_message(window=MAX_WINDOW), max_queue=1),
        staller=await RawClient.connect(port, hello=hello_message()),
    )

    def link(client: RawClient) -> str:
        return f"{client.subdomain}.localhost:{port}"

    hostiles.visitors += [await _open_visitor(port, link(hostiles.silent), n) for n in range(16)]
    hostiles.uploads += [await _upload(port, link(hostiles.silent), 64 * MIB) for _ in range(4)]
    hostiles.uploads += [await _upload(port, link(hostiles.deaf), 256 * MIB) for _ in range(4)]
    hostiles.visitors += [await _open_visitor(port, link(hostiles.staller), n) for n in range(4)]
    for _ in range(4):
        opened = await hostiles.staller.wait_for(FrameType.OPEN)
        reply = raw_frame(FrameType.REPLY, 0, opened.stream_id, b'{"status": 200}')
        await hostiles.staller.send(
            reply + raw_frame(FrameType.DATA, 0, opened.stream_id, b"s" * 16384)
        )
    for _ in range(20):
        await hostiles.silent.wait_for(FrameType.OPEN)

    async def drain_silent() -> None:
        while await hostiles.silent.next_frames(3600) is not None:
            pass  # every frame lands in silent.received

    hostiles.drain = asyncio.create_task(drain_silent())
    return hostiles


@pytest.mark.timeout(300)
def test_clients_that_never_answer_credit_or_read_stall_no_other_tunnel(origin: Origin) -> None:
    """Three hostile clients hold 28 visitors hostage; the bystander's link does not notice."""
    with (
        run_relay("--keepalive", "60s", "--log-level", "warning") as relay,
        run_tunnel(origin.port, relay=relay) as tunnel,
        LoopThread() as loop,
    ):
        bystander = Bystander(relay.port, tunnel.host)
        for i in range(4):
            bystander.one(i)  # warm up
        baseline = rss_bytes(relay.proc.pid)
        hostiles = loop.run(_start_hostiles(relay.port))
        try:
            peak = baseline
            slowest = 0.0
            for i in range(12):
                started = time.monotonic()
                n = 4 * MIB + i
                reply = fetch(relay.port, tunnel.host, f"/bytes/{n}", timeout=60)
                assert reply.status == 200 and reply.body == pattern_bytes(n)
                body = os.urandom(2 * MIB)
                reply = fetch(relay.port, tunnel.host, "/upload", method="POST", body=body)
                assert reply.status == 200, reply
                assert json.loads(reply.body)["sha256"] == hashlib.sha256(body).hexdigest()
                slowest = max(slowest, time.monotonic() - started)
                peak = max(peak, rss_bytes(relay.proc.pid))
            # The hostile side really was stuck, and the relay kept to the announced window.
            stuck = [u.sent for u in hostiles.uploads]
            assert all(sent < 64 * MIB for sent in stuck), stuck
            deadline = time.monotonic() + 30
            while True:  # the relay fills each upload's 16 KiB of credit, and stops there
                to_silent: Counter[int] = Counter()
                for frame in list(hostiles.silent.received):
                    if frame.type is FrameType.DATA:
                        to_silent[frame.stream_id] += len(frame.payload)
                if sorted(to_silent.values()) == [16384] * 4 or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            assert sorted(to_silent.values()) == [16384] * 4, to_silent
        finally:
            loop.run(hostiles.close())
        assert_relay_healthy(relay, tunnel)
        log = assert_clean_log(relay)
    grew = (peak - baseline) / MIB
    print(
        f"\nbystander: slowest round {slowest:.2f} s; relay RSS {baseline / MIB:.0f} MiB "
        f"-> peak {peak / MIB:.0f} MiB; uploads stuck at {[s // 1024 for s in stuck]} KiB"
    )
    assert slowest < 30, f"the bystander waited {slowest:.1f} s for one round"
    assert grew < 100, f"relay RSS grew {grew:.0f} MiB"
    assert "Traceback" not in log


LYING_HEADS = [
    # (name, response headers, body chunks, FIN on the REPLY, what the visitor must get)
    ("length without a body", [["Content-Length", "5"]], [], True, 502),
    ("length not a number", [["Content-Length", "abc"]], [b"abc"], False, 502),
    ("negative length", [["Content-Length", "-1"]], [b"abc"], False, 502),
    ("two lengths", [["Content-Length", "3"], ["Content-Length", "4"]], [b"abc"], False, 502),
    ("same length twice", [["Content-Length", "3"], ["Content-Length", "3"]], [b"abc"], False, 502),
    ("length list", [["Content-Length", "3, 3"]], [b"abc"], False, 502),
    ("short body", [["Content-Length", "5"]], [b"ab"], False, "closed"),
    ("long body", [["Content-Length", "2"]], [b"abcdef"], False, "closed"),
    ("huge length", [["Content-Length", "9" * 20]], [b"abc"], False, "closed"),
    ("chunked claimed", [["Transfer-Encoding", "chunked"]], [b"abc"], False, 200),
    ("connection close", [["Connection", "close"], ["Keep-Alive", "x"]], [b"abc"], False, 200),
    ("padded length", [["Content-Length", " 3 "]], [b"abc"], False, 200),
]


async def _answer(
    client: RawClient, headers: list[list[str]], chunks: list[bytes], fin: bool
) -> None:
    opened = await client.wait_for(FrameType.OPEN)
    head = json.dumps({"status": 200, "headers": headers}).encode()
    message = raw_frame(FrameType.REPLY, Flags.FIN if fin else 0, opened.stream_id, head)
    for i, chunk in enumerate(chunks):
        last = i == len(chunks) - 1
        message += raw_frame(FrameType.DATA, Flags.FIN if last else 0, opened.stream_id, chunk)
    await client.send(message)


@pytest.mark.timeout(180)
def test_lying_response_heads_never_desync_a_visitors_connection() -> None:
    """A client's response head whose length cannot frame its body never reaches a
    visitor as is: 502 before anything is sent, or a cut connection after; the next
    request on a surviving connection gets its own response."""
    from tests.rawhttp import ConnectionClosed, RawConnection

    with run_relay("--log-level", "warning") as relay, LoopThread() as loop:
        outcomes = {}
        for name, headers, chunks, fin, _ in LYING_HEADS:
            client = loop.run(RawClient.connect(relay.port, hello=hello_message()))
            host = f"{client.subdomain}.localhost:{relay.port}"
            try:
                with RawConnection(relay.port, timeout=20) as visitor:
                    visitor.send(f"GET /lie HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
                    loop.run(_answer(client, headers, chunks, fin))
                    try:
                        first = visitor.read_response()
                    except ConnectionClosed:
                        first = None
                    if first is None or not first.keeps_alive:
                        assert visitor.closed_by_peer(), f"{name}: the connection stayed open"
                        outcome: int | str = "closed"
                    else:
                        outcome = first.status
                        visitor.send(f"GET /next HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
                        answer = asyncio.run_coroutine_threadsafe(
                            _answer(client, [["X-Next", "1"]], [b"next"], False), loop.loop
                        )
                        follow = visitor.read_response()
                        if follow is None:
                            # The relay cut the connection after a complete-looking answer.
                            answer.cancel()
                            outcome = "closed"
                        else:
                            answer.result(20)
                            assert (follow.status, follow.body) == (200, b"next"), (name, follow)
                            assert follow.header("X-Next") == "1"
                    if outcome == 200:
                        assert first.body == chunks[0], (name, first)
                    outcomes[name] = outcome
            finally:
                loop.run(client.close())
        log = assert_clean_log(relay)
    assert outcomes == {name: expected for name, _, _, _, expected in LYING_HEADS}
    assert "Traceback" not in log
