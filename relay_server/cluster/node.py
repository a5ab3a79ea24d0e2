"""A relay's membership in a cluster: its directory, its broker connection, its hops.

:class:`ClusterNode` wires the pieces together for :class:`~relay_server.app.Relay`,
which only creates it, starts it once it listens, routes ``/_peer`` to it and stops it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
import ssl
from collections.abc import Callable, Coroutine
from typing import Any

from aiohttp import web

from tunnel_client.protocol.errors import ConfigError

from ..config import RelayConfig
from ..directory import Limits
from .broker import Broker
from .directory import Identity, MqttDirectory
from .peers import PEER_PATH, HopSettings, PeerEndpoint, PeerPool
from .records import Topics

__all__ = ["ClusterNode", "read_secret"]

logger = logging.getLogger(__name__)

MIN_SECRET_BYTES = 16


def read_secret(config: RelayConfig) -> bytes:
    """The cluster secret from its file (surrounding whitespace dropped).

    Raises:
        ConfigError: the file is unreadable, or the secret too short to be one.
    """
    path = config.cluster_secret_file
    assert path is not None
    try:
        secret = path.read_bytes().strip()
    except OSError as exc:
        raise ConfigError([f"cannot read the cluster secret {path}: {exc.strerror}"]) from None
    if len(secret) < MIN_SECRET_BYTES:
        raise ConfigError(
            [
                f"the cluster secret in {path} has {len(secret)} bytes; it needs at least "
                f"{MIN_SECRET_BYTES} (make one with `openssl rand -hex 32`)"
            ]
        )
    return secret


def _password(config: RelayConfig) -> str | None:
    path = config.cluster_password_file
    if path is None:
        return config.cluster_password
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"cannot read the broker password {path}: {exc}"]) from None


def default_peer_url(config: RelayConfig, port: int, *, tls: bool) -> str:
    """``http://<host>:<port>`` of this relay; a wildcard host becomes loopback."""
    host = config.host
    if host in ("0.0.0.0", ""):  # noqa: S104
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"{'https' if tls else 'http'}://{host}:{port}"


class ClusterNode:
    """This relay as one node of a cluster."""

    def __init__(
        self,
        config: RelayConfig,
        limits: Limits,
        url_for: Callable[[str], str],
        *,
        subdomain_of: Callable[[str], str | None],
        spawn: Callable[[Coroutine[Any, Any, None]], asyncio.Task[None]],
    ) -> None:
        assert config.cluster is not None
        self.config = config
        self.secret = read_secret(config)
        self.hop = HopSettings("", self.secret, config.stream_window, config.keepalive_s)
        ssl_context = None
        if config.cluster_ca_file is not None:
            ssl_context = ssl.create_default_context(cafile=str(config.cluster_ca_file))
        self.peers = PeerPool(self.hop, ssl_context=ssl_context)
        self.directory = MqttDirectory(
            limits,
            url_for,
            identity=Identity("", secrets.token_hex(8), "", ""),
            secret=self.secret,
            topics=Topics(config.cluster_name or config.domain),
            peers=self.peers,
        )
        self.endpoint = PeerEndpoint(self.hop, self.directory.local, subdomain_of, spawn)
        self.broker = Broker(
            self.directory,
            config.cluster,
            username=config.cluster_user,
            password=_password(config),
            ca_file=None if config.cluster_ca_file is None else str(config.cluster_ca_file),
            keepalive_s=config.keepalive_s,
        )
        self._peer_runner: web.ServerRunner | None = None

    @property
    def node_id(self) -> str:
        return self.directory.identity.node_id

    async def start(self, port: int, *, tls: bool) -> None:
        """Join the cluster; ``port`` is the port this relay listens on."""
        config = self.config
        node_id = config.node_id or f"{socket.gethostname()}:{port}"
        peer_url = config.peer_url or default_peer_url(config, port, tls=tls)
        if config.peer_listen is not None:
            peer_url = await self._listen_for_peers(config.peer_listen)
        self.hop = HopSettings(node_id, self.secret, config.stream_window, config.keepalive_s)
        self.peers.settings = self.endpoint.settings = self.hop
        identity = self.directory.identity
        self.directory.identity = Identity(node_id, identity.incarnation, "", peer_url)
        self.broker.start()
        logger.info("cluster: node %s, reachable by peers at %s", node_id, peer_url)

    async def _listen_for_peers(self, where: str) -> str:
        """A listener for other nodes only (``--workers``: each worker has its own)."""
        host, _, port = where.rpartition(":")

        async def handle(request: web.BaseRequest) -> web.StreamResponse:
            if request.rel_url.path == PEER_PATH:
                return await self.endpoint.accept(request)
            return web.Response(status=404, text="only other nodes of the cluster come here\n")

        server = web.Server(handle, handler_cancellation=True, access_log=None)
        self._peer_runner = web.ServerRunner(server, handle_signals=False)
        await self._peer_runner.setup()
        site = web.TCPSite(self._peer_runner, host, int(port))
        await site.start()
        sockets = getattr(site._server, "sockets", None) or []
        bound = sockets[0].getsockname()[1] if sockets else int(port)
        return f"http://{host}:{bound}"

    async def accept(self, request: web.BaseRequest) -> web.StreamResponse:
        """``/_peer`` on the relay's own listener."""
        return await self.endpoint.accept(request)

    async def drain(self, timeout_s: float) -> None:
        """Wait (at most ``timeout_s``) for the requests other nodes sent here to finish."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.endpoint.idle.wait(), timeout_s)

    async def stop(self) -> None:
        await self.peers.close()
        await self.endpoint.close()
        await self.broker.stop()
        if self._peer_runner is not None:
            await self._peer_runner.cleanup()

    def health(self) -> dict[str, Any]:
        """For ``/_health``: who this node is and what it sees of the cluster."""
        directory = self.directory
        return {
            "node": self.node_id,
            "broker": "connected" if self.broker.connected.is_set() else "away",
            "synced": directory.synced,
            "nodes": sorted(directory.nodes()),
            "hops": sorted(self.peers.connected()),
        }
