"""The relay: one listening socket for visitors, tunnel clients and health checks.

Requests are routed by Host first: ``<sub>.<domain>`` belongs to a link, whatever
its path (a tunnelled app may well have a ``/_tunnel`` of its own), and is served by
the visitor edge (:mod:`.edge`); any other host is the relay itself, which serves
``/_tunnel`` (clients), ``/_health`` and a landing page with aiohttp, one request per
connection handed to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from aiohttp import web

from . import pages
from .config import RelayConfig
from .directory import Limits, MemoryDirectory
from .edge import Edge
from .endpoint import accept_tunnel
from .forwarding import peer_address
from .leases import LeaseSigner, load_or_create_key
from .tokens import TokenStore

__all__ = ["Relay"]

logger = logging.getLogger(__name__)


class Relay:
    """A running relay: its settings, its links, and its server."""

    def __init__(self, config: RelayConfig, *, ssl_context: ssl.SSLContext | None = None) -> None:
        self.config = config
        self.directory = MemoryDirectory(
            Limits(
                ttl_s=config.ttl_s,
                reconnect_grace_s=config.reconnect_grace_s,
                tunnels_per_ip=config.tunnels_per_ip,
                tunnels_per_token=config.tunnels_per_token,
            ),
            url_for=lambda sub: config.link_for(sub, self.port),
        )
        self.signer = LeaseSigner(load_or_create_key(config.lease_key))
        self.tokens = TokenStore(config.tokens_file)
        self.ssl_context = ssl_context
        self.port = config.port
        self.accepting = True
        """False once shutdown began: new tunnels are refused."""
        self.inflight = 0
        """Public requests being served right now."""
        self._idle = asyncio.Event()
        self._idle.set()
        self._server: asyncio.Server | None = None
        self._aiohttp: web.Server | None = None
        self.edge: Edge | None = None
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
        )
        self.edge = Edge(self, self._aiohttp)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self.edge,
            self.config.host,
            self.config.port,
            ssl=self.ssl_context,
            reuse_address=True,
            backlog=1024,
            # A TLS handshake is part of what a visitor must finish in time.
            ssl_handshake_timeout=self.config.header_timeout_s if self.ssl_context else None,
        )
        sockets = self._server.sockets
        if sockets:
            self.port = sockets[0].getsockname()[1]
        logger.info(
            "relay listening on %s://%s:%d for *.%s",
            "https" if self.ssl_context else "http",
            self.config.host,
            self.port,
            self.config.domain,
        )
        if self.config.ready_file is not None:
            self._write_ready_file(self.config.ready_file)

    def _write_ready_file(self, path: Path) -> None:
        info = {
            "port": self.port,
            "url": f"{'https' if self.ssl_context else 'http'}://{self.config.host}:{self.port}",
            "domain": self.config.domain,
        }
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(info))
        tmp.replace(path)  # atomic: a reader never sees half a file

    async def shutdown(self, grace_s: float | None = None) -> None:
        """Stop taking tunnels, let in-flight requests finish, then close every tunnel."""
        from tunnel_client.protocol.errors import GoAwayCode

        self.accepting = False
        grace = self.config.shutdown_grace_s if grace_s is None else grace_s
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._idle.wait(), grace)
        for link in self.directory.links():
            if link.session is not None:
                link.session.close(
                    GoAwayCode.SHUTDOWN, "the relay is restarting: reconnect with your lease"
                )
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
        logger.info("relay stopped")

    def request_started(self) -> None:
        """A visitor's request to a link is being served (see :attr:`inflight`)."""
        self.inflight += 1
        self._idle.clear()

    def request_finished(self) -> None:
        self.inflight -= 1
        if self.inflight == 0:
            self._idle.set()

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
        if path in ("/_health", "/healthz"):
            return self.health(request)
        if path == "/":
            return web.Response(
                text=f"sharetunnel relay for *.{self.config.domain}: run `tunnel PORT --relay "
                f"{self.config.scheme}://{self.config.domain}` to get a link.\n"
            )
        return _page(request, pages.not_found())

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
            },
            status=200 if self.accepting else 503,
        )


def _page(request: web.BaseRequest, page: pages.ErrorPage) -> web.Response:
    headers, body = pages.render(page, pages.wants_html(request.headers.get("Accept")))
    return web.Response(status=page.status, body=body, headers=headers)
