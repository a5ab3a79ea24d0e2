"""The tunnel client: get a link, serve it, and keep it through network drops.

:class:`TunnelClient` connects to the relay (or starts an embedded one), serves every
stream through a :class:`~.forwarder.Forwarder`, and when the connection drops it
reconnects with backoff, presenting its lease so the link stays the same, until the
link expires. Everything worth showing a user is reported as an event.

Given several relays, it starts on the first that answers, and each reconnect attempt
goes to the next relay in turn (round robin, with the same backoff): a lease is valid
on every relay that shares the signing key, so the link moves with the client when its
relay dies or restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import secrets
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import quote

from .config import ClientConfig, relay_ws_url
from .connection import (
    AuthRejected,
    LinkExpired,
    RelayRefused,
    RelayTarget,
    RelayUnavailable,
    open_tunnel,
)
from .forwarder import Forwarder, RequestRecord
from .protocol.aio import Session
from .protocol.errors import GoAwayCode, TunnelError
from .protocol.handshake import Hello
from .protocol.mux import Mux, Role, window_growth
from .protocol.units import format_duration

__all__ = [
    "ClientEvent",
    "Closed",
    "Expired",
    "Expiring",
    "Link",
    "LocalStatus",
    "Ready",
    "Reconnected",
    "Reconnecting",
    "TunnelClient",
]

AGENT = "sharetunnel-python/0.1"


@dataclass(frozen=True)
class Link:
    """A public link and what we know about it."""

    url: str
    subdomain: str
    expires_at: float
    """Unix time."""
    local_only: bool
    """True for links of the embedded relay: they work on this machine only."""
    asked_ttl_s: float | None = None
    """The lifetime the client asked for (``--ttl``), if it asked."""
    granted_ttl_s: float | None = None
    """The lifetime the relay gave, as seen when the link was made."""
    warning_page: bool = False
    """The relay shows browsers a warning page on their first visit (``--interstitial``)."""
    bypass_token: str | None = field(default=None, repr=False)
    """The owner's token that skips that page (``--bypass-token``)."""

    @property
    def bypass_url(self) -> str | None:
        """The link with ``?st_bypass=``: browsers that open it skip the warning page."""
        if not self.warning_page or self.bypass_token is None:
            return None
        return f"{self.url}?st_bypass={quote(self.bypass_token, safe='')}"

    @property
    def ttl_shortfall(self) -> str | None:
        """``the relay granted 72h, less than the 100h asked``, or None if it gave all."""
        asked, granted = self.asked_ttl_s, self.granted_ttl_s
        # The relay's clock is not ours: what we see is its grant give or take the skew
        # and the handshake's round trip, so only a clear shortfall counts.
        if asked is None or granted is None or asked - granted <= min(60.0, asked * 0.02):
            return None
        if granted >= 600:  # relay limits are whole minutes: don't show the skew
            granted = round(granted / 60) * 60
        return (
            f"the relay granted {format_duration(granted)}, "
            f"less than the {format_duration(asked)} asked"
        )


@dataclass(frozen=True)
class Ready:
    """The link answers visitors."""

    link: Link
    inspect_url: str | None = None
    """The request inspector's page, when one runs."""


@dataclass(frozen=True)
class LocalStatus:
    """Whether anything listens on the local port (checked at start)."""

    listening: bool
    target: str
    certificate_problem: str | None = None
    """Why an https local server's certificate is refused (without ``--local-insecure``)."""


@dataclass(frozen=True)
class Reconnecting:
    """The connection to the relay dropped; the next attempt starts after ``delay_s``."""

    reason: str
    delay_s: float
    attempt: int


@dataclass(frozen=True)
class Reconnected:
    """Back online with the same link."""

    link: Link
    attempts: int


@dataclass(frozen=True)
class Expiring:
    """The link expires in ``left_s`` (sent an hour and five minutes before)."""

    link: Link
    left_s: float


@dataclass(frozen=True)
class Expired:
    """The link reached its expiry; the client stops."""

    link: Link


@dataclass(frozen=True)
class Closed:
    """The client stopped (asked to, or the relay ended the link)."""

    reason: str


ClientEvent = (
    Ready | LocalStatus | Reconnecting | Reconnected | Expiring | Expired | Closed | RequestRecord
)

EXPIRY_WARNINGS_S = (3600.0, 300.0)
"""Say the link is about to expire this long before it does (those still ahead at start)."""


def local_ssl_context(config: ClientConfig) -> ssl.SSLContext | None:
    """TLS for an https:// local server; ``--local-insecure`` accepts any certificate."""
    if config.local_scheme != "https":
        return None
    context = ssl.create_default_context()
    if config.local_insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def backoff_delay(attempt: int, *, cap_s: float) -> float:
    """0.25 s, 0.4 s, 0.65 s ... growing by the golden ratio up to ``cap_s``, with jitter."""
    base = min(cap_s, 0.25 * 1.618 ** (attempt - 1))
    return base * random.uniform(0.8, 1.2)  # noqa: S311  (jitter, not secrecy)


async def _sleep_until(unix: float) -> None:
    """Sleep until a wall-clock time, looking at the clock at least once a minute: a
    laptop that slept must not wake late (asyncio's clock stands still while it sleeps)."""
    while True:
        wait = unix - time.time()
        if wait <= 0:
            return
        await asyncio.sleep(min(wait, 60.0))


async def local_certificate_problem(host: str, port: int, timeout_s: float = 2.0) -> str | None:
    """Why the TLS certificate of https://host:port is not trusted here, or None."""
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=ssl.create_default_context()), timeout_s
        )
    except ssl.SSLCertVerificationError as exc:
        return str(exc.verify_message or exc.reason or "certificate verify failed")
    except (TimeoutError, OSError):
        return None  # not a certificate matter: requests will say what it is
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return None


async def local_port_open(host: str, port: int, timeout_s: float = 1.0) -> bool:
    """True if something accepts TCP connections on host:port."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout_s)
    except (TimeoutError, OSError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


LINK_LOST_WITH_ITS_LEASE = (
    "the link is gone: no relay accepts its lease any more (a relay restarted with a "
    "different --lease-key, or one that did not make the link); run tunnel again for a "
    "new link"
)
_LEASE_NOT_THEIRS = "the lease was not issued by this relay"


def _lease_not_theirs(exc: Exception) -> bool:
    """The relay refused our lease because another key signed it (its words, see
    relay_server.leases): the link may live on with a relay that holds that key."""
    return isinstance(exc, AuthRejected) and exc.reason == _LEASE_NOT_THEIRS


class TunnelClient:
    """Runs one link until it expires or :meth:`stop` is called."""

    def __init__(
        self, config: ClientConfig, *, on_event: Callable[[ClientEvent], None] | None = None
    ) -> None:
        self.config = config
        self.on_event = on_event or (lambda event: None)
        self.link: Link | None = None
        self._ready: asyncio.Future[Link] = asyncio.get_running_loop().create_future()
        self._stopping = asyncio.Event()
        self._session: Session | None = None
        self._secret = secrets.token_urlsafe(32)
        self._local_status: LocalStatus | None = None
        self._expiry_warnings: asyncio.Task[None] | None = None
        self.inspect_url: str | None = None
        """The request inspector's page, once it runs (``config.inspect``)."""

    async def wait_ready(self) -> Link:
        """The link, once the relay gave it; raises what made the first connect fail."""
        return await asyncio.shield(self._ready)

    def stop(self) -> None:
        """Free the link now (GOAWAY NORMAL) and make :meth:`run` return."""
        self._stopping.set()
        if self._session is not None:
            self._session.close(GoAwayCode.NORMAL, "the owner stopped sharing")

    async def run(self) -> None:
        """Serve the link. Raises what ends it abnormally (refusals, a first connect failure)."""
        try:
            await self._run()
            if not self._ready.done():  # stopped before the link came up
                self._ready.set_exception(TunnelError("stopped before the link came up"))
                self._ready.exception()
        except BaseException as exc:
            if not self._ready.done():
                self._ready.set_exception(exc)
                self._ready.exception()
            raise
        finally:
            if self._expiry_warnings is not None:
                self._expiry_warnings.cancel()
                await asyncio.gather(self._expiry_warnings, return_exceptions=True)

    async def _warn_before_expiry(self, link: Link) -> None:
        """An :class:`Expiring` event at each of :data:`EXPIRY_WARNINGS_S` still ahead."""
        ahead = [s for s in EXPIRY_WARNINGS_S if link.expires_at - time.time() > s]
        for i, left_s in enumerate(ahead):
            await _sleep_until(link.expires_at - left_s)
            if i + 1 < len(ahead) and link.expires_at - time.time() <= ahead[i + 1]:
                continue  # woke past the next warning too: give only that one
            self.on_event(Expiring(link, max(0.0, link.expires_at - time.time())))

    async def _run(self) -> None:
        config = self.config
        async with contextlib.AsyncExitStack() as stack:
            local_only = not config.relay
            if local_only:
                from .embedded import start_local_relay

                relay = await start_local_relay(
                    ttl_s=config.ttl_s, response_timeout_s=config.response_timeout_s
                )
                stack.push_async_callback(relay.shutdown, 0)
                targets = [RelayTarget(f"ws://127.0.0.1:{relay.port}/_tunnel")]
            else:
                targets = [
                    RelayTarget(relay_ws_url(url), config.ca_file, url) for url in config.relay
                ]
            tap = None
            if config.inspect is not None:
                from .inspector import Inspector  # its web server is loaded only when used

                inspector = await stack.enter_async_context(Inspector.for_config(config))
                self.inspect_url, tap = inspector.url, inspector.capture
            forwarder = await stack.enter_async_context(
                Forwarder(
                    config.local_host,
                    config.port,
                    scheme=config.local_scheme,
                    ssl_context=local_ssl_context(config),
                    on_request=self.on_event,
                    host_header=config.host_header,
                    tap=tap,
                )
            )
            listening = await local_port_open(config.local_host, config.port)
            problem = None
            if listening and config.local_scheme == "https" and not config.local_insecure:
                problem = await local_certificate_problem(config.local_host, config.port)
            self._local_status = LocalStatus(listening, config.local_label, problem)
            await self._serve(targets, forwarder, local_only)

    async def _serve(
        self, targets: list[RelayTarget], forwarder: Forwarder, local_only: bool
    ) -> None:
        config = self.config
        lease: str | None = None
        attempt = 0
        turn = 0  # the relay the next attempt goes to: each failure or drop moves it on
        first_failures: list[str] = []
        lease_refused_by: set[int] = set()
        """The relays (by turn) that said our lease is not theirs since the last link."""
        while not self._stopping.is_set():
            target = targets[turn % len(targets)]
            hello = Hello(
                window=config.stream_window,
                max_streams=config.max_streams,
                client_secret=self._secret,
                token=config.token,
                lease=lease,
                visitor_auth=config.visitor_auth,
                bypass_token=config.bypass_token,
                ttl_s=None if config.ttl_s is None else max(1, round(config.ttl_s)),
                agent=AGENT,
            )
            try:
                transport, welcome = await open_tunnel(
                    target, hello, timeout_s=config.connect_timeout_s, agent=AGENT
                )
            except LinkExpired:
                if self.link is None:
                    raise
                self.on_event(Expired(self.link))
                return
            except (RelayUnavailable, RelayRefused) as exc:
                retryable = exc.retryable if isinstance(exc, RelayRefused) else True
                if self.link is not None and _lease_not_theirs(exc):
                    # A relay with another signing key (a failover relay outside the
                    # cluster, or one restarted without its key file): another relay of
                    # the list may still take the lease, this one never will.
                    lease_refused_by.add(turn % len(targets))
                    if len(lease_refused_by) == len(targets):
                        raise RelayRefused(
                            GoAwayCode.AUTH_FAILED, LINK_LOST_WITH_ITS_LEASE
                        ) from None
                    retryable = True
                turn += 1
                if self.link is None and retryable and turn < len(targets):
                    first_failures.append(str(exc))
                    continue  # at start, each relay once, at once: the first that answers
                if self.link is None and retryable and first_failures:
                    first_failures.append(str(exc))
                    raise RelayUnavailable(
                        f"no relay answered: {'; '.join(first_failures)}"
                    ) from None
                if self.link is None or not retryable:
                    raise  # the first connection fails fast, with the reason
                if time.time() >= self.link.expires_at:
                    self.on_event(Expired(self.link))
                    return
                attempt += 1
                delay = backoff_delay(attempt, cap_s=config.reconnect_max_delay_s)
                self.on_event(Reconnecting(str(exc), delay, attempt))
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), delay)
                continue
            lease = welcome.lease
            lease_refused_by.clear()
            link = Link(
                welcome.url,
                welcome.subdomain,
                welcome.expires_at,
                local_only,
                asked_ttl_s=config.ttl_s,
                granted_ttl_s=welcome.expires_at - time.time(),
                warning_page=welcome.interstitial,
                bypass_token=config.bypass_token,
            )
            mux = Mux(
                Role.CLIENT,
                window=config.stream_window,
                peer_window=welcome.window,
                max_streams=config.max_streams,
                growth=window_growth(config.stream_window),
            )
            session = Session(
                transport,
                mux,
                on_stream=forwarder.serve,
                serve_now=forwarder.serve_now,
                keepalive_s=welcome.keepalive_s,
                keepalive_timeout_s=welcome.keepalive_s * 3,
            )
            self._session = session
            if self._stopping.is_set():
                session.close(GoAwayCode.NORMAL, "the owner stopped sharing")
            if self.link is None:
                self.link = link
                self._ready.set_result(link)
                self.on_event(Ready(link, self.inspect_url))  # always the first event a user sees
                if self._local_status is not None:
                    self.on_event(self._local_status)
                self._expiry_warnings = asyncio.create_task(self._warn_before_expiry(link))
            else:
                self.link = link
                self.on_event(Reconnected(link, attempt))
            attempt = 0
            ended = await session.run()
            self._session = None
            if self._stopping.is_set():
                break
            if ended.code is GoAwayCode.EXPIRED:
                self.on_event(Expired(link))
                return
            if ended.by_peer and ended.code in (
                GoAwayCode.AUTH_FAILED,
                GoAwayCode.VERSION_MISMATCH,
                GoAwayCode.BAD_REQUEST,
                GoAwayCode.REPLACED,
                GoAwayCode.NORMAL,
            ):
                raise RelayRefused(ended.code, ended.reason or "the relay closed the link")
            # A drop, a relay restart, a keepalive timeout: come back with the lease, on
            # the next relay if there are several (this one may be the one that died).
            turn += 1
            attempt = 1
            delay = backoff_delay(attempt, cap_s=config.reconnect_max_delay_s)
            self.on_event(Reconnecting(ended.reason or ended.code.name.lower(), delay, attempt))
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)
        self.on_event(Closed("stopped"))
