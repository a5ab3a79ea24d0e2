"""A small TCP proxy that breaks connections on demand, for reconnect tests.

It runs in a background thread with its own event loop and forwards 127.0.0.1:<port>
to a target. Faults: :meth:`cut` drops every connection at once (both sides see a
reset), :meth:`blackhole` keeps connections open but forwards nothing (a half-open
path: only keepalives can notice), :meth:`refuse` rejects new connections, and
:meth:`restore` goes back to normal.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Iterator


class FaultProxy:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.loop = asyncio.new_event_loop()
        self._connections: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._blackhole = False
        self._refuse = False
        self._restored = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self.accepted = 0
        self.refused = 0
        """Connections reset at once while refusing: the attempts made meanwhile."""
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.port = self._call(self._start())

    def _call(self, coro):  # type: ignore[no-untyped-def]
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    async def _start(self) -> int:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        if self._refuse:
            self.refused += 1
            _reset(writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            _reset(writer)
            return
        self.accepted += 1
        pair = (writer, up_writer)
        self._connections.add(pair)
        try:
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        finally:
            self._connections.discard(pair)
            for w in pair:
                w.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                if self._blackhole:
                    continue  # swallow: the peer thinks it was sent
                writer.write(data)
                await writer.drain()
            if self._blackhole:
                # A dead path carries no FIN either: the far side must find out alone.
                await self._restored.wait()
        with contextlib.suppress(OSError):
            writer.close()

    async def _cut(self) -> None:
        for pair in list(self._connections):
            for w in pair:
                _reset(w)
        self._connections.clear()

    def cut(self) -> None:
        """Reset every open connection."""
        self._call(self._cut())

    def blackhole(self) -> None:
        """Keep connections open but forward nothing more."""
        self._blackhole = True

    def refuse(self) -> None:
        """Reject new connections (existing ones are untouched)."""
        self._refuse = True

    def restore(self) -> None:
        self._blackhole = False
        self._refuse = False
        self.loop.call_soon_threadsafe(self._restored.set)

    def close(self) -> None:
        async def stop() -> None:
            await self._cut()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            if self._server is not None:
                self._server.close()
                await self._server.wait_closed()

        self._call(stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST rather than FIN, like a dropped network path."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
            )
    writer.transport.abort()


@contextlib.contextmanager
def fault_proxy(target_port: int) -> Iterator[FaultProxy]:
    proxy = FaultProxy(target_port)
    try:
        yield proxy
    finally:
        proxy.close()
