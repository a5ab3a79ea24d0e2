"""Keep-alive connections to the local server, on asyncio protocols (no streams).

A :class:`LocalConnection` hands every event of its socket to its current
:class:`Receiver` (the exchange using it) by plain calls: no task, no queue. A
:class:`Pool` keeps idle connections for the next request; a connection goes back only
after a complete, well-framed exchange (the forwarder decides), and one that was
cancelled or broke is aborted, so the local server sees the visitor's disconnect.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from typing import Protocol, cast

__all__ = ["CONNECT_TIMEOUT_S", "LocalConnection", "Pool", "Receiver"]

CONNECT_TIMEOUT_S = 10.0
IDLE_S = 15.0
"""An idle connection older than this is closed rather than reused (servers drop idle
keep-alive connections after 5 s (uvicorn) to 75 s (aiohttp); one that went away is
noticed when its close arrives, so this only bounds what we hold)."""
MAX_IDLE = 256


class Receiver(Protocol):
    """Whoever uses a connection: it gets the socket's events as they happen."""

    def data_received(self, data: bytes) -> None: ...

    def eof_received(self) -> None: ...

    def connection_lost(self, exc: Exception | None) -> None: ...


EARLY_BYTES = 64 * 1024
"""The most a fresh connection keeps of what the server said before being asked."""


class LocalConnection(asyncio.Protocol):
    """One TCP (or TLS) connection to the local server."""

    def __init__(self, pool: Pool) -> None:
        self._pool = pool
        self.transport: asyncio.Transport | None = None
        self.receiver: Receiver | None = None
        self.closed = False
        self.pooled = False
        self.idle_since = 0.0
        self._write_paused = False
        self._drained: asyncio.Future[None] | None = None
        self._early: list[bytes] = []
        """Bytes of a fresh connection that came before its first exchange took it."""
        self._early_eof = False
        self._early_lost: tuple[Exception | None] | None = None
        self._used = False

    # -- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def attach(self, receiver: Receiver) -> None:
        """Hand the connection to an exchange (write the request right after).

        A server that speaks first (an SSH banner on the port, say) may have sent bytes,
        or closed, before the first exchange took this fresh connection: they are passed
        on once the caller has written its request, so its error says what came back.
        """
        self.receiver = receiver
        if not self._used:
            self._used = True
            if self._early or self._early_eof or self._early_lost is not None:
                asyncio.get_running_loop().call_soon(self._replay_early, receiver)

    def _replay_early(self, receiver: Receiver) -> None:
        early, self._early = self._early, []
        for data in early:
            if self.receiver is receiver:
                receiver.data_received(data)
        if self._early_eof and self.receiver is receiver:
            receiver.eof_received()
        if self._early_lost is not None and self.receiver is receiver:
            self.receiver = None
            receiver.connection_lost(self._early_lost[0])

    def data_received(self, data: bytes) -> None:
        if self.receiver is not None:
            self.receiver.data_received(data)
        elif not self._used and sum(map(len, self._early)) < EARLY_BYTES:
            self._early.append(data)
        else:
            self.abort()  # bytes nobody asked for: this connection is not usable

    def eof_received(self) -> bool:
        if self.receiver is not None:
            self.receiver.eof_received()
        elif not self._used:
            self._early_eof = True
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._pool.forget(self)
        self._wake_writer()
        receiver, self.receiver = self.receiver, None
        if receiver is not None:
            receiver.connection_lost(exc)
        elif not self._used:
            self._early_lost = (exc,)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake_writer()

    # -- for the exchange -----------------------------------------------------------------

    def _wake_writer(self) -> None:
        waiter, self._drained = self._drained, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def drain(self) -> None:
        """Wait while the local server reads slower than we write."""
        if self._write_paused and not self.closed:
            self._drained = asyncio.get_running_loop().create_future()
            await self._drained

    def pause_reading(self) -> None:
        if not self.closed and self.transport is not None:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if not self.closed and self.transport is not None:
            self.transport.resume_reading()

    def abort(self) -> None:
        """Drop the connection now (unsent bytes too): the server sees it go at once."""
        if not self.closed and self.transport is not None:
            self.closed = True
            self.transport.abort()

    def close(self) -> None:
        """Close once what was written is out."""
        if not self.closed and self.transport is not None:
            self.closed = True
            self.transport.close()


class Pool:
    """Idle keep-alive connections to one local server, newest reused first."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        ssl_context: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self._ssl = ssl_context
        self._server_hostname = server_hostname if ssl_context is not None else None
        self._idle: deque[LocalConnection] = deque()
        self._loop = asyncio.get_running_loop()

    def take(self) -> LocalConnection | None:
        """An idle connection, or None."""
        idle = self._idle
        now = self._loop.time()
        while idle and now - idle[0].idle_since > IDLE_S:
            stale = idle.popleft()
            stale.pooled = False
            stale.close()
        while idle:
            conn = idle.pop()
            conn.pooled = False
            if not conn.closed:
                return conn
        return None

    async def connect(self) -> LocalConnection:
        """A new connection.

        Raises:
            OSError: nothing accepts connections there (``ConnectionRefusedError``), or
                the TLS handshake failed (``ssl.SSLError``).
            TimeoutError: no answer within :data:`CONNECT_TIMEOUT_S`.
        """
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            _, protocol = await self._loop.create_connection(
                lambda: LocalConnection(self),
                self.host,
                self.port,
                ssl=self._ssl,
                server_hostname=self._server_hostname,
            )
        return protocol

    def release(self, conn: LocalConnection) -> None:
        """Keep a connection whose exchange completed cleanly, for the next request."""
        conn.receiver = None
        if conn.closed:
            return
        if len(self._idle) >= MAX_IDLE:
            conn.close()
            return
        conn.resume_reading()  # an exchange that held bytes back may have paused it
        conn.idle_since = self._loop.time()
        conn.pooled = True
        self._idle.append(conn)

    def forget(self, conn: LocalConnection) -> None:
        """A connection closed: it is no longer idle (if it was)."""
        if conn.pooled:
            conn.pooled = False
            self._idle.remove(conn)

    def close(self) -> None:
        """Close every idle connection."""
        while self._idle:
            conn = self._idle.pop()
            conn.pooled = False
            conn.close()
