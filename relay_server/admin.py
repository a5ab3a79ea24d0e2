"""The admin listener: metrics, health checks and the links API, apart from visitors.

It listens on its own address (``--admin-host``, loopback by default, and
``--admin-port``), so that no visitor can reach it through the public port:

* ``GET /metrics``: Prometheus text (the relay's own registry);
* ``GET /healthz``: 200 while the process runs; ``GET /readyz``: 200 while the relay
  listens and accepts tunnels, 503 once it began shutting down (load balancers drain it);
* ``GET /api/links``, ``GET /api/links/<sub>``: the links this relay holds, as JSON;
* ``DELETE /api/links/<sub>``: revoke a link (``?reason=...`` or ``{"reason": ...}``).

With ``--admin-token-file`` the ``/api/`` routes need ``Authorization: Bearer <token>``
(any line of the file); the probes and ``/metrics`` stay open to whoever reaches the
listener, as scrapers and load balancers expect.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from .directory import SUBDOMAIN_ALPHABET, SUBDOMAIN_LENGTH, Link

if TYPE_CHECKING:
    from .app import Relay

__all__ = ["make_admin_app"]

logger = logging.getLogger(__name__)

DEFAULT_REASON = "revoked by the relay operator"
MAX_REASON = 200
"""Characters of an operator's reason passed on to the client (GOAWAY reasons: 1 KiB)."""

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _iso(unix: float) -> str:
    when = datetime.datetime.fromtimestamp(unix, datetime.UTC).replace(microsecond=0)
    return when.isoformat().replace("+00:00", "Z")


def _is_subdomain(text: str) -> bool:
    return len(text) == SUBDOMAIN_LENGTH and all(c in SUBDOMAIN_ALPHABET for c in text)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _foreign(request: web.Request, relay: Relay) -> str | None:
    """Why a request to the token-less API does not come from this machine's own
    clients (curl, scripts, Prometheus), or None if it does."""
    port = relay.admin_port
    names = {relay.config.admin_host.lower(), "127.0.0.1", "localhost", "[::1]"}
    if ":" in relay.config.admin_host:  # an IPv6 address is bracketed in a Host
        names.add(f"[{relay.config.admin_host.lower()}]")
    host = request.headers.get("Host", "").strip().lower()
    if host not in names and host not in {f"{name}:{port}" for name in names}:
        return (
            f"the links API answers to Host 127.0.0.1:{port} or localhost:{port} only, "
            f"not {host!r} (or give --admin-token-file and a bearer token)"
        )
    if "Origin" in request.headers:
        return "the links API takes no requests from web pages (they send an Origin)"
    return None


def link_json(relay: Relay, link: Link) -> dict[str, Any]:
    """What the API says about one link."""
    session = link.session
    return {
        "subdomain": link.subdomain,
        "url": link.url,
        "node": relay.node_id,
        "state": link.state.value,
        "created": _iso(link.created_at),
        "expires": _iso(link.expires_at),
        "client": link.client_ip,
        "token_id": link.token_id,
        "requests": link.requests,
        "open_streams": session.open_streams if session is not None else 0,
    }


def make_admin_app(relay: Relay) -> web.Application:
    """The admin application of ``relay``."""

    @web.middleware
    async def bearer_auth(request: web.Request, handler: _Handler) -> web.StreamResponse:
        if not request.path.startswith("/api/"):
            return await handler(request)
        if not relay.admin_tokens.required:
            # Open on loopback only, to this machine's own clients: a web page rebound
            # to 127.0.0.1 (DNS rebinding) sends its own Host, and an Origin.
            problem = _foreign(request, relay)
            if problem is not None:
                return _error(403, problem)
            return await handler(request)
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or relay.admin_tokens.check(token.strip()) is None:
            response = _error(401, "this API needs Authorization: Bearer <admin token>")
            response.headers["WWW-Authenticate"] = 'Bearer realm="sharetunnel admin"'
            return response
        return await handler(request)

    async def metrics(request: web.Request) -> web.Response:
        response = web.Response(body=relay.observe.metrics())
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "alive"})

    async def readyz(request: web.Request) -> web.Response:
        ready = relay.accepting and relay.listening
        return web.json_response(
            {
                "status": "ready" if ready else "not ready",
                "accepting": relay.accepting,
                "listening": relay.listening,
            },
            status=200 if ready else 503,
        )

    async def list_links(request: web.Request) -> web.Response:
        links = sorted(relay.directory.links(), key=lambda link: link.created_at)
        return web.json_response(
            {"node": relay.node_id, "links": [link_json(relay, link) for link in links]}
        )

    async def get_link(request: web.Request) -> web.Response:
        sub = request.match_info["sub"].lower()
        link = relay.directory.get(sub)
        if link is None:
            ended = relay.directory.ended(sub)
            if ended is None:
                return _error(404, f"no link {sub} on this relay")
            state, expires_at = ended
            ended_json = {
                "subdomain": sub,
                "node": relay.node_id,
                "state": state.value,
                "expires": _iso(expires_at),
            }
            return web.json_response(ended_json)
        return web.json_response(link_json(relay, link))

    async def delete_link(request: web.Request) -> web.Response:
        sub = request.match_info["sub"].lower()
        if not _is_subdomain(sub):
            return _error(400, f"{sub[:40]!r} is not a link's subdomain")
        reason = request.query.get("reason", "")
        if not reason and request.can_read_body:
            try:
                body = await request.json()
            except (ValueError, UnicodeDecodeError):
                return _error(400, 'the body must be JSON: {"reason": "..."}')
            if isinstance(body, dict) and isinstance(body.get("reason"), str):
                reason = body["reason"]
        reason = " ".join(reason.split())[:MAX_REASON] or DEFAULT_REASON
        outcome = relay.revoke(sub, reason)
        if outcome is None:
            return _error(409, f"the link {sub} already expired: nothing to revoke")
        logger.info(
            "link %s revoked through the admin API from %s (%s; it was %s)",
            sub,
            request.remote,
            reason,
            outcome.was,
        )
        return web.json_response(
            {
                "subdomain": sub,
                "node": relay.node_id,
                "state": "revoked",
                "was": outcome.was,
                "reason": reason,
                "persisted": outcome.persisted,
            }
        )

    app = web.Application(middlewares=[bearer_auth])
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/api/links", list_links)
    app.router.add_get("/api/links/{sub}", get_link)
    app.router.add_delete("/api/links/{sub}", delete_link)
    return app
