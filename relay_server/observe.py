"""What an operator sees of a relay: Prometheus metrics and the access log.

One :class:`Observer` per relay, with a registry of its own (never the process-wide
default, so two relays in one process, as in tests, do not mix their numbers). The
public edge reports each finished visitor request with :meth:`Observer.request_done`;
the tunnel endpoint reports welcomes; the link directory reports transitions to a
listener. Gauges that mirror state (links by state, open streams, the busiest
address) are read from the directory when Prometheus scrapes, so they cannot drift.

The access log is the logger ``relay_server.access``; ``tunnel-relay --access-log``
gives it a handler (text or JSON, like every other log line). Each record carries the
request's fields as ``extra={"access": {...}}`` for the JSON formatter.
"""

from __future__ import annotations

import json
import logging
from collections import Counter as Tally
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .directory import HOLDING, Link, LinkDirectory, LinkEvent, LinkState

if TYPE_CHECKING:
    from .config import RelayConfig

__all__ = ["ACCESS_LOGGER", "Observer"]

ACCESS_LOGGER = "relay_server.access"
access_log = logging.getLogger(ACCESS_LOGGER)

MAX_LOGGED_PATH = 2048
"""Longer request targets are cut in the access log (a target may be up to 42KiB)."""

_STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")


class _StateCollector(Collector):
    """Gauges read from the link directory at scrape time."""

    def __init__(self, directory: LinkDirectory, config: RelayConfig) -> None:
        self.directory = directory
        self.config = config

    def collect(self) -> Iterator[Metric]:
        links = self.directory.links()
        by_state = GaugeMetricFamily(
            "sharetunnel_links",
            "Links that hold their subdomain, by state (live: its client is connected).",
            labels=["state"],
        )
        counts = self.directory.by_state()
        for state in sorted(s.value for s in HOLDING):
            by_state.add_metric([state], counts.get(state, 0))
        yield by_state
        yield GaugeMetricFamily(
            "sharetunnel_open_streams",
            "Visitor requests (streams) open on all links now.",
            value=sum(_open_streams(link) for link in links),
        )
        per_ip = Tally(link.client_ip for link in links)
        per_token = Tally(link.token_id for link in links if link.token_id is not None)
        yield GaugeMetricFamily(
            "sharetunnel_busiest_address_links",
            "Links held by the client address that holds the most (limit: tunnels_per_ip).",
            value=max(per_ip.values(), default=0),
        )
        yield GaugeMetricFamily(
            "sharetunnel_busiest_token_links",
            "Links held by the token that holds the most (limit: tunnels_per_token).",
            value=max(per_token.values(), default=0),
        )
        yield GaugeMetricFamily(
            "sharetunnel_busiest_link_streams",
            "Open streams of the busiest link (limit: max_streams).",
            value=max((_open_streams(link) for link in links), default=0),
        )
        limits = GaugeMetricFamily(
            "sharetunnel_limit",
            "The relay's per-address, per-token and per-link limits, for alert ratios.",
            labels=["setting"],
        )
        limits.add_metric(["tunnels_per_ip"], self.config.tunnels_per_ip)
        limits.add_metric(["tunnels_per_token"], self.config.tunnels_per_token)
        limits.add_metric(["max_streams"], self.config.max_streams)
        yield limits


def _open_streams(link: Link) -> int:
    session = link.session
    return session.open_streams if session is not None and session.ended is None else 0


class Observer:
    """The metrics of one relay and the recorder its edge calls once per request."""

    def __init__(
        self, directory: LinkDirectory, config: RelayConfig, *, process_metrics: bool = True
    ) -> None:
        self.directory = directory
        self.access_log = config.access_log is not None
        self.registry = registry = CollectorRegistry(auto_describe=True)
        registry.register(_StateCollector(directory, config))
        if process_metrics:
            # Open fds against the fd limit, memory, CPU: what "near limits" usually means.
            ProcessCollector(registry=registry)
            PlatformCollector(registry=registry)
        self.requests = Counter(
            "sharetunnel_requests",
            "Visitor requests answered, by status class (499: the visitor left first).",
            ["status"],
            registry=registry,
        )
        self._by_class = [self.requests.labels(c) for c in _STATUS_CLASSES]
        self.request_bytes = Counter(
            "sharetunnel_request_bytes",
            "Request body bytes received from visitors.",
            registry=registry,
        )
        self.response_bytes = Counter(
            "sharetunnel_response_bytes",
            "Bytes sent to visitors (response heads and bodies).",
            registry=registry,
        )
        self.duration = Histogram(
            "sharetunnel_request_duration_seconds",
            "Time from a visitor's request head to the end of its response.",
            buckets=(0.005, 0.025, 0.1, 0.5, 2.5, 10.0, 60.0),
            registry=registry,
        )
        self.new_links = Counter(
            "sharetunnel_new_links", "New links handed out.", registry=registry
        )
        self.reconnects = Counter(
            "sharetunnel_reconnects",
            "Links resumed with a lease (a client came back, or moved from another relay).",
            registry=registry,
        )
        self.expiries = Counter(
            "sharetunnel_expiries", "Links that reached their expiry time.", registry=registry
        )
        self.revocations = Counter(
            "sharetunnel_revocations",
            "Links taken down by the operator (or whose token was withdrawn).",
            registry=registry,
        )
        self.cross_node_forwards = Counter(
            "sharetunnel_cross_node_forwards",
            "Visitor requests forwarded to the cluster node that holds the link.",
            registry=registry,
        )
        self.broker_connected = Gauge(
            "sharetunnel_broker_connected",
            "1 while the cluster's MQTT broker is connected; 0 when not clustered.",
            registry=registry,
        )
        self.clustered = Gauge(
            "sharetunnel_clustered",
            "1 when the relay runs in a cluster (so a 0 broker_connected is an outage).",
            registry=registry,
        )
        self.clustered.set(1 if getattr(config, "cluster", None) else 0)
        directory.watch(self._link_changed)

    # -- what the edge, the endpoint and the cluster report --------------------------------

    def request_done(
        self,
        link: str,
        method: str,
        path: str,
        status: int,
        bytes_in: int,
        bytes_out: int,
        duration_s: float,
        visitor_ip: str,
    ) -> None:
        """One visitor request to ``link`` (its subdomain) is over, however it ended.

        ``path`` is the request target as sent, ``bytes_in`` the request body bytes
        read, ``bytes_out`` the bytes written to the visitor (head included), and
        ``status`` what the visitor got (499 if it left before an answer).
        """
        self._by_class[min(max(status // 100, 1), 5) - 1].inc()
        if bytes_in:
            self.request_bytes.inc(bytes_in)
        self.response_bytes.inc(bytes_out)
        self.duration.observe(duration_s)
        held = self.directory.get(link)
        if held is not None:
            held.requests += 1
        if self.access_log:
            self._log_access(
                link, method, path, status, bytes_in, bytes_out, duration_s, visitor_ip
            )

    def link_welcomed(self, *, resumed: bool) -> None:
        """A WELCOME went out: a new link, or one resumed with its lease."""
        (self.reconnects if resumed else self.new_links).inc()

    def cross_node_forward(self) -> None:
        """A visitor request was forwarded to the node that holds its link (cluster)."""
        self.cross_node_forwards.inc()

    def set_broker_connected(self, connected: bool) -> None:
        """The cluster's broker connection came up or went down."""
        self.broker_connected.set(1 if connected else 0)

    def set_clustered(self, clustered: bool) -> None:
        """Whether this relay is a cluster node (read from ``config.cluster`` at start)."""
        self.clustered.set(1 if clustered else 0)

    def metrics(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)

    # -- internals -------------------------------------------------------------------------

    def _link_changed(self, link: Link, old: LinkState, event: LinkEvent) -> None:
        if link.state is LinkState.EXPIRED and old is not LinkState.EXPIRED:
            self.expiries.inc()
        elif link.state is LinkState.REVOKED and old is not LinkState.REVOKED:
            self.revocations.inc()

    def _log_access(
        self,
        link: str,
        method: str,
        path: str,
        status: int,
        bytes_in: int,
        bytes_out: int,
        duration_s: float,
        visitor_ip: str,
    ) -> None:
        if len(path) > MAX_LOGGED_PATH:
            path = path[:MAX_LOGGED_PATH] + "..."
        duration_ms = round(duration_s * 1000, 1)
        # The request line is JSON-quoted: a visitor's target may hold quotes or
        # non-ASCII bytes, and must not be able to forge a log line.
        access_log.info(
            "%s %s %s %d %d %d %.1fms",
            visitor_ip or "-",
            link,
            json.dumps(f"{method} {path}"),
            status,
            bytes_in,
            bytes_out,
            duration_ms,
            extra={
                "access": {
                    "link": link,
                    "method": method,
                    "path": path,
                    "status": status,
                    "bytes_in": bytes_in,
                    "bytes_out": bytes_out,
                    "duration_ms": duration_ms,
                    "visitor": visitor_ip,
                }
            },
        )
