"""What an operator sees of a relay: Prometheus metrics and the access log.

One :class:`Observer` per relay. The public edge reports each finished visitor request
with :meth:`Observer.request_done`; the tunnel endpoint reports welcomes; the link
directory reports transitions to a listener; the cluster reports forwards and its
broker. Gauges that mirror state (links by state, open streams, the busiest address)
are read from the directory when Prometheus scrapes, so they cannot drift.

The counts are plain integers on the event loop's thread: a request costs a few
additions, not prometheus_client's locks (about 10 us a request with its Counter and
Histogram objects, 5% of the relay's whole CPU per request). They become metric
families only when scraped, in a registry of this relay's own (never the process-wide
one: two relays in one process, as in tests, keep their numbers apart), and
prometheus_client is imported only then, so the embedded relay never pays for it.

The access log is the logger ``relay_server.access``; ``tunnel-relay --access-log``
gives it a handler (text or JSON, like every other log line). Each record carries the
request's fields as ``extra={"access": {...}}`` for the JSON formatter.
"""

from __future__ import annotations

import bisect
import json
import logging
from collections import Counter as Tally
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from .directory import HOLDING, Link, LinkDirectory, LinkEvent, LinkState

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from .config import RelayConfig

__all__ = ["ACCESS_LOGGER", "DURATION_BUCKETS", "Observer"]

ACCESS_LOGGER = "relay_server.access"
access_log = logging.getLogger(ACCESS_LOGGER)

MAX_LOGGED_PATH = 2048
"""Longer request targets are cut in the access log (a target may be up to 42KiB)."""

DURATION_BUCKETS = (0.005, 0.025, 0.1, 0.5, 2.5, 10.0, 60.0)
"""Upper bounds (seconds) of the request duration histogram; +Inf follows."""

_STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")


def _open_streams(link: Link) -> int:
    session = link.session
    return session.open_streams if session is not None and session.ended is None else 0


class Observer:
    """The numbers of one relay and the recorder its edge calls once per request."""

    def __init__(self, directory: LinkDirectory, config: RelayConfig) -> None:
        self.directory = directory
        self.config = config
        self.access_log = config.access_log is not None
        self.requests = [0] * len(_STATUS_CLASSES)
        """Requests answered, by status class (1xx..5xx)."""
        self.request_bytes = 0
        self.response_bytes = 0
        self.durations = [0] * (len(DURATION_BUCKETS) + 1)
        """Requests per duration bucket (not cumulative; the last is +Inf)."""
        self.duration_sum = 0.0
        self.new_links = 0
        self.reconnects = 0
        self.expiries = 0
        self.revocations = 0
        self.cross_node_forwards = 0
        self.broker_connected = False
        self.broker_probe: Callable[[], bool] | None = None
        """Asked at scrape time when set (the cluster's broker connection)."""
        self.clustered = bool(getattr(config, "cluster", None))
        self._registry: CollectorRegistry | None = None
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
        self.requests[min(max(status // 100, 1), 5) - 1] += 1
        self.request_bytes += bytes_in
        self.response_bytes += bytes_out
        self.durations[bisect.bisect_left(DURATION_BUCKETS, duration_s)] += 1
        self.duration_sum += duration_s
        held = self.directory.get(link)
        if held is not None:
            held.requests += 1
        if self.access_log:
            self._log_access(
                link, method, path, status, bytes_in, bytes_out, duration_s, visitor_ip
            )

    def link_welcomed(self, *, resumed: bool) -> None:
        """A WELCOME went out: a new link, or one resumed with its lease."""
        if resumed:
            self.reconnects += 1
        else:
            self.new_links += 1

    def cross_node_forward(self) -> None:
        """A visitor request was forwarded to the node that holds its link (cluster)."""
        self.cross_node_forwards += 1

    def set_broker_connected(self, connected: bool) -> None:
        """The cluster's broker connection came up or went down."""
        self.broker_connected = connected

    def set_clustered(self, clustered: bool) -> None:
        """Whether this relay is a cluster node (read from ``config.cluster`` at start)."""
        self.clustered = clustered

    def metrics(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        from prometheus_client import generate_latest

        return generate_latest(self.registry)

    @property
    def registry(self) -> CollectorRegistry:
        """This relay's Prometheus registry (made on first use)."""
        if self._registry is None:
            from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector

            registry = CollectorRegistry(auto_describe=True)
            registry.register(_Collector(self))
            # Open fds against the fd limit, memory, CPU: what "near limits" usually means.
            ProcessCollector(registry=registry)
            PlatformCollector(registry=registry)
            self._registry = registry
        return self._registry

    # -- internals -------------------------------------------------------------------------

    def _link_changed(self, link: Link, old: LinkState, event: LinkEvent) -> None:
        if link.state is LinkState.EXPIRED and old is not LinkState.EXPIRED:
            self.expiries += 1
        elif link.state is LinkState.REVOKED and old is not LinkState.REVOKED:
            self.revocations += 1

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


class _Collector:
    """The observer's numbers and the directory's state as metric families, per scrape."""

    def __init__(self, observer: Observer) -> None:
        self.observer = observer

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        o = self.observer
        directory, config = o.directory, o.config
        links = directory.links()

        by_state = GaugeMetricFamily(
            "sharetunnel_links",
            "Links that hold their subdomain, by state (live: its client is connected).",
            labels=["state"],
        )
        counts = directory.by_state()
        for state in sorted(s.value for s in HOLDING):
            by_state.add_metric([state], counts.get(state, 0))
        yield by_state

        requests = CounterMetricFamily(
            "sharetunnel_requests",
            "Visitor requests answered, by status class (499: the visitor left first).",
            labels=["status"],
        )
        for status_class, count in zip(_STATUS_CLASSES, o.requests, strict=True):
            requests.add_metric([status_class], count)
        yield requests

        def counter(name: str, help_text: str, value: float) -> Any:
            return CounterMetricFamily(name, help_text, value=value)

        def gauge(name: str, help_text: str, value: float) -> Any:
            return GaugeMetricFamily(name, help_text, value=value)

        yield counter(
            "sharetunnel_request_bytes",
            "Request body bytes received from visitors.",
            o.request_bytes,
        )
        yield counter(
            "sharetunnel_response_bytes",
            "Bytes sent to visitors (response heads and bodies).",
            o.response_bytes,
        )
        cumulative, buckets = 0, []
        for bound, count in zip((*DURATION_BUCKETS, float("inf")), o.durations, strict=True):
            cumulative += count
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
        yield HistogramMetricFamily(
            "sharetunnel_request_duration_seconds",
            "Time from a visitor's request head to the end of its response.",
            buckets=buckets,
            sum_value=o.duration_sum,
        )
        yield counter("sharetunnel_new_links", "New links handed out.", o.new_links)
        yield counter(
            "sharetunnel_reconnects",
            "Links resumed with a lease (a client came back, or moved from another relay).",
            o.reconnects,
        )
        yield counter("sharetunnel_expiries", "Links that reached their expiry time.", o.expiries)
        yield counter(
            "sharetunnel_revocations",
            "Links taken down by the operator (or whose token was withdrawn).",
            o.revocations,
        )
        yield counter(
            "sharetunnel_cross_node_forwards",
            "Visitor requests forwarded to the cluster node that holds the link.",
            o.cross_node_forwards,
        )
        yield gauge(
            "sharetunnel_broker_connected",
            "1 while the cluster's MQTT broker is connected; 0 when not clustered.",
            int(o.broker_probe() if o.broker_probe is not None else o.broker_connected),
        )
        yield gauge(
            "sharetunnel_clustered",
            "1 when the relay runs in a cluster (so a 0 broker_connected is an outage).",
            int(o.clustered),
        )
        yield gauge(
            "sharetunnel_open_streams",
            "Visitor requests (streams) open on all links now.",
            sum(_open_streams(link) for link in links),
        )
        per_ip = Tally(link.client_ip for link in links)
        per_token = Tally(link.token_id for link in links if link.token_id is not None)
        yield gauge(
            "sharetunnel_busiest_address_links",
            "Links held by the client address that holds the most (limit: tunnels_per_ip).",
            max(per_ip.values(), default=0),
        )
        yield gauge(
            "sharetunnel_busiest_token_links",
            "Links held by the token that holds the most (limit: tunnels_per_token).",
            max(per_token.values(), default=0),
        )
        yield gauge(
            "sharetunnel_busiest_link_streams",
            "Open streams of the busiest link (limit: max_streams).",
            max((_open_streams(link) for link in links), default=0),
        )
        limits = GaugeMetricFamily(
            "sharetunnel_limit",
            "The relay's per-address, per-token and per-link limits, for alert ratios.",
            labels=["setting"],
        )
        limits.add_metric(["tunnels_per_ip"], config.tunnels_per_ip)
        limits.add_metric(["tunnels_per_token"], config.tunnels_per_token)
        limits.add_metric(["max_streams"], config.max_streams)
        yield limits
