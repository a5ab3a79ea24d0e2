"""The ``/_tunnel`` WebSocket endpoint: handshake, link assignment, session lifetime."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING

from aiohttp import web

from tunnel_client.protocol.aio import Session
from tunnel_client.protocol.errors import GoAwayCode, RemoteProtocolError
from tunnel_client.protocol.frames import (
    MAX_MESSAGE_BYTES,
    FrameType,
    decode_frames,
    encode_frame,
    goaway_frame,
)
from tunnel_client.protocol.handshake import PROTOCOL_VERSION, Hello, Welcome
from tunnel_client.protocol.mux import Mux, Role

from .errors import LeaseExpired, LeaseInvalid
from .forwarding import peer_address
from .leases import Lease, hash_secret
from .registry import Tunnel
from .transport import AiohttpTransport

if TYPE_CHECKING:
    from .app import Relay

__all__ = ["accept_tunnel"]

logger = logging.getLogger(__name__)


class Refused(Exception):
    """The handshake fails: GOAWAY with this code and reason, then close."""

    def __init__(self, code: GoAwayCode, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


async def accept_tunnel(relay: Relay, request: web.BaseRequest) -> web.StreamResponse:
    """Serve one tunnel client for as long as its WebSocket lives."""
    if not relay.accepting:
        return web.Response(status=503, text="relay is shutting down; try another node\n")
    ws = web.WebSocketResponse(
        max_msg_size=MAX_MESSAGE_BYTES + 1024,
        compress=False,
        autoping=True,
        heartbeat=None,  # the protocol's own PING detects dead peers
        timeout=2.0,  # a closing handshake on a dead path must not hold the session
    )
    await ws.prepare(request)
    transport = AiohttpTransport(ws)
    ip = peer_address(request, relay.config.trusted_proxies)
    try:
        hello = await _receive_hello(relay, transport)
        tunnel, resumed = _claim_link(relay, hello, ip)
    except Refused as refusal:
        logger.info("refused tunnel from %s: %s", ip, refusal.reason)
        with contextlib.suppress(Exception):
            await ws.send_bytes(encode_frame(goaway_frame(refusal.code, refusal.reason)))
        await transport.close()
        return ws
    log = logging.LoggerAdapter(logger, {"link": tunnel.subdomain})
    mux = Mux(
        Role.RELAY,
        window=relay.config.stream_window,
        peer_window=hello.window,
        max_streams=min(hello.max_streams, relay.config.max_streams),
        logger=log,
    )
    session = Session(
        transport,
        mux,
        keepalive_s=relay.config.keepalive_s,
        keepalive_timeout_s=relay.config.keepalive_s * 3,
        log=log,
    )
    old = tunnel.session
    tunnel.session = session
    tunnel.away_since = None
    tunnel.visitor_auth = hello.visitor_auth
    if old is not None:
        old.close(GoAwayCode.REPLACED, "a newer connection took this link over")
    welcome = Welcome(
        url=tunnel.url,
        subdomain=tunnel.subdomain,
        expires_at=tunnel.expires_at,
        lease=relay.signer.issue(Lease(tunnel.subdomain, tunnel.expires_at, tunnel.key_hash)),
        window=relay.config.stream_window,
        keepalive_s=relay.config.keepalive_s,
        resumed=resumed,
    )
    await ws.send_bytes(welcome.encode())
    logger.info(
        "link %s %s for %s (%s)",
        tunnel.subdomain,
        "resumed" if resumed else "created",
        ip,
        hello.agent or "unknown client",
    )
    expiry = asyncio.get_running_loop().call_later(
        max(0.0, tunnel.expires_at - time.time()), _expire, relay, tunnel
    )
    try:
        ended = await session.run()
    finally:
        expiry.cancel()
    if tunnel.session is session:
        tunnel.session = None
        if ended.code in (GoAwayCode.NORMAL,) and ended.by_peer:
            relay.registry.remove(tunnel)  # the owner stopped sharing: free the link now
            logger.info("link %s closed by its owner", tunnel.subdomain)
        elif ended.code is GoAwayCode.EXPIRED:
            relay.registry.expire(tunnel)
        elif ended.code is GoAwayCode.PROTOCOL_ERROR and not ended.by_peer:
            # A client that broke the protocol is not kept waiting for: its link goes
            # now (its lease could still bring it back), so misbehaving connections
            # cannot pile up links.
            relay.registry.remove(tunnel)
        else:
            tunnel.away_since = time.time()
            logger.info("link %s: client away (%s)", tunnel.subdomain, ended.reason)
    return ws


def _expire(relay: Relay, tunnel: Tunnel) -> None:
    logger.info("link %s expired", tunnel.subdomain)
    relay.registry.expire(tunnel)
    if tunnel.session is not None:
        tunnel.session.close(GoAwayCode.EXPIRED, "the link reached its expiry time")


async def _receive_hello(relay: Relay, transport: AiohttpTransport) -> Hello:
    try:
        message = await asyncio.wait_for(transport.recv(), relay.config.handshake_timeout_s)
    except TimeoutError:
        raise Refused(GoAwayCode.BAD_REQUEST, "no HELLO within the handshake timeout") from None
    except RemoteProtocolError as exc:
        raise Refused(GoAwayCode.PROTOCOL_ERROR, str(exc)) from None
    if message is None:
        raise Refused(GoAwayCode.BAD_REQUEST, "connection closed before HELLO")
    try:
        frames = decode_frames(message)
        if len(frames) != 1 or frames[0].type is not FrameType.HELLO:
            raise RemoteProtocolError("the first message must be exactly one HELLO frame")
        hello = Hello.decode(frames[0].payload)
    except RemoteProtocolError as exc:
        raise Refused(GoAwayCode.PROTOCOL_ERROR, str(exc)) from None
    if hello.version != PROTOCOL_VERSION:
        raise Refused(
            GoAwayCode.VERSION_MISMATCH,
            f"this relay speaks protocol version {PROTOCOL_VERSION}, not {hello.version}: "
            "upgrade sharetunnel",
        )
    return hello


def _claim_link(relay: Relay, hello: Hello, ip: str) -> tuple[Tunnel, bool]:
    """Check the client may have a link, and find or create it; True if resumed."""
    config = relay.config
    token_id = relay.tokens.check(hello.token)
    if relay.tokens.required and token_id is None:
        raise Refused(
            GoAwayCode.AUTH_FAILED,
            "this relay requires a valid token: pass --token or set TUNNEL_TOKEN"
            if hello.token is None
            else "the token was not accepted by this relay",
        )
    if hello.lease is not None:
        return _resume(relay, hello, ip), True
    if relay.registry.count_by_ip(ip) >= config.tunnels_per_ip:
        raise Refused(
            GoAwayCode.LIMIT_EXCEEDED, f"this address already holds {config.tunnels_per_ip} links"
        )
    if token_id is not None and relay.registry.count_by_token(token_id) >= (
        config.tunnels_per_token
    ):
        raise Refused(
            GoAwayCode.LIMIT_EXCEEDED, f"this token already holds {config.tunnels_per_token} links"
        )
    ttl = config.ttl_s if hello.ttl_s is None else min(float(hello.ttl_s), config.ttl_s)
    sub = relay.registry.new_subdomain()
    tunnel = Tunnel(
        subdomain=sub,
        url=config.link_for(sub, relay.port),
        expires_at=time.time() + ttl,
        key_hash=hash_secret(hello.client_secret),
        client_ip=ip,
        token_id=token_id,
    )
    relay.registry.add(tunnel)
    return tunnel, False


def _resume(relay: Relay, hello: Hello, ip: str) -> Tunnel:
    assert hello.lease is not None
    try:
        lease = relay.signer.verify(hello.lease, hello.client_secret)
    except LeaseExpired as exc:
        relay.registry.mark_expired(exc.subdomain, exc.expires_at)
        raise Refused(GoAwayCode.EXPIRED, str(exc)) from None
    except LeaseInvalid as exc:
        raise Refused(GoAwayCode.AUTH_FAILED, str(exc)) from None
    if relay.registry.expired_at(lease.subdomain) is not None:
        raise Refused(GoAwayCode.EXPIRED, f"the link {lease.subdomain} has expired")
    tunnel = relay.registry.get(lease.subdomain)
    if tunnel is not None:
        if tunnel.key_hash != lease.key_hash:
            raise Refused(GoAwayCode.AUTH_FAILED, "the link belongs to another client")
        return tunnel
    # Not known here: the relay restarted, or the client moved to another node.
    tunnel = Tunnel(
        subdomain=lease.subdomain,
        url=relay.config.link_for(lease.subdomain, relay.port),
        expires_at=lease.expires_at,
        key_hash=lease.key_hash,
        client_ip=ip,
    )
    relay.registry.add(tunnel)
    return tunnel
