"""The ``/_tunnel`` WebSocket endpoint: the handshake, then the session, for one client.

aiohttp cancels a handler when its TCP connection drops, at whatever ``await`` it is
in. So the handler only hands the connection to a task the relay owns; that task runs
the handshake and the session, and releases its claim on the link in a ``finally``
that no dropped connection can skip. The link directory hears "live" only once the
WELCOME is on the wire, and hears "released" on every way out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from aiohttp import web

from tunnel_client.protocol.aio import Session
from tunnel_client.protocol.errors import GoAwayCode, HandshakeRefused, RemoteProtocolError
from tunnel_client.protocol.frames import MAX_MESSAGE_BYTES
from tunnel_client.protocol.handshake import Hello, Welcome, read_hello, refusal
from tunnel_client.protocol.mux import Mux, Role, window_growth

from .directory import Claim
from .errors import LeaseExpired, LeaseInvalid
from .forwarding import peer_address
from .leases import Lease, hash_secret
from .transport import AiohttpTransport, DirectAiohttpTransport

if TYPE_CHECKING:
    from .app import Relay

__all__ = ["accept_tunnel"]

logger = logging.getLogger(__name__)

TRANSPORT_MESSAGE_LIMIT = 2 * MAX_MESSAGE_BYTES
"""aiohttp's own message limit on the tunnel: twice the protocol's bound, so that an
oversized message reaches our decoder and gets a GOAWAY naming the rule, instead of
aiohttp closing the connection (1009) first."""


async def accept_tunnel(relay: Relay, request: web.BaseRequest) -> web.StreamResponse:
    """Serve one tunnel client for as long as its WebSocket lives."""
    if not relay.accepting:
        return web.Response(status=503, text="relay is shutting down; try another node\n")
    if not ws_upgrade_asked(request):
        # A browser or curl that found the endpoint: say what it is, not aiohttp's words.
        return web.Response(
            status=400,
            text="This is the relay's tunnel endpoint: the tunnel client connects here "
            "with a WebSocket. To share a local port: tunnel PORT --relay <this relay>\n",
        )
    ws = web.WebSocketResponse(
        max_msg_size=TRANSPORT_MESSAGE_LIMIT,
        compress=False,
        autoping=True,
        heartbeat=None,  # the protocol's own PING detects dead peers
        timeout=2.0,  # a closing handshake on a dead path must not hold the session
    )
    writer = await ws.prepare(request)
    ip = peer_address(request, relay.config.trusted_proxies)
    try:
        transport: AiohttpTransport = DirectAiohttpTransport(ws, writer)
    except ConnectionError:  # gone already
        return ws
    serving = relay.spawn(_serve(relay, transport, ip))
    # If this handler is cancelled (the connection dropped), the task sees the same drop
    # as the end of its transport and finishes its bookkeeping on its own: wait() never
    # cancels what it waits for.
    await asyncio.wait({serving})
    return ws


def ws_upgrade_asked(request: web.BaseRequest) -> bool:
    """The request asks for a WebSocket (aiohttp checks the rest of the handshake)."""
    upgrade = request.headers.get("Upgrade", "").lower()
    connection = request.headers.get("Connection", "").lower()
    return upgrade == "websocket" and "upgrade" in [t.strip() for t in connection.split(",")]


async def _serve(relay: Relay, transport: AiohttpTransport, ip: str) -> None:
    try:
        handshake = await _handshake(relay, transport, ip)
    except HandshakeRefused as refused:
        logger.info("refused tunnel from %s: %s", ip, refused.reason)
        with contextlib.suppress(Exception):
            await transport.send(refusal(refused))
        await transport.close()
        return
    if handshake is None:
        await transport.close()
        return
    hello, claim = handshake
    try:
        await _run_session(relay, transport, hello, claim, ip)
    finally:
        relay.directory.release(claim)


async def _run_session(
    relay: Relay, transport: AiohttpTransport, hello: Hello, claim: Claim, ip: str
) -> None:
    config, link = relay.config, claim.link
    log = logging.LoggerAdapter(logger, {"link": link.subdomain})
    mux = Mux(
        Role.RELAY,
        window=config.stream_window,
        peer_window=hello.window,
        max_streams=min(hello.max_streams, config.max_streams),
        growth=window_growth(config.stream_window),
        logger=log,
    )
    session = Session(
        transport,
        mux,
        keepalive_s=config.keepalive_s,
        keepalive_timeout_s=config.keepalive_s * 3,
        log=log,
        # Release the link the moment the session ends, before the transport's close
        # reaches the client: a client that said GOAWAY and saw the close may rely on
        # the link being gone (share().close() then a request must get 404, not 503).
        on_ended=lambda _ended: relay.directory.release(claim),
    )
    welcome = Welcome(
        url=link.url,
        subdomain=link.subdomain,
        expires_at=link.expires_at,
        lease=relay.signer.issue(
            Lease(link.subdomain, link.expires_at, link.key_hash, link.token_id)
        ),
        window=config.stream_window,
        keepalive_s=config.keepalive_s,
        resumed=claim.resumed,
        interstitial=config.interstitial,
    )
    try:
        await transport.send(welcome.encode())
    except Exception as exc:  # the peer vanished mid-handshake: nothing was attached
        logger.debug("WELCOME to %s not sent: %r", ip, exc)
        await transport.close()
        return
    bypass = hello.bypass_token
    relay.directory.welcome(
        claim,
        session,
        visitor_auth=hello.visitor_auth,
        bypass_hash=None if bypass is None else hash_secret(bypass),
    )
    relay.observe.link_welcomed(resumed=claim.resumed)
    logger.info(
        "link %s %s for %s (%s)",
        link.subdomain,
        "resumed" if claim.resumed else "created",
        ip,
        hello.agent or "unknown client",
    )
    ended = await session.run()
    logger.info("link %s: connection ended (%s)", link.subdomain, ended.reason or ended.code.name)


async def _handshake(
    relay: Relay, transport: AiohttpTransport, ip: str
) -> tuple[Hello, Claim] | None:
    """Read HELLO and claim the link it asks for; None if the client left first."""
    try:
        message = await asyncio.wait_for(transport.recv(), relay.config.handshake_timeout_s)
    except TimeoutError:
        raise HandshakeRefused(
            GoAwayCode.BAD_REQUEST, "no HELLO within the handshake timeout"
        ) from None
    except RemoteProtocolError as exc:
        raise HandshakeRefused(GoAwayCode.PROTOCOL_ERROR, str(exc)) from None
    if message is None:
        return None
    hello = read_hello(message)
    token_id = relay.tokens.check(hello.token)
    if relay.tokens.required and token_id is None:
        raise HandshakeRefused(
            GoAwayCode.AUTH_FAILED,
            "this relay requires a valid token: pass --token or set TUNNEL_TOKEN"
            if hello.token is None
            else "the token was not accepted by this relay",
        )
    if hello.lease is None:
        claim = relay.directory.claim_new(
            client_ip=ip,
            token_id=token_id,
            key_hash=hash_secret(hello.client_secret),
            ttl_s=None if hello.ttl_s is None else float(hello.ttl_s),
        )
        return hello, claim
    try:
        lease = relay.signer.verify(hello.lease, hello.client_secret)
    except LeaseExpired as exc:
        relay.directory.note_expired(exc.subdomain, exc.expires_at)
        raise HandshakeRefused(GoAwayCode.EXPIRED, str(exc)) from None
    except LeaseInvalid as exc:
        raise HandshakeRefused(GoAwayCode.AUTH_FAILED, str(exc)) from None
    return hello, relay.directory.claim_lease(lease, client_ip=ip)
