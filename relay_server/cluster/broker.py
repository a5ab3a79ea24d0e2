"""The node's connection to the MQTT broker, kept up for as long as the node runs.

Each connection registers a last will (this node's record, "offline"), announces the
node "online", subscribes to the whole cluster, sends itself a sync marker, and puts
back every retained record the node wants (:class:`~.directory.Outbox`): after a broker
restart without persistence, or a network cut, the cluster converges again with no
operator action. While the broker is away the node keeps serving its own links (local
lookups never touch the broker) and answers 503 for links it cannot locate; the
loop retries with backoff (0.5 s growing to 10 s) and logs the loss at WARNING and the
return at INFO.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
import ssl
from urllib.parse import urlsplit

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from .directory import MqttDirectory

__all__ = ["Broker"]

logger = logging.getLogger(__name__)

RETRY_FIRST_S = 0.5
RETRY_MAX_S = 10.0
STOP_FLUSH_S = 2.0


class Broker:
    """Keeps a node connected to its broker and the directory in step with it."""

    def __init__(
        self,
        directory: MqttDirectory,
        url: str,
        *,
        username: str | None,
        password: str | None,
        ca_file: str | None,
        keepalive_s: float,
    ) -> None:
        parts = urlsplit(url)
        self.directory = directory
        self.url = url
        self.host = parts.hostname or "localhost"
        self.tls = parts.scheme == "mqtts"
        self.port = parts.port or (8883 if self.tls else 1883)
        self.username = username
        self.password = password
        self.ssl_context: ssl.SSLContext | None = None
        if self.tls:
            self.ssl_context = ssl.create_default_context(cafile=ca_file)
        self.keepalive_s = max(2, round(keepalive_s))
        self.connected = asyncio.Event()
        self._client: aiomqtt.Client | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """Say goodbye (this node's record: offline), then disconnect."""
        client = self._client
        if client is not None and self.connected.is_set():
            directory = self.directory
            with contextlib.suppress(Exception):
                async with asyncio.timeout(STOP_FLUSH_S):
                    await directory.outbox.empty.wait()
                    topic = directory.topics.node(directory.identity.node_id)
                    await client.publish(topic, directory.node_payload("offline"), 1, True)
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        attempt = 0
        lost_at: float | None = None
        loop = asyncio.get_running_loop()
        while True:
            try:
                await self._session()
            except aiomqtt.MqttError as exc:
                reason = str(exc) or type(exc).__name__
            except Exception as exc:  # a bug: keep the node coming back all the same
                logger.exception("cluster: the broker connection failed")
                reason = repr(exc)
            else:
                reason = "the broker closed the connection"
            self._client = None
            if self.connected.is_set():
                self.connected.clear()
                self.directory.broker_lost()
                lost_at = loop.time()
                logger.warning(
                    "cluster: lost the broker at %s (%s); this node keeps serving its own "
                    "links, links on other nodes answer 503 until it is back",
                    self.url,
                    reason,
                )
                attempt = 0
            elif attempt == 0 and lost_at is None:
                logger.warning("cluster: cannot reach the broker at %s (%s)", self.url, reason)
            attempt += 1
            delay = min(RETRY_MAX_S, RETRY_FIRST_S * 1.618 ** min(attempt - 1, 10))
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))  # noqa: S311

    async def _session(self) -> None:
        directory = self.directory
        topics = directory.topics
        node_id = directory.identity.node_id
        conn = secrets.token_hex(8)
        directory.broker_connected(conn)
        will = aiomqtt.Will(topics.node(node_id), directory.node_payload("offline"), 1, True)
        client = aiomqtt.Client(
            self.host,
            self.port,
            username=self.username,
            password=self.password,
            identifier=f"sharetunnel-{node_id}-{conn}"[:200],
            protocol=aiomqtt.ProtocolVersion.V5,
            will=will,
            keepalive=self.keepalive_s,
            tls_context=self.ssl_context,
            timeout=10,
        )
        async with client:
            self._client = client
            await client.publish(topics.node(node_id), directory.node_payload("online"), 1, True)
            await client.subscribe(topics.all, qos=1)
            # Every retained message arrives before this marker comes back to us.
            await client.publish(topics.sync(node_id), conn.encode(), qos=1)
            if not self.connected.is_set():
                self.connected.set()
                logger.info("cluster: connected to the broker at %s as node %s", self.url, node_id)
            reader = asyncio.create_task(self._read(client))
            writer = asyncio.create_task(self._write(client))
            try:
                done, _ = await asyncio.wait({reader, writer}, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    task.result()  # raises the MqttError that ended it
            finally:
                for task in (reader, writer):
                    task.cancel()
                await asyncio.gather(reader, writer, return_exceptions=True)

    async def _read(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            payload = message.payload
            if isinstance(payload, str):
                payload = payload.encode()
            elif not isinstance(payload, bytes | bytearray):
                payload = b""
            try:
                self.directory.receive(message.topic.value, bytes(payload))
            except Exception:
                logger.exception("cluster: failed to handle a message on %s", message.topic)

    async def _write(self, client: aiomqtt.Client) -> None:
        outbox = self.directory.outbox
        while True:
            await outbox.wake.wait()
            for topic, payload, expiry_s in outbox.pending():
                properties = None
                if expiry_s is not None:
                    properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
                    properties.MessageExpiryInterval = max(1, int(expiry_s))
                await client.publish(topic, payload, qos=1, retain=True, properties=properties)
                outbox.sent(topic, payload)
