"""The Python API: ``share(7860)`` from sync code, ``await async_share(7860)`` from async.

Both resolve every setting as the ``tunnel`` command does, from the same table
(:mod:`tunnel_client.settings`): arguments, then ``TUNNEL_*`` variables, then the
config file, then the defaults.

    >>> from tunnel_client import share
    >>> with share(7860) as link:
    ...     print(link.url)
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import threading
from collections.abc import Callable, Generator, Mapping, Sequence
from pathlib import Path
from typing import Any

from .client import ClientEvent, Link, TunnelClient
from .config import ClientConfig
from .protocol.settings import Origin, resolve
from .settings import CLIENT, client_config

__all__ = ["AsyncShare", "Share", "async_share", "build_config", "share"]


def build_config(
    target: int | str,
    *,
    relay: str | Sequence[str] | None = None,
    token: str | None = None,
    local_host: str | None = None,
    local_insecure: bool | None = None,
    host_header: str | None = None,
    ttl: float | str | None = None,
    basic_auth: str | None = None,
    password: str | None = None,
    bypass_token: str | None = None,
    ca_file: str | Path | None = None,
    stream_window: int | str | None = None,
    response_timeout: float | str | None = None,
    inspect: bool | int | str | None = None,
    inspect_body_limit: int | str | None = None,
    use_environment: bool = True,
    environ: Mapping[str, str] | None = None,
) -> ClientConfig:
    """A :class:`ClientConfig`: arguments > ``TUNNEL_*`` variables > config file > default.

    ``target`` is the local server as ``tunnel`` takes it: ``8000``, ``"localhost:8000"``,
    ``"[::1]:8000"``, ``"http://localhost:8000"`` or ``"https://localhost:8443"`` (a
    host there wins over ``local_host``). Arguments are the settings of ``tunnel share``
    (:data:`tunnel_client.settings.CLIENT`) but ``log_level``: durations in seconds or
    as text (``"2h"``), sizes in bytes or as text (``"1MiB"``), ``relay`` one URL or several (a
    list, or text with commas). ``environ`` replaces ``os.environ`` (it names the config
    file too); ``use_environment=False`` reads neither variables nor a file.

    One default differs from the command line's: no request inspector unless
    ``inspect`` (True, a port or ``"host:port"``), ``TUNNEL_INSPECT`` or the file asks
    for one, since a library rarely wants a port opened.

    Raises:
        ConfigError: every bad value, each named by where it came from.
    """
    arguments = {
        "relay": relay,
        "token": token,
        "local_host": local_host,
        "local_insecure": local_insecure,
        "host_header": host_header,
        "ttl": ttl,
        "basic_auth": basic_auth,
        "password": password,
        "bypass_token": bypass_token,
        "ca_file": ca_file,
        "stream_window": stream_window,
        "response_timeout": response_timeout,
        "inspect": inspect,
        "inspect_body_limit": inspect_body_limit,
    }
    resolution = resolve(
        CLIENT, arguments, origin=Origin.ARGUMENT, environ=environ if use_environment else {}
    )
    config, _ = client_config(resolution, target)
    if resolution.values["inspect"].source.origin is Origin.DEFAULT:
        config = dataclasses.replace(config, inspect=None)
    return config


ABANDON_GRACE_S = 1.0
"""How long a cancelled start waits for the link's goodbye before it cuts the connection."""


class AsyncShare:
    """A link served by a task in the running event loop.

    ``await async_share(7860)`` starts it; ``async with async_share(7860) as s`` also
    closes it on exit.
    """

    def __init__(
        self, config: ClientConfig, on_event: Callable[[ClientEvent], None] | None = None
    ) -> None:
        self.config = config
        self._on_event = on_event
        self._client: TunnelClient | None = None
        self._task: asyncio.Task[None] | None = None
        self.link: Link | None = None

    @property
    def url(self) -> str:
        """The public link."""
        if self.link is None:
            raise RuntimeError("the share has not started")
        return self.link.url

    @property
    def expires_at(self) -> datetime.datetime:
        """When the link expires (UTC)."""
        if self.link is None:
            raise RuntimeError("the share has not started")
        return datetime.datetime.fromtimestamp(self.link.expires_at, datetime.UTC)

    @property
    def inspect_url(self) -> str | None:
        """The request inspector's page (``inspect=True``), or None."""
        return None if self._client is None else self._client.inspect_url

    async def start(self) -> AsyncShare:
        """Connect and wait for the link; raises why it could not be made."""
        self._client = TunnelClient(self.config, on_event=self._on_event)
        self._task = asyncio.create_task(self._client.run())
        try:
            self.link = await self._client.wait_ready()
        except BaseException:
            # Failed, or cancelled (a timeout around start()): whatever came up meanwhile
            # must not outlive this call, a link nobody holds least of all.
            await self._abandon()
            raise
        return self

    async def _abandon(self) -> None:
        """Stop a start that will not be waited for: free the link if it came up (a
        goodbye to the relay, briefly waited for), else cut the connection attempt."""
        assert self._client is not None and self._task is not None
        self._client.stop()
        try:
            if not self._task.done():
                await asyncio.wait({self._task}, timeout=ABANDON_GRACE_S)
        finally:  # cancelled again while it waited for the goodbye: cut it all the same
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def __await__(self) -> Generator[Any, None, AsyncShare]:
        return self.start().__await__()

    async def aclose(self) -> None:
        """Free the link and stop serving it."""
        if self._client is not None and self._task is not None:
            self._client.stop()
            await asyncio.gather(self._task, return_exceptions=True)

    async def __aenter__(self) -> AsyncShare:
        return self if self.link is not None else await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def wait_closed(self) -> None:
        """Wait until the link ends (expiry, or a refusal from the relay)."""
        if self._task is not None:
            await self._task


def async_share(
    target: int | str, *, on_event: Callable[[ClientEvent], None] | None = None, **options: Any
) -> AsyncShare:
    """Share a local server from async code (see :func:`build_config` for options)."""
    return AsyncShare(build_config(target, **options), on_event)


class Share:
    """A link served from a background thread; use :func:`share` to make one."""

    def __init__(
        self, config: ClientConfig, on_event: Callable[[ClientEvent], None] | None = None
    ) -> None:
        self._async = AsyncShare(config, on_event)
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._close_asked = False
        """close() came (maybe before the client existed): stop as soon as it is up."""
        self._thread = threading.Thread(target=self._main, name="sharetunnel", daemon=True)

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            _ = self._loop.run_until_complete(self._async.start())
        except BaseException as exc:
            self._error = exc
            self._started.set()
            self._loop.close()
            return
        self._started.set()
        assert self._async._task is not None and self._async._client is not None
        if self._close_asked:
            self._async._client.stop()
        self._loop.run_until_complete(asyncio.gather(self._async._task, return_exceptions=True))
        self._loop.close()

    def start(self) -> Share:
        self._thread.start()
        try:
            self._started.wait()
        except BaseException:  # Ctrl-C (a notebook cell interrupted) while it starts
            self.close()
            raise
        if self._error is not None:
            raise self._error
        return self

    @property
    def link(self) -> Link:
        assert self._async.link is not None
        return self._async.link

    @property
    def url(self) -> str:
        """The public link."""
        return self._async.url

    @property
    def expires_at(self) -> datetime.datetime:
        """When the link expires (UTC)."""
        return self._async.expires_at

    @property
    def inspect_url(self) -> str | None:
        """The request inspector's page (``inspect=True``), or None."""
        return self._async.inspect_url

    @property
    def alive(self) -> bool:
        """True while the link is being served."""
        return self._thread.is_alive()

    def close(self, timeout_s: float = 10.0) -> None:
        """Free the link and stop the background thread."""
        self._close_asked = True
        if self._thread.is_alive() and not self._loop.is_closed():
            client = self._async._client
            if client is not None:
                self._loop.call_soon_threadsafe(client.stop)
            self._thread.join(timeout_s)

    def __enter__(self) -> Share:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Share {self._async.link.url if self._async.link else '(starting)'}>"


def share(
    target: int | str, *, on_event: Callable[[ClientEvent], None] | None = None, **options: Any
) -> Share:
    """Share a local server from sync code; returns once the link answers.

    ``target`` is a port (``7860``) or an address (``"localhost:8000"``,
    ``"https://localhost:8443"``), as ``tunnel`` takes it. Options: ``relay``, ``token``,
    ``local_host``, ``ttl`` (seconds or "2h"), ``basic_auth`` ("user:pass") or
    ``password``, ``ca_file`` and more (see :func:`build_config`). Close it with
    ``.close()`` or a ``with``.
    """
    return Share(build_config(target, **options), on_event).start()
