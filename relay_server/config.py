"""The relay's settings: one frozen dataclass, checked as a whole when built.

The command line fills it from the settings table in :mod:`relay_server.settings`
(flag, ``RELAY_*`` variable, TOML key); the checks on single values live here as
functions that the table uses too.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from tunnel_client.protocol.errors import ConfigError
from tunnel_client.protocol.frames import MAX_HEAD_PAYLOAD
from tunnel_client.protocol.units import format_size
from tunnel_client.protocol.window import MAX_WINDOW, MIN_WINDOW

__all__ = [
    "MAX_HEADER_BYTES",
    "RelayConfig",
    "access_log_problem",
    "broker_url_problem",
    "domain_problem",
    "is_loopback",
    "peer_url_problem",
    "proxy_problem",
]

HOUR = 3600.0

# A visitor's request head travels JSON-encoded in one OPEN frame, whose payload may not
# exceed MAX_HEAD_PAYLOAD (256KiB). JSON escapes a control byte as \u00XX, six bytes for
# one, so a hostile head can grow 6x; 4096 bytes stay for the JSON punctuation and the
# X-Forwarded-* headers the relay adds. Above it, a head that passed the 431 check could
# still be too large to encode (LocalProtocolError) instead of being refused cleanly.
MAX_HEADER_BYTES = (MAX_HEAD_PAYLOAD - 4096) // 6
"""The largest ``max_header_bytes`` the protocol can carry: 43008 bytes (42KiB)."""

MAX_HEADER_BYTES_WHY = "a request head must fit one OPEN frame even when JSON escaping grows it 6x"


def domain_problem(domain: str) -> str | None:
    """Why ``domain`` cannot carry links, or None."""
    labels = domain.lower().split(".")
    if not domain or any(
        not label or len(label) > 63 or not label.replace("-", "").isalnum() for label in labels
    ):
        return f"domain {domain!r} is not a DNS name like share.example.com"
    return None


def proxy_problem(proxy: str) -> str | None:
    """Why ``proxy`` is not an address or network, or None."""
    try:
        ipaddress.ip_network(proxy, strict=False)
    except ValueError:
        return f"trusted proxy {proxy!r} is not an IP address or network"
    return None


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def access_log_problem(target: str) -> str | None:
    """Why ``target`` (``-`` for stdout, else a file) cannot take the access log, or None."""
    if target == "-":
        return None
    parent = Path(target).expanduser().parent
    if not parent.is_dir():
        return f"access log {target!r}: the directory {str(parent)!r} does not exist"
    return None


def broker_url_problem(url: str) -> str | None:
    """Why ``url`` does not name an MQTT broker, or None."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        port, parts = None, urlsplit("")
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname or parts.path not in ("", "/"):
        return f"cluster {url!r} is not a broker URL like mqtt://broker:1883 or mqtts://broker:8883"
    if port == 0:
        return f"cluster {url!r}: port 0 is not a broker's port"
    return None


def peer_url_problem(url: str) -> str | None:
    """Why ``url`` is not how other nodes can reach this one, or None."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises on a bad port)
    except ValueError:
        parts = urlsplit("")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"peer_url {url!r} is not a URL like http://10.0.0.5:8080"
    return None


def cluster_problems(config: RelayConfig) -> list[str]:
    """What is wrong with the cluster settings taken together."""
    problems = []
    if config.cluster is not None:
        if problem := broker_url_problem(config.cluster):
            problems.append(problem)
        if config.cluster_secret_file is None:
            problems.append(
                "cluster needs cluster_secret_file: every node signs with the same secret"
            )
    elif config.workers != 1:
        problems.append("workers needs cluster: each worker is a node of a cluster")
    if config.peer_url is not None and (problem := peer_url_problem(config.peer_url)):
        problems.append(problem)
    if config.cluster_password is not None and config.cluster_password_file is not None:
        problems.append("cluster_password and cluster_password_file exclude each other")
    if config.workers < 0:
        problems.append("workers must be at least 1 (or auto)")
    for path in (config.cluster_secret_file, config.cluster_ca_file, config.cluster_password_file):
        if path is not None and not path.is_file():
            problems.append(f"{path} does not exist or is not a file")
    return problems


@dataclass(frozen=True, kw_only=True)
class RelayConfig:
    """Everything the relay needs to know; defaults suit a public relay."""

    host: str = "127.0.0.1"
    port: int = 8080
    domain: str = "localhost"
    """Links are ``<subdomain>.<domain>``; needs a wildcard DNS record in production."""
    ttl_s: float = 72 * HOUR
    """How long a link lives after it is first issued."""
    public_scheme: str | None = None
    """Scheme visitors use (``https`` behind a TLS front); default: what we serve."""
    public_port: int | None = None
    """Port visitors use (443 behind a TLS front); default: the port we listen on."""
    response_timeout_s: float = 600.0
    """How long the local server may take to start a response before visitors get 504."""
    handshake_timeout_s: float = 10.0
    keepalive_s: float = 10.0
    """PING a quiet tunnel this often; a tunnel silent for 3x this long is dropped."""
    reconnect_grace_s: float = 600.0
    """How long a link whose client dropped keeps answering 503 (not 404) to visitors."""
    shutdown_grace_s: float = 10.0
    """On SIGTERM, how long in-flight requests may take to finish."""
    stream_window: int = 256 * 1024
    """Flow-control window per stream: the most bytes one request buffers in the relay."""
    max_streams: int = 256
    """Concurrent requests per tunnel; more get 429."""
    max_header_bytes: int = 32 * 1024
    """Total size of a visitor's request line and headers; more get 431."""
    max_body_bytes: int | None = None
    """Largest request body a visitor may send (None: no limit); more get 413."""
    header_timeout_s: float = 30.0
    """A visitor must send its request headers within this time."""
    idle_timeout_s: float = 900.0
    """A visitor connection with no request and no response bytes for this long is closed."""
    rate_per_link: float = 0.0
    """Requests per second each link accepts (bursts to 4x); 0 means unlimited. More get 429."""
    interstitial: bool = False
    """Show browsers a warning page on their first visit to each link (abuse deterrent)."""
    tunnels_per_ip: int = 20
    tunnels_per_token: int = 100
    tokens_file: Path | None = None
    """One token per line; when set, clients must present one to create links."""
    lease_key: Path | None = None
    """Ed25519 key signing leases; created owner-only on first start. None: in memory."""
    tls_cert: Path | None = None
    tls_key: Path | None = None
    self_signed: bool = False
    """Serve HTTPS with a wildcard certificate for the domain made at start (testing)."""
    trusted_proxies: tuple[str, ...] = ()
    """Addresses (or networks) of fronts whose X-Forwarded-For may be believed."""
    ready_file: Path | None = None
    """Write ``{"port": ..., "url": ...}`` here once listening (for scripts and tests)."""
    log_level: str = "info"
    log_format: str = "text"
    """``text``, or ``json``: every log line (and access log line) one JSON object."""
    access_log: str | None = None
    """One line per visitor request, to this file, or to stdout for ``-``; None: none."""
    admin_host: str = "127.0.0.1"
    admin_port: int | None = None
    """Serve /metrics, /healthz, /readyz and /api/links here (0: any free port); None: off."""
    admin_token_file: Path | None = None
    """Bearer tokens (one per line) the admin API requires; reloaded on SIGHUP."""
    # -- cluster (relay_server/cluster/) ---------------------------------------------------
    cluster: str | None = None
    """``mqtt://host:port`` or ``mqtts://host:port`` of the broker the nodes share."""
    cluster_name: str | None = None
    """Topics live under ``sharetunnel/<cluster_name>/``; None: the domain."""
    cluster_secret_file: Path | None = None
    """The secret every node shares: it signs announcements and the node-to-node hop."""
    cluster_user: str | None = None
    cluster_password: str | None = field(default=None, repr=False)
    cluster_password_file: Path | None = None
    cluster_ca_file: Path | None = None
    """CA bundle for ``mqtts://`` brokers and ``https://`` peer URLs (default: the system's)."""
    node_id: str | None = None
    """This node's name in the cluster; None: ``<host name>:<port>``."""
    peer_url: str | None = None
    """How other nodes reach this one; None: ``http://<host>:<port>`` of this relay."""
    workers: int = 1
    """Relay processes sharing the port (SO_REUSEPORT); 0: one per core."""
    reuse_port: bool = False
    """(set by --workers) Bind the public port with SO_REUSEPORT."""
    peer_listen: str | None = None
    """(set by --workers) ``host:port`` of a listener for other nodes only (``/_peer``)."""

    def __post_init__(self) -> None:
        if problems := list(self._problems()):
            raise ConfigError(problems)

    def _problems(self) -> list[str]:
        problems = []
        if not 0 <= self.port <= 65535:
            problems.append(f"port {self.port} is not in 0..65535")
        if self.public_port is not None and not 1 <= self.public_port <= 65535:
            problems.append(f"public_port {self.public_port} is not in 1..65535")
        if problem := domain_problem(self.domain):
            problems.append(problem)
        if self.public_scheme not in (None, "http", "https"):
            problems.append(f"public_scheme must be http or https, not {self.public_scheme!r}")
        if not MIN_WINDOW <= self.stream_window <= MAX_WINDOW:
            problems.append(f"stream_window must be in {MIN_WINDOW}..{MAX_WINDOW} bytes")
        if self.max_streams < 1:
            problems.append("max_streams must be at least 1")
        if self.max_header_bytes < 1024:
            problems.append("max_header_bytes must be at least 1024")
        if self.max_header_bytes > MAX_HEADER_BYTES:
            problems.append(
                f"max_header_bytes must be at most {format_size(MAX_HEADER_BYTES)} "
                f"({MAX_HEADER_BYTES} bytes): {MAX_HEADER_BYTES_WHY}"
            )
        if self.max_body_bytes is not None and self.max_body_bytes < 0:
            problems.append("max_body_bytes must not be negative")
        if self.rate_per_link < 0:
            problems.append("rate_per_link must not be negative")
        if (self.tls_cert is None) != (self.tls_key is None):
            problems.append("tls_cert and tls_key go together: give both or neither")
        if self.self_signed and self.tls_cert is not None:
            problems.append("self_signed and tls_cert exclude each other")
        if self.admin_port is not None and not 0 <= self.admin_port <= 65535:
            problems.append(f"admin_port {self.admin_port} is not in 0..65535")
        if (
            self.admin_port is not None
            and self.admin_token_file is None
            and not is_loopback(self.admin_host)
        ):
            problems.append(
                f"admin_host {self.admin_host} is not a loopback address: give an "
                "admin_token_file, or anyone who reaches the admin port could take links down"
            )
        if self.log_format not in ("text", "json"):
            problems.append(f"log_format must be text or json, not {self.log_format!r}")
        if self.access_log is not None and (problem := access_log_problem(self.access_log)):
            problems.append(problem)
        problems.extend(cluster_problems(self))
        for path in (self.tls_cert, self.tls_key, self.tokens_file, self.admin_token_file):
            if path is not None and not path.is_file():
                problems.append(f"{path} does not exist or is not a file")
        problems.extend(filter(None, map(proxy_problem, self.trusted_proxies)))
        for name in (
            "ttl_s",
            "response_timeout_s",
            "handshake_timeout_s",
            "keepalive_s",
            "shutdown_grace_s",
            "header_timeout_s",
            "idle_timeout_s",
        ):
            if getattr(self, name) <= 0:
                problems.append(f"{name.removesuffix('_s')} must be positive")
        return problems

    @property
    def tls(self) -> bool:
        """True when the relay itself serves HTTPS."""
        return self.self_signed or self.tls_cert is not None

    @property
    def scheme(self) -> str:
        """The scheme of the links handed out."""
        return self.public_scheme or ("https" if self.tls else "http")

    def relay_url(self, bound_port: int) -> str:
        """The base URL clients pass as ``--relay``: ``http://127.0.0.1:8080``.

        A relay for ``localhost`` links is reached at its listening address (loopback
        for a wildcard); any other at its domain, as visitors see it.
        """
        if self.domain == "localhost":
            host = self.host if self.host not in ("", "0.0.0.0", "::") else "127.0.0.1"  # noqa: S104
            host = f"[{host}]" if ":" in host else host
        else:
            host = self.domain
        port = self.public_port or bound_port
        default = 443 if self.scheme == "https" else 80
        return f"{self.scheme}://{host}{'' if port == default else f':{port}'}"

    def link_for(self, subdomain: str, bound_port: int) -> str:
        """The public URL of a subdomain, omitting the scheme's default port."""
        port = self.public_port or bound_port
        default = 443 if self.scheme == "https" else 80
        suffix = "" if port == default else f":{port}"
        return f"{self.scheme}://{subdomain}.{self.domain}{suffix}/"
