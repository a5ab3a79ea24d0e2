"""The local connection pool: what a fresh connection hears before an exchange takes it."""

from __future__ import annotations

import asyncio

import pytest

from tunnel_client.pool import EARLY_BYTES, LocalConnection, Pool

pytestmark = pytest.mark.timeout(10)


class Heard:
    def __init__(self) -> None:
        self.events: list[object] = []

    def data_received(self, data: bytes) -> None:
        self.events.append(data)

    def eof_received(self) -> None:
        self.events.append("eof")

    def connection_lost(self, exc: Exception | None) -> None:
        self.events.append("lost")


class Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.aborted = False

    def abort(self) -> None:
        self.aborted = True

    def close(self) -> None:
        self.aborted = True


def fresh() -> tuple[LocalConnection, Transport]:
    conn = LocalConnection(Pool("127.0.0.1", 1))
    transport = Transport()
    conn.connection_made(transport)
    return conn, transport


async def test_a_banner_before_the_first_exchange_reaches_it_after_its_request() -> None:
    conn, transport = fresh()
    conn.data_received(b"SSH-2.0-OpenSSH_9.2\r\n")  # before anyone asked
    conn.eof_received()
    conn.connection_lost(None)
    assert not transport.aborted
    heard = Heard()
    conn.attach(heard)
    assert heard.events == []  # the caller writes its request first
    await asyncio.sleep(0)
    assert heard.events == [b"SSH-2.0-OpenSSH_9.2\r\n", "eof", "lost"]


async def test_unasked_bytes_on_a_used_connection_make_it_unusable() -> None:
    conn, transport = fresh()
    conn.attach(Heard())
    conn.receiver = None  # the exchange ended; the connection idles
    conn.data_received(b"HTTP/1.1 200 OK\r\n")
    assert transport.aborted


async def test_a_fresh_connection_keeps_a_bounded_amount() -> None:
    conn, transport = fresh()
    conn.data_received(b"x" * EARLY_BYTES)
    assert not transport.aborted
    conn.data_received(b"x")
    assert transport.aborted
