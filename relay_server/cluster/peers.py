"""The node-to-node hop: one WebSocket session per pair of nodes, in our own protocol.

A visitor's request that reaches node A for a link that node B holds travels on a
session between the two, exactly as on a link's own session: A opens a stream with the
request head and the edge pumps it as usual. The hop needs no protocol change, only
roles: the node that *dials* (A, through :class:`PeerPool`) plays the relay and opens
streams; the node that *accepts* (B, at ``/_peer``, :class:`PeerEndpoint`) plays the
client and serves them, each by splicing it onto the link's own session
(:func:`tunnel_client.protocol.aio.splice`): request body, response, WebSocket
messages and resets pass stream to stream under both windows.

Both ends prove they know the cluster secret before any stream opens (three JSON
messages, each side's nonce in the other's HMAC, so nothing can be replayed):

  A -> B  {"peer": 1, "node": A, "to": B, "nonce": nA, "window": wA}
  B -> A  {"node": B, "nonce": nB, "window": wB, "mac": HMAC(listener, nA, nB, A, B)}
  A -> B  {"mac": HMAC(dialer, nA, nB, A, B)}
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hmac
import json
import logging
import random
import secrets
import ssl
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

from tunnel_client.protocol.aio import Session, Stream, splice
from tunnel_client.protocol.errors import (
    GoAwayCode,
    HeadTooLarge,
    RemoteProtocolError,
    ResetCode,
    SessionClosed,
)
from tunnel_client.protocol.frames import MAX_MESSAGE_BYTES
from tunnel_client.protocol.heads import RequestHead, ResponseHead
from tunnel_client.protocol.mux import Mux, Role, window_growth

from .. import pages
from ..directory import Link
from ..transport import AiohttpTransport
from .records import peer_mac

__all__ = ["PEER_PATH", "PeerEndpoint", "PeerPool"]

logger = logging.getLogger(__name__)

PEER_PATH = "/_peer"
PEER_MAX_STREAMS = 16384
"""Streams one hop carries at once: every visitor request between two nodes, all links."""
HANDSHAKE_S = 10.0
RETRY_MAX_S = 10.0


class PeerRefused(Exception):
    """The other end did not prove it knows the cluster secret (or is not who we dialed)."""


@dataclass(frozen=True)
class HopSettings:
    """What both ends of a hop need to know."""

    node_id: str
    secret: bytes
    window: int
    keepalive_s: float


def _message(data: bytes | None) -> dict[str, Any]:
    if data is None:
        raise PeerRefused("the connection closed during the handshake")
    try:
        obj = json.loads(data)
    except ValueError:
        raise PeerRefused("the handshake is not JSON") from None
    if not isinstance(obj, dict):
        raise PeerRefused("the handshake is not a JSON object")
    return obj


def _text(obj: dict[str, Any], key: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value or len(value) > 256:
        raise PeerRefused(f"the handshake has no valid {key}")
    return value


def _window(obj: dict[str, Any]) -> int:
    value = obj.get("window")
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value < 2**31:
        raise PeerRefused("the handshake has no valid window")
    return value


def _session(
    settings: HopSettings,
    transport: AiohttpTransport,
    role: Role,
    peer_window: int,
    node: str,
    on_stream: Callable[[Stream], Coroutine[Any, Any, None]] | None = None,
) -> Session:
    log = logging.LoggerAdapter(logger, {"peer": node})
    mux = Mux(
        role,
        window=settings.window,
        peer_window=peer_window,
        max_streams=PEER_MAX_STREAMS,
        growth=window_growth(settings.window),
        logger=log,
    )
    return Session(
        transport,
        mux,
        on_stream=on_stream,
        keepalive_s=settings.keepalive_s,
        keepalive_timeout_s=settings.keepalive_s * 3,
        log=log,
    )


# -- the dialing side ----------------------------------------------------------------------


class _Peer:
    """One other node and the session to it, kept up while the node is online."""

    def __init__(self, pool: PeerPool, node_id: str, url: str) -> None:
        self.pool = pool
        self.node_id = node_id
        self.url = url
        self.session: Session | None = None
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        attempt = 0
        while True:
            try:
                await self._connect_and_serve()
                attempt = 0
            except PeerRefused as exc:
                logger.warning("cluster: peer %s at %s refused: %s", self.node_id, self.url, exc)
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                level = logging.INFO if attempt == 0 else logging.DEBUG
                logger.log(
                    level, "cluster: cannot reach peer %s at %s: %r", self.node_id, self.url, exc
                )
            except Exception:  # a bug: keep the hop coming back all the same
                logger.exception("cluster: the hop to %s failed", self.node_id)
            attempt += 1
            delay = min(RETRY_MAX_S, 0.2 * 1.618 ** min(attempt, 12))
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))  # noqa: S311

    async def _connect_and_serve(self) -> None:
        settings = self.pool.settings
        http = self.pool.http()
        url = self.url.rstrip("/") + PEER_PATH
        async with http.ws_connect(
            url,
            max_msg_size=MAX_MESSAGE_BYTES + 1024,
            compress=0,
            autoping=True,
            heartbeat=None,
            ssl=self.pool.ssl_context or True,
            timeout=aiohttp.ClientWSTimeout(ws_close=2.0),
        ) as ws:
            transport = AiohttpTransport(ws)
            nonce = secrets.token_hex(16)
            hello = {
                "peer": 1,
                "node": settings.node_id,
                "to": self.node_id,
                "nonce": nonce,
                "window": settings.window,
            }
            await transport.send(json.dumps(hello).encode())
            async with asyncio.timeout(HANDSHAKE_S):
                answer = _message(await transport.recv())
            their_nonce = _text(answer, "nonce")
            if answer.get("node") != self.node_id:
                raise PeerRefused(f"it says it is {answer.get('node')!r}")
            parts = (nonce, their_nonce, settings.node_id, self.node_id)
            expected = peer_mac(settings.secret, "listener", *parts)
            if not hmac.compare_digest(str(answer.get("mac")), expected):
                raise PeerRefused("it does not know the cluster secret")
            proof = peer_mac(settings.secret, "dialer", *parts)
            await transport.send(json.dumps({"mac": proof}).encode())
            session = _session(settings, transport, Role.RELAY, _window(answer), self.node_id)
            self.session = session
            logger.info("cluster: hop to %s at %s is up", self.node_id, self.url)
            try:
                ended = await session.run()
            finally:
                self.session = None
            logger.info(
                "cluster: hop to %s ended (%s)", self.node_id, ended.reason or ended.code.name
            )

    async def close(self) -> None:
        if self.session is not None:
            self.session.close(GoAwayCode.SHUTDOWN, "this node is stopping")
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.session.wait_closed(), 2)
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


class PeerPool:
    """The dialing side: one session to every other online node (the directory's
    :class:`~.directory.PeerSessions`)."""

    def __init__(self, settings: HopSettings, *, ssl_context: ssl.SSLContext | None) -> None:
        self.settings = settings
        self.ssl_context = ssl_context
        self._peers: dict[str, _Peer] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self._http: aiohttp.ClientSession | None = None

    def http(self) -> aiohttp.ClientSession:
        if self._http is None:
            self._http = aiohttp.ClientSession(auto_decompress=False)
        return self._http

    def session(self, node_id: str) -> Session | None:
        peer = self._peers.get(node_id)
        if peer is None or peer.session is None or peer.session.ended is not None:
            return None
        return peer.session

    def node_online(self, node_id: str, peer_url: str) -> None:
        peer = self._peers.get(node_id)
        if peer is not None and peer.url == peer_url:
            return
        if peer is not None:
            self._retire(peer)
        self._peers[node_id] = _Peer(self, node_id, peer_url)

    def node_offline(self, node_id: str) -> None:
        peer = self._peers.pop(node_id, None)
        if peer is not None:
            self._retire(peer)

    def _retire(self, peer: _Peer) -> None:
        task = asyncio.get_running_loop().create_task(peer.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def connected(self) -> list[str]:
        return [node for node in self._peers if self.session(node) is not None]

    async def close(self) -> None:
        peers, self._peers = list(self._peers.values()), {}
        await asyncio.gather(
            *(peer.close() for peer in peers), *self._closing, return_exceptions=True
        )
        if self._http is not None:
            await self._http.close()


# -- the accepting side ------------------------------------------------------------------


async def _answer(
    stream: Stream, page: pages.ErrorPage, extra: tuple[tuple[str, str], ...] = ()
) -> None:
    """Answer a hop stream with an error page (the request never reached the link)."""
    body = f"{page.status} {page.title}\n\n{page.detail}\n{page.hint}\n".encode()
    headers = (
        ("Content-Type", "text/plain; charset=utf-8"),
        ("Content-Length", str(len(body))),
        ("Cache-Control", "no-store"),
        ("X-Sharetunnel-Error", str(page.status)),
        *((("Retry-After", str(page.retry_after_s)),) if page.retry_after_s else ()),
        *extra,
    )
    stream.reply(ResponseHead(page.status, headers))
    await stream.write(body)
    await stream.end()


def _authorized(link: Link, head: RequestHead) -> bool:
    assert link.visitor_auth is not None
    scheme, _, encoded = (head.header("Authorization") or "").partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        given = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return False
    return hmac.compare_digest(given.encode(), link.visitor_auth.encode())


class PeerEndpoint:
    """The accepting side: ``/_peer``, and each stream a peer opens, spliced onto a link."""

    def __init__(
        self,
        settings: HopSettings,
        local_link: Callable[[str], Link | None],
        subdomain_of: Callable[[str], str | None],
        spawn: Callable[[Coroutine[Any, Any, None]], asyncio.Task[None]],
    ) -> None:
        self.settings = settings
        self.local_link = local_link
        self.subdomain_of = subdomain_of
        self.spawn = spawn
        self.sessions: set[Session] = set()
        self.streams = 0
        """Hop streams being served right now."""
        self.idle = asyncio.Event()
        """Set while no hop stream is being served."""
        self.idle.set()
        self._refusals = 0
        self._refusal_logged_at = -10.0

    async def accept(self, request: web.BaseRequest) -> web.StreamResponse:
        ws = web.WebSocketResponse(
            max_msg_size=MAX_MESSAGE_BYTES + 1024,
            compress=False,
            autoping=True,
            heartbeat=None,
            timeout=2.0,
        )
        await ws.prepare(request)
        serving = self.spawn(self._serve(AiohttpTransport(ws), request.remote or "?"))
        await asyncio.wait({serving})
        return ws

    async def _serve(self, transport: AiohttpTransport, remote: str) -> None:
        settings = self.settings
        try:
            async with asyncio.timeout(HANDSHAKE_S):
                hello = _message(await transport.recv())
                node = _text(hello, "node")
                if hello.get("to") != settings.node_id:
                    raise PeerRefused(f"it dialed {hello.get('to')!r}, not this node")
                nonce, mine = _text(hello, "nonce"), secrets.token_hex(16)
                parts = (nonce, mine, node, settings.node_id)
                answer = {
                    "node": settings.node_id,
                    "nonce": mine,
                    "window": settings.window,
                    "mac": peer_mac(settings.secret, "listener", *parts),
                }
                await transport.send(json.dumps(answer).encode())
                proof = _message(await transport.recv())
            if not hmac.compare_digest(
                str(proof.get("mac")), peer_mac(settings.secret, "dialer", *parts)
            ):
                raise PeerRefused("it does not know the cluster secret")
            window = _window(hello)
        except (PeerRefused, TimeoutError, RemoteProtocolError) as exc:
            self._refused(remote, str(exc) or "no handshake in time")
            await transport.close()
            return
        session = _session(settings, transport, Role.CLIENT, window, node, self._serve_stream)
        self.sessions.add(session)
        try:
            logger.info("cluster: hop from %s (%s) is up", node, remote)
            await session.run()
        finally:
            self.sessions.discard(session)

    def _refused(self, remote: str, why: str) -> None:
        """Log refused hops at WARNING, at most every 10 s (strangers may knock often)."""
        self._refusals += 1
        now = asyncio.get_running_loop().time()
        if now - self._refusal_logged_at >= 10:
            self._refusal_logged_at = now
            logger.warning(
                "cluster: refused a hop from %s: %s (%d refused so far)",
                remote,
                why,
                self._refusals,
            )

    async def _serve_stream(self, stream: Stream) -> None:
        head = stream.request
        assert head is not None
        sub = self.subdomain_of(head.header("Host") or "")
        link = self.local_link(sub) if sub is not None else None
        session = link.session if link is not None else None
        if link is None or session is None or session.ended is not None:
            # It left this node since the other node looked (moved, or its client dropped).
            await _answer(stream, pages.client_away())
            return
        if link.visitor_auth is not None:
            if not _authorized(link, head):
                realm = (("WWW-Authenticate", 'Basic realm="sharetunnel", charset="UTF-8"'),)
                await _answer(stream, pages.unauthorized(), realm)
                return
            headers = tuple((n, v) for n, v in head.headers if n.lower() != "authorization")
            head = RequestHead(head.method, head.target, headers, websocket=head.websocket)
        self.streams += 1
        self.idle.clear()
        try:
            await splice(stream, session, head)
        except SessionClosed:
            await _answer(stream, pages.client_away())
        except HeadTooLarge:
            stream.reset(ResetCode.INTERNAL_ERROR, "request head too large for the link")
        finally:
            self.streams -= 1
            if not self.streams:
                self.idle.set()

    async def close(self) -> None:
        for session in list(self.sessions):
            session.close(GoAwayCode.SHUTDOWN, "this node is stopping")
        if self.sessions:
            await asyncio.wait(
                {asyncio.ensure_future(s.wait_closed()) for s in self.sessions}, timeout=5
            )
