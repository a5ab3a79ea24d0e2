"""A link's life, whatever happens to its client: no leaked links, no ghosts, no drift.

Each way a client can vanish (killed, its connection reset, gone right after HELLO,
frozen past the keepalive) must end the same way: 503 at once, 404 after the reconnect
grace, 410 once past the expiry, and the link stops counting against its address.
Repeated many times, the relay's links, per-address count, open files and memory come
back to where they started, and the relay logs nothing at ERROR.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import select
import signal
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.origin import pattern_bytes
from tests.processes import (
    Origin,
    RelayProcess,
    Reply,
    fetch,
    rss_bytes,
    run_relay,
    run_tunnel,
    start_tunnel,
    wait_until,
)
from tests.rawclient import RawClient, hello_message
from tunnel_client.protocol.errors import GoAwayCode
from tunnel_client.protocol.frames import FrameType, parse_goaway
from tunnel_client.protocol.handshake import Hello

pytestmark = pytest.mark.integration

MIB = 1 << 20
GRACE = "2s"
TTL_S = 12
CYCLES = 100
BATCH = 10  # concurrent failures per round: half the default per-address limit


def health(relay: RelayProcess) -> dict[str, Any]:
    reply = fetch(relay.port, f"127.0.0.1:{relay.port}", "/_health")
    assert reply.status == 200, reply
    return json.loads(reply.body)  # type: ignore[no-any-return]


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def status_of(relay: RelayProcess, host: str) -> int:
    return fetch(relay.port, host, "/", timeout=10).status


def follow_link_to_410(relay: RelayProcess, host: str, created: float) -> dict[str, float]:
    """Check 503 now, then 404 after the grace, then 410 past the expiry; the times."""
    seen: list[int] = []

    def becomes(code: int) -> Callable[[], bool]:
        def check() -> bool:
            status = status_of(relay, host)
            if not seen or seen[-1] != status:
                seen.append(status)
            return status == code

        return check

    times = {"503": wait_until(becomes(503), 10, "503 once the client is gone")}
    times["404"] = wait_until(becomes(404), 10, "404 after the reconnect grace")
    times["410"] = wait_until(becomes(410), TTL_S + 10, "410 past the expiry")
    assert time.time() >= created + TTL_S - 1, "410 before the link's expiry"
    # Each state in order, never back: a link that lives on after its client would
    # show up here as a 503 after the 404. Before the relay notices the loss, a request
    # it forwarded is answered 502 (or 504, frozen) as "may or may not have run".
    first_503 = seen.index(503)
    assert set(seen[:first_503]) <= {200, 502, 504}, seen
    assert seen[first_503:] == [503, 404, 410], seen
    return times


def assert_clean(relay: RelayProcess) -> None:
    errors = [line for line in relay.lines if " ERROR " in line or "Traceback" in line]
    assert not errors, "\n".join(errors[-20:])


def created_links(relay: RelayProcess) -> list[str]:
    return re.findall(r"link (\w+) created for", "\n".join(relay.lines))


# -- the ways a client vanishes ---------------------------------------------------------


def _reset(client: RawClient) -> None:
    """Drop the connection with a TCP RST, as a crashed machine's network would."""
    sock = client.ws.transport.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.ws.transport.abort()


async def _reset_after_welcome(port: int) -> str:
    client = await RawClient.connect(port, hello=hello_message())
    _reset(client)
    return client.subdomain


async def _vanish_after_hello(port: int) -> None:
    """Say HELLO and drop the connection before the WELCOME can be read.

    The drop waits until the WELCOME has arrived (unread, in the socket's buffer): sooner,
    it races the relay, which may see the reset before it sends the WELCOME and abandon
    the link (as it should) instead of making it and seeing its client go.
    """
    client = await RawClient.connect(port)
    client.ws.transport.pause_reading()
    await client.send(hello_message())
    sock = client.ws.transport.get_extra_info("socket")
    await asyncio.to_thread(select.select, [sock], [], [], 10)
    _reset(client)


async def _follow_silent_after_hello(relay: RelayProcess, created: float) -> dict[str, float]:
    client = await RawClient.connect(relay.port, max_queue=1)
    try:
        await client.send(hello_message())
        await asyncio.to_thread(
            wait_until, lambda: bool(created_links(relay)), 10, "the relay to log the link"
        )
        host = f"{created_links(relay)[-1]}.localhost:{relay.port}"
        assert health(relay)["links_from_you"] == 1
        times = await asyncio.to_thread(follow_link_to_410, relay, host, created)
        numbers = health(relay)
        assert numbers["tunnels"] == 0 and numbers["links_from_you"] == 0, numbers
        return times
    finally:
        _reset(client)


@contextlib.asynccontextmanager
async def _frozen(port: int, count: int) -> Any:
    """Clients that finish the handshake and then never read or send again."""
    clients = await asyncio.gather(
        *(RawClient.connect(port, hello=hello_message(), max_queue=1) for _ in range(count))
    )
    try:
        yield clients
    finally:
        for client in clients:
            _reset(client)


def kill_round(port: int, origin: Origin, relay: RelayProcess, n: int) -> None:
    tunnels = [start_tunnel(origin.port, relay=relay, wait=False) for _ in range(n)]
    try:
        for tunnel in tunnels:
            tunnel.wait_event("ready")
    finally:
        for tunnel in tunnels:
            tunnel.stop(signal.SIGKILL)


def reset_round(port: int, n: int) -> None:
    async def main() -> None:
        await asyncio.gather(*(_reset_after_welcome(port) for _ in range(n)))

    asyncio.run(main())


def vanish_round(port: int, n: int) -> None:
    async def main() -> None:
        await asyncio.gather(*(_vanish_after_hello(port) for _ in range(n)))

    asyncio.run(main())


def frozen_round(relay: RelayProcess, n: int) -> None:
    async def main() -> None:
        async with _frozen(relay.port, n):
            # The relay gives up on them after 3 keepalives (3 s here): wait for that.
            await asyncio.to_thread(
                wait_until,
                lambda: health(relay)["links"]["live"] <= 1,
                20,
                "the relay to notice frozen clients",
            )

    asyncio.run(main())


ROUNDS: dict[str, Callable[[RelayProcess, Origin, int], None]] = {
    "sigkill": lambda relay, origin, n: kill_round(relay.port, origin, relay, n),
    "tcp-reset": lambda relay, origin, n: reset_round(relay.port, n),
    "hello-then-vanish": lambda relay, origin, n: vanish_round(relay.port, n),
    "frozen": lambda relay, origin, n: frozen_round(relay, n),
}


@contextlib.contextmanager
def lifecycle_relay(*extra: str) -> Iterator[RelayProcess]:
    with run_relay(
        "--keepalive", "1s", "--reconnect-grace", GRACE, "--ttl", f"{TTL_S}s", *extra
    ) as relay:
        yield relay


# -- one failure, followed to the end ----------------------------------------------------


@pytest.mark.timeout(90)
@pytest.mark.parametrize("mode", ["sigkill", "tcp-reset", "hello-then-vanish", "sigstop"])
def test_a_vanished_client_link_is_503_then_404_then_410(origin: Origin, mode: str) -> None:
    with lifecycle_relay() as relay:
        created = time.time()
        if mode in ("sigkill", "sigstop"):
            tunnel = start_tunnel(origin.port, relay=relay)
            host = tunnel.host
            assert status_of(relay, host) == 200
            tunnel.proc.send_signal(signal.SIGKILL if mode == "sigkill" else signal.SIGSTOP)
        elif mode == "tcp-reset":
            sub = asyncio.run(_reset_after_welcome(relay.port))
            host = f"{sub}.localhost:{relay.port}"
        else:
            # Gone silent right after HELLO (the network vanished): the relay's WELCOME
            # goes nowhere. (A reset instead, in the 100-cycle test, can also make the
            # WELCOME fail to send: then no link is ever made.)
            times = asyncio.run(_follow_silent_after_hello(relay, created))
            assert_clean(relay)
            print(f"\n{mode}: " + ", ".join(f"{k} after {v:.1f} s" for k, v in times.items()))
            return
        try:
            assert health(relay)["links_from_you"] == 1
            times = follow_link_to_410(relay, host, created)
            numbers = health(relay)
            assert numbers["tunnels"] == 0 and numbers["links_from_you"] == 0, numbers
        finally:
            if mode in ("sigkill", "sigstop"):
                tunnel.stop(signal.SIGKILL)
        assert_clean(relay)
    print(f"\n{mode}: " + ", ".join(f"{k} after {v:.1f} s" for k, v in times.items()))


# -- many failures: nothing drifts --------------------------------------------------------


@pytest.mark.timeout(420)
@pytest.mark.parametrize("mode", list(ROUNDS))
def test_100_vanished_clients_leave_the_relay_as_it_was(origin: Origin, mode: str) -> None:
    """The default per-address limit (20) holds throughout: nothing piles up."""
    play = ROUNDS[mode]
    with lifecycle_relay("--ttl", "72h") as relay:
        pid = relay.proc.pid

        def settled() -> bool:
            numbers = health(relay)
            return numbers["tunnels"] == 0 and numbers["links_from_you"] == 0

        play(relay, origin, BATCH)  # warm up: first connections allocate for good
        wait_until(settled, 30, "the warm-up links to go")
        start = (open_fds(pid), rss_bytes(pid))
        started = time.monotonic()
        for _ in range(CYCLES // BATCH):
            play(relay, origin, BATCH)
            wait_until(settled, 30, "every link of the round to go after the grace")
        elapsed = time.monotonic() - started
        # Closing handshakes to dead peers time out on their own (2 s): wait, bounded.
        with contextlib.suppress(AssertionError):
            wait_until(lambda: open_fds(pid) <= start[0], 10, "sockets to close")
        end = (open_fds(pid), rss_bytes(pid))
        assert_clean(relay)
    print(
        f"\n{mode}: {CYCLES} cycles in {elapsed:.0f} s; links 0 -> 0, per-address 0 -> 0; "
        f"fds {start[0]} -> {end[0]}; RSS {start[1] / MIB:.1f} -> {end[1] / MIB:.1f} MiB"
    )
    assert end[0] <= start[0], f"open files grew: {start[0]} -> {end[0]}"
    assert end[1] - start[1] < 8 * MIB, f"RSS grew {start[1] / MIB:.1f} -> {end[1] / MIB:.1f}"


# -- a frozen client: forwarded requests are never "offline, retry", nor run later --------


@pytest.mark.timeout(90)
def test_a_request_forwarded_to_a_frozen_client_is_not_503_and_never_runs(
    origin: Origin,
) -> None:
    with (
        run_relay("--keepalive", "1s", "--reconnect-grace", "60s") as relay,
        run_tunnel(origin.port, relay=relay) as tunnel,
    ):
        tunnel.proc.send_signal(signal.SIGSTOP)
        try:
            # Forwarded while the relay still believes in the client: it must not say
            # "offline, try again", since the request may (for all it knows) have run.
            reply = fetch(
                relay.port, tunnel.host, "/count?key=frozen", method="POST", body=b"x" * 10
            )
            assert reply.status in (502, 504), reply
            assert b"may or may not" in reply.body
            # Not forwarded (the relay knows the client is away): 503 is the truth.
            assert fetch(relay.port, tunnel.host, "/count?key=later").status == 503
        finally:
            tunnel.proc.send_signal(signal.SIGCONT)
        tunnel.wait_event("reconnected", timeout=30)
        assert fetch(relay.port, tunnel.host, "/count?key=after").status == 200
        counts = origin.stats()
        assert counts.get("count:after") == 1
        assert "count:frozen" not in counts, f"the frozen client ran it later: {counts}"
        assert "count:later" not in counts


# -- limits that follow the links ---------------------------------------------------------


@pytest.mark.timeout(90)
def test_the_per_token_limit_holds_across_a_relay_restart(origin: Origin, tmp_path: Any) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("team-token\n")
    port = _free_port()
    args = (
        "--tokens-file",
        str(tokens),
        "--tunnels-per-token",
        "2",
        "--lease-key",
        str(tmp_path / "lease.pem"),
    )
    env = {"TUNNEL_TOKEN": "team-token"}
    with run_relay(*args, port=port) as first:
        holders = [start_tunnel(origin.port, relay=first, env=env) for _ in range(2)]
        third = start_tunnel(origin.port, relay=first, env=env, wait=False)
        assert third.proc.wait(20) == 1
        third.stop()
        assert any("this token already holds 2 links" in ln for ln in third.stderr_lines)
    try:
        with run_relay(*args, port=port) as second:
            for holder in holders:
                holder.wait_event("reconnected", timeout=30)
            assert health(second)["tunnels"] == 2
            again = start_tunnel(origin.port, relay=second, env=env, wait=False)
            assert again.proc.wait(20) == 1, "a third link for the token after the restart"
            again.stop()
            assert any("this token already holds 2 links" in ln for ln in again.stderr_lines)
    finally:
        for holder in holders:
            holder.stop()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.timeout(60)
def test_a_newer_connection_with_the_lease_takes_the_link_over() -> None:
    """REPLACED: the old connection hears why; visitors reach the new one."""

    async def main(port: int) -> None:
        secret = "s" * 32
        first = await RawClient.connect(
            port, hello=Hello(window=65536, max_streams=8, client_secret=secret).encode()
        )
        assert first.welcome is not None
        newer = await RawClient.connect(
            port,
            hello=Hello(
                window=65536, max_streams=8, client_secret=secret, lease=first.welcome.lease
            ).encode(),
        )
        try:
            assert newer.welcome is not None and newer.welcome.resumed
            assert newer.subdomain == first.subdomain
            goaway = await first.wait_for(FrameType.GOAWAY)
            assert parse_goaway(goaway.payload)[0] is GoAwayCode.REPLACED
            host = f"{newer.subdomain}.localhost:{port}"
            visit = asyncio.create_task(asyncio.to_thread(fetch, port, host, "/x", timeout=10))
            opened = await newer.wait_for(FrameType.OPEN)
            assert opened.stream_id == 2
            visit.cancel()
            with contextlib.suppress(BaseException):
                await visit
        finally:
            await newer.close()
            await first.close()

    with run_relay() as relay:
        asyncio.run(main(relay.port))
        assert_clean(relay)


@pytest.mark.timeout(60)
def test_trusted_proxy_decides_whose_forwarded_for_is_believed(origin: Origin) -> None:
    spoof = {"X-Forwarded-For": "203.0.113.7"}
    for args, believed in ((("--trusted-proxy", "127.0.0.0/8"), True), ((), False)):
        with run_relay(*args) as relay, run_tunnel(origin.port, relay=relay) as tunnel:
            reply = fetch(relay.port, tunnel.host, "/echo", headers=spoof)
            seen = dict((k.lower(), v) for k, v in json.loads(reply.body)["headers"])
            forwarded = [a.strip() for a in seen["x-forwarded-for"].split(",")]
            # Believed: the front's client is the visitor. Not: the connecting address.
            assert forwarded[-1] == ("203.0.113.7" if believed else "127.0.0.1"), seen


@pytest.mark.timeout(60)
def test_a_streaming_download_survives_while_other_links_churn(origin: Origin) -> None:
    """Links coming and going around it leave a live link's long stream alone."""
    with lifecycle_relay() as relay, run_tunnel(origin.port, relay=relay) as tunnel:
        result: dict[str, Reply] = {}
        size = 64 * MIB
        reader = threading.Thread(
            target=lambda: result.setdefault(
                "r", fetch(relay.port, tunnel.host, f"/bytes/{size}", timeout=60)
            )
        )
        reader.start()
        reset_round(relay.port, BATCH // 2)  # with the download's link, under the limit
        vanish_round(relay.port, BATCH // 2)
        reader.join(60)
        assert result["r"].status == 200
        assert result["r"].body == pattern_bytes(size)
