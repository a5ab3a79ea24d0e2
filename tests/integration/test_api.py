"""The Python API: ``share()`` from sync code, ``async_share()`` from async code.

The relay is a real ``tunnel-relay`` process; the tunnel runs inside the test process
(a background thread for ``share``, a task of the test's loop for ``async_share``).
"""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.processes import Origin, RelayProcess, fetch, run_relay
from tunnel_client import async_share, share
from tunnel_client.protocol.errors import TunnelError

pytestmark = pytest.mark.integration

PAGE = b"hello from the origin\n"


@pytest.fixture(autouse=True)
def no_user_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The API reads TUNNEL_* and a config file: neither may leak in from the machine."""
    for key in list(os.environ):
        if key.startswith("TUNNEL_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))


@pytest.fixture(scope="module")
def relay() -> Iterator[RelayProcess]:
    with run_relay("--ttl", "2h") as server:
        yield server


def host_of(url: str) -> str:
    return urlsplit(url).netloc


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def assert_expires_in_about(expires_at: datetime.datetime, seconds: float) -> None:
    assert expires_at.tzinfo is not None
    left = (expires_at - datetime.datetime.now(datetime.UTC)).total_seconds()
    assert seconds - 120 < left <= seconds + 1, left


def test_share_as_a_context_manager(relay: RelayProcess, origin: Origin) -> None:
    with share(origin.port, relay=relay.url) as link:
        assert link.url.startswith("http://") and link.url.endswith(f".localhost:{relay.port}/")
        assert_expires_in_about(link.expires_at, 2 * 3600)
        reply = fetch(relay.port, host_of(link.url), "/")
        assert reply.status == 200 and reply.body == PAGE
    assert not link.alive
    assert fetch(relay.port, host_of(link.url), "/").status == 404


def test_share_close_frees_the_link(relay: RelayProcess, origin: Origin) -> None:
    link = share(origin.port, relay=relay.url, ttl="10m")
    try:
        assert_expires_in_about(link.expires_at, 600)
        assert fetch(relay.port, host_of(link.url), "/").status == 200
    finally:
        link.close()
    assert fetch(relay.port, host_of(link.url), "/").status == 404
    link.close()  # closing twice is harmless


def test_share_without_a_relay_uses_an_embedded_one(origin: Origin) -> None:
    with share(origin.port) as link:
        netloc = host_of(link.url)
        assert netloc.split(".", 1)[1].startswith("localhost:"), link.url
        reply = fetch(int(netloc.rsplit(":", 1)[1]), netloc, "/")
        assert reply.status == 200 and reply.body == PAGE


def test_share_with_an_unreachable_relay_raises_quickly() -> None:
    port = closed_port()
    started = time.monotonic()
    with pytest.raises(TunnelError) as caught:
        share(8000, relay=f"ws://127.0.0.1:{port}")
    took = time.monotonic() - started
    assert type(caught.value) is not TunnelError, "raise a specific subclass"
    assert "cannot reach the relay" in str(caught.value) and str(port) in str(caught.value)
    assert took < 10, f"took {took:.1f} s to give up"


def test_share_with_a_bad_relay_url_raises_a_config_error() -> None:
    with pytest.raises(TunnelError, match="ftp://x"):
        share(8000, relay="ftp://x")


async def test_async_share_as_a_context_manager(relay: RelayProcess, origin: Origin) -> None:
    async with async_share(origin.port, relay=relay.url) as link:
        assert_expires_in_about(link.expires_at, 2 * 3600)
        # fetch blocks: run it off the loop that serves the tunnel.
        reply = await asyncio.to_thread(fetch, relay.port, host_of(link.url), "/")
        assert reply.status == 200 and reply.body == PAGE
    reply = await asyncio.to_thread(fetch, relay.port, host_of(link.url), "/")
    assert reply.status == 404


async def test_await_async_share_then_aclose(relay: RelayProcess, origin: Origin) -> None:
    link = await async_share(origin.port, relay=relay.url)
    try:
        reply = await asyncio.to_thread(fetch, relay.port, host_of(link.url), "/echo")
        assert reply.status == 200
    finally:
        await link.aclose()
    reply = await asyncio.to_thread(fetch, relay.port, host_of(link.url), "/")
    assert reply.status == 404


async def test_async_share_with_an_unreachable_relay_raises_quickly() -> None:
    port = closed_port()
    started = time.monotonic()
    with pytest.raises(TunnelError, match="cannot reach the relay") as caught:
        _ = await async_share(8000, relay=f"ws://127.0.0.1:{port}")
    assert type(caught.value) is not TunnelError
    assert time.monotonic() - started < 10


@pytest.mark.timeout(60)
async def test_a_cancelled_start_returns_at_once_and_leaves_no_link(origin: Origin) -> None:
    # asyncio.timeout(), wait_for() and task.cancel() around a start: nothing outlives it.
    with run_relay() as own:

        def tunnels() -> int:
            health = json.loads(fetch(own.port, "relay", "/_health").body)
            return int(health["tunnels"])

        cancelled = 0
        for delay in (0.0, 0.0, 0.01, 0.02, 0.04):  # before and around the link's coming up
            starting = async_share(origin.port, relay=own.url)
            task = asyncio.create_task(starting.start())
            await asyncio.sleep(delay)
            task.cancel()
            started = time.monotonic()
            done, _ = await asyncio.wait({task}, timeout=10)
            assert done, f"a start cancelled after {delay} s did not return"
            assert time.monotonic() - started < 5
            if task.cancelled():
                cancelled += 1
            else:  # it had finished already: the caller holds the link and closes it
                await task.result().aclose()
            deadline = time.monotonic() + 10
            while await asyncio.to_thread(tunnels):
                assert time.monotonic() < deadline, f"a link outlived a start cancelled at {delay}"
                await asyncio.sleep(0.05)
        assert cancelled >= 2  # the starts cancelled at once were cancelled, not finished


@pytest.mark.timeout(60)
async def test_a_timeout_around_a_start_on_a_silent_relay_is_kept() -> None:
    # A relay that accepts and never answers: wait_for's 1 s is 1 s, not the handshake's 10.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(async_share(8000, relay=f"ws://127.0.0.1:{port}"), 1)
        took = time.monotonic() - started
    assert took < 5, took


@pytest.mark.timeout(60)
def test_a_share_interrupted_while_it_starts_leaves_no_link(origin: Origin) -> None:
    # Ctrl-C in a notebook cell lands in the waiting thread, not in the one starting
    # the link: the link that comes up anyway is freed, and the thread ends.
    from tunnel_client.api import Share, build_config

    with run_relay() as own:
        sharing = Share(build_config(origin.port, relay=own.url))

        def interrupted(timeout: float | None = None) -> bool:
            raise KeyboardInterrupt  # as the signal would, the moment the wait began

        sharing._started.wait = interrupted  # type: ignore[method-assign]
        with pytest.raises(KeyboardInterrupt):
            sharing.start()
        assert not sharing.alive
        deadline = time.monotonic() + 10
        while json.loads(fetch(own.port, "relay", "/_health").body)["tunnels"]:
            assert time.monotonic() < deadline, "a link outlived the interrupted start"
            time.sleep(0.05)
