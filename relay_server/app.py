"""The relay: one listening socket for visitors, tunnel clients and health checks.

Requests are routed by Host first: ``<sub>.<domain>`` belongs to a link, whatever
its path (a tunnelled app may well have a ``/_tunnel`` of its own), and is served by
the visitor edge (:mod:`.edge`); any other host is the relay itself, which serves
``/_tunnel`` (clients), ``/_peer`` (other nodes of a cluster), ``/_health`` and a
landing page with aiohttp, one request per connection handed to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from tunnel_client.protocol.errors import ConfigError

from . import pages
from .config import RelayConfig
from .directory import Limits, LinkDirectory, LinkState, MemoryDirectory
from .edge import Edge
from .endpoint import accept_tunnel
from .forwarding import peer_address
from .interstitial import Interstitial
from .leases import LeaseSigner, load_or_create_key
from .logs import SERVER_LOGGER
from .observe import Observer
from .revocations import Revocation, RevocationLog
from .routing import Router
from .tokens import TokenStore

if TYPE_CHECKING:
    from .cluster.node import ClusterNode

__all__ = ["ListenError", "Relay", "Revoked"]

logger = logging.getLogger(__name__)

TOKEN_WITHDRAWN = "token withdrawn"  # noqa: S105  (a reason, not a secret)


class ListenError(OSError):
    """A listener could not bind; :attr:`where` names it (``host:port``)."""

    def __init__(self, where: str, cause: OSError) -> None:
        super().__init__(cause.errno, cause.strerror)
        self.where = where


@dataclass(frozen=True)
class Revoked:
    """What :meth:`Relay.revoke` did: the link's state before, and whether it is on disk."""

    was: str
    persisted: bool


class Relay:
    """A running relay: its settings, its links, and its server."""

    def __init__(self, config: RelayConfig, *, ssl_context: ssl.SSLContext | None = None) -> None:
        self.config = config
        limits = Limits(
            ttl_s=config.ttl_s,
            reconnect_grace_s=config.reconnect_grace_s,
            tunnels_per_ip=config.tunnels_per_ip,
            tunnels_per_token=config.tunnels_per_token,
        )
        self.port = config.port

        def url_for(sub: str) -> str:
            return config.link_for(sub, self.port)

        # -- cluster: the directory then knows every node's links (relay_server/cluster/)
        self.cluster: ClusterNode | None = None
        self.directory: LinkDirectory
        if config.cluster is not None:
            from .cluster.node import ClusterNode

            self.cluster = ClusterNode(
                config, limits, url_for, subdomain_of=self.subdomain_of, spawn=self.spawn
            )
            self.directory = self.cluster.directory
        else:
            self.directory = MemoryDirectory(limits, url_for)
        self.seam = Router(self.directory)
        """The routing seam the edge asks: where a link lives, which session to use."""
        try:
            self.signer = LeaseSigner(load_or_create_key(config.lease_key))
        except (OSError, ValueError) as exc:
            raise ConfigError([f"cannot load the lease key {config.lease_key}: {exc}"]) from None
        self.interstitial = (
            Interstitial(
                self.signer.derive_secret("interstitial"),
                config.domain,
                secure=config.scheme == "https",
            )
            if config.interstitial
            else None
        )
        """The warning page browsers see first (``--interstitial``), or None."""
        self.tokens = TokenStore(config.tokens_file)
        self.admin_tokens = TokenStore(config.admin_token_file, "admin token file")
        self.observe = Observer(self.directory, config)
        if self.cluster is not None:
            self.observe.broker_probe = self.cluster.broker.connected.is_set
        self.revocations = RevocationLog.beside(config.lease_key)
        for revoked in self.revocations.load():
            self.directory.note_revoked(revoked.subdomain, revoked.expires_at)
        self.ssl_context = ssl_context
        self.admin_port: int | None = None
        """The admin listener's bound port, once it listens."""
        self.accepting = True
        """False once shutdown began: new tunnels are refused."""
        self.listening = False
        """True while the public listener is up."""
        self.inflight = 0
        """Public requests being served right now."""
        self._idle = asyncio.Event()
        self._idle.set()
        self._server: asyncio.Server | None = None
        self._aiohttp: web.Server | None = None
        self.edge: Edge | None = None
        self._admin_runner: web.AppRunner | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.started_at = time.time()

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Listen; on return, :attr:`port` is the bound port."""
        self._aiohttp = web.Server(
            self.dispatch,
            handler_cancellation=True,
            access_log=None,
            keepalive_timeout=self.config.idle_timeout_s,
            # The edge already checked the head against max_header_bytes.
            max_line_size=self.config.max_header_bytes,
            max_field_size=self.config.max_header_bytes,
            auto_decompress=False,
            logger=SERVER_LOGGER,
        )
        self.edge = Edge(self, self._aiohttp)
        loop = asyncio.get_running_loop()
        try:
            self._server = await loop.create_server(
                self.edge,
                self.config.host,
                self.config.port,
                ssl=self.ssl_context,
                reuse_address=True,
                backlog=1024,
                reuse_port=self.config.reuse_port or None,  # --workers: one port, N processes
                # A TLS handshake is part of what a visitor must finish in time.
                ssl_handshake_timeout=self.config.header_timeout_s if self.ssl_context else None,
            )
        except OSError as exc:
            raise ListenError(f"{self.config.host}:{self.config.port}", exc) from exc
        sockets = self._server.sockets
        if sockets:
            self.port = sockets[0].getsockname()[1]
        self.listening = True
        if self.config.admin_port is not None:
            await self._start_admin(self.config.admin_port)
        logger.info(
            "relay listening on %s://%s:%d for *.%s",
            "https" if self.ssl_context else "http",
            self.config.host,
            self.port,
            self.config.domain,
        )
        if self.cluster is not None:
            await self.cluster.start(self.port, tls=self.ssl_context is not None)

    async def _start_admin(self, port: int) -> None:
        from .admin import make_admin_app

        runner = web.AppRunner(
            make_admin_app(self), access_log=None, handle_signals=False, logger=SERVER_LOGGER
        )
        await runner.setup()
        site = web.TCPSite(runner, self.config.admin_host, port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            if self._server is not None:
                self._server.close()
            self.listening = False
            where = f"{self.config.admin_host}:{port} (the admin listener)"
            raise ListenError(where, exc) from exc
        self._admin_runner = runner
        sockets = getattr(site._server, "sockets", None) or []
        self.admin_port = sockets[0].getsockname()[1] if sockets else port
        logger.info(
            "admin listener (metrics, health, links API) on http://%s:%d",
            self.config.admin_host,
            self.admin_port,
        )

    @property
    def node_id(self) -> str:
        """This relay's name in a cluster (``--node-id``), else ``host:port``."""
        named = getattr(self.config, "node_id", None)
        return str(named) if named else f"{self.config.host}:{self.port}"

    def write_ready_file(self, path: Path) -> None:
        """Say the relay serves: its port, URL and domain as JSON in ``path`` (for
        scripts and supervisors; the CLI writes it once its start-up lines are out)."""
        info: dict[str, Any] = {
            "port": self.port,
            "url": f"{'https' if self.ssl_context else 'http'}://{self.config.host}:{self.port}",
            "domain": self.config.domain,
        }
        if self.admin_port is not None:
            info["admin_port"] = self.admin_port
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(info))
        tmp.replace(path)  # atomic: a reader never sees half a file

    async def shutdown(self, grace_s: float | None = None) -> None:
        """Stop taking tunnels, let in-flight requests finish, then close every tunnel."""
        from tunnel_client.protocol.errors import GoAwayCode

        self.accepting = False
        grace = self.config.shutdown_grace_s if grace_s is None else grace_s
        began = time.monotonic()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._idle.wait(), grace)
        if self.cluster is not None:  # requests other nodes handed to this one
            await self.cluster.drain(max(0.0, grace - (time.monotonic() - began)))
        for link in self.directory.links():
            if link.session is not None:
                link.session.close(
                    GoAwayCode.SHUTDOWN, "the relay is restarting: reconnect with your lease"
                )
        if self.cluster is not None:  # leave the cluster: hops close, the node says goodbye
            await self.cluster.stop()
        if self._tasks:
            # Sessions end once their GOAWAY is out; each releases its link as it ends.
            _, late = await asyncio.wait(set(self._tasks), timeout=5)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late, timeout=5)
        self.directory.close()
        if self._server is not None:
            self._server.close()
        if self.edge is not None:
            self.edge.abort_all()
        if self._aiohttp is not None:
            await self._aiohttp.shutdown(5)
        self.listening = False
        if self._admin_runner is not None:
            # Last, so that /readyz said 503 for the whole drain.
            await self._admin_runner.cleanup()
        logger.info("relay stopped")

    def request_started(self) -> None:
        """A visitor's request to a link is being served (see :attr:`inflight`)."""
        self.inflight += 1
        self._idle.clear()

    def request_finished(self) -> None:
        self.inflight -= 1
        if self.inflight == 0:
            self._idle.set()

    # -- the operator's levers ------------------------------------------------------------

    def revoke(self, subdomain: str, reason: str) -> Revoked | None:
        """Take a link down for good, here and in every later run; None if it expired.

        A held link ends now (its client is told ``reason``; visitors get 410). A link
        no one holds, or one unknown here (its client may come back, to this or a
        restarted relay, with a valid lease) is remembered as revoked until its lease
        would expire, at most a ``ttl`` from now.
        """
        link = self.directory.get(subdomain)
        if link is not None:
            was, expires_at = link.state.value, link.expires_at
            self.directory.revoke(subdomain, f"link revoked: {reason}")
        else:
            ended = self.directory.ended(subdomain)
            if ended is not None and ended[0] is LinkState.EXPIRED:
                return None
            if ended is not None and ended[0] is LinkState.REVOKED:
                return Revoked("revoked", persisted=self.revocations.path is not None)
            was = "unknown" if ended is None else ended[0].value
            expires_at = time.time() + self.config.ttl_s if ended is None else ended[1]
            self.directory.note_revoked(subdomain, expires_at)
        persisted = self.revocations.append(Revocation(subdomain, expires_at, time.time(), reason))
        return Revoked(was, persisted)

    def reload(self) -> None:
        """SIGHUP: read the token files again; end the links of withdrawn tokens."""
        self.admin_tokens.reload()
        if not self.tokens.reload():
            return
        withdrawn = [
            link.subdomain
            for link in self.directory.links()
            if link.token_id is not None and not self.tokens.knows(link.token_id)
        ]
        for subdomain in withdrawn:
            self.revoke(subdomain, TOKEN_WITHDRAWN)
        if withdrawn:
            logger.info("revoked %d link(s) whose token was withdrawn", len(withdrawn))

    def spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run work that must outlive the request handler that started it."""
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("tunnel task failed", exc_info=task.exception())

    # -- routing ------------------------------------------------------------------------

    def subdomain_of(self, host: str) -> str | None:
        """The link label of a Host header value, or None if it names the relay itself."""
        name = host.strip().lower()
        if name.startswith("["):
            return None  # an IPv6 literal is never a link
        name = name.rsplit(":", 1)[0] if ":" in name else name
        name = name.rstrip(".")
        suffix = "." + self.config.domain.lower()
        if not name.endswith(suffix):
            return None
        label = name[: -len(suffix)]
        return label or None

    async def dispatch(self, request: web.BaseRequest) -> web.StreamResponse:
        """Serve one request to the relay's own host (the edge serves links)."""
        response = await self._dispatch(request)
        # One request per connection: a new one starts at the edge, which keeps the
        # head deadline and limits for every request.
        response.force_close()
        return response

    async def _dispatch(self, request: web.BaseRequest) -> web.StreamResponse:
        if self.subdomain_of(request.headers.get("Host", "")) is not None:
            # A link's request pipelined behind one for the relay: not ours to serve
            # here; a browser retries it on a connection of its own.
            return _page(request, pages.misdirected())
        path = request.rel_url.path
        if path == "/_tunnel":
            return await accept_tunnel(self, request)
        if path == "/_peer" and self.cluster is not None:
            return await self.cluster.accept(request)
        if path in ("/_health", "/healthz"):
            return self.health(request)
        if path == "/":
            return web.Response(text=self.landing_page(request.headers.get("Host", "")))
        return _page(request, pages.not_found())

    def landing_page(self, host: str) -> str:
        """The relay's own page: the exact ``--relay`` that works, from where it was reached."""
        # The visitor's Host is where this relay answers them (front, port and all); a
        # client that names the same place reaches it too.
        host = host.strip()
        url = f"{self.config.scheme}://{host}" if host else self.config.relay_url(self.port)
        return (
            f"sharetunnel relay for *.{self.config.domain}\n\n"
            f"Get a link to a local server:  tunnel PORT --relay {url}\n"
        )

    def health(self, request: web.BaseRequest) -> web.Response:
        """Liveness and a few numbers, as JSON."""
        by_state = self.directory.by_state()
        return web.json_response(
            {
                "status": "ok" if self.accepting else "shutting-down",
                "tunnels": sum(by_state.values()),
                "connected": by_state["live"],
                "links": by_state,
                # Only the asker's own count: other addresses are none of its business.
                "links_from_you": self.directory.count_by_ip(
                    peer_address(request, self.config.trusted_proxies)
                ),
                "inflight": self.inflight,
                "uptime_s": round(time.time() - self.started_at, 1),
                **({"cluster": self.cluster.health()} if self.cluster is not None else {}),
            },
            status=200 if self.accepting else 503,
        )


def _page(request: web.BaseRequest, page: pages.ErrorPage) -> web.Response:
    headers, body = pages.render(page, pages.wants_html(request.headers.get("Accept")))
    return web.Response(status=page.status, body=body, headers=headers)
