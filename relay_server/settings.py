"""Every relay setting, once: option, ``RELAY_*`` variable, TOML key, parser, help.

``tunnel-relay`` builds its options from :data:`RELAY` and :func:`relay_config` turns
a resolution into a :class:`RelayConfig`; defaults are the dataclass's own.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from tunnel_client.protocol.parsers import (
    Choice,
    Duration,
    FilePath,
    Flag,
    Many,
    Number,
    Parser,
    Size,
    Text,
    Whole,
    shown,
)
from tunnel_client.protocol.settings import Resolution, Setting, Table
from tunnel_client.protocol.window import MAX_WINDOW, MIN_WINDOW

from .config import (
    MAX_HEADER_BYTES,
    MAX_HEADER_BYTES_WHY,
    RelayConfig,
    access_log_problem,
    broker_url_problem,
    domain_problem,
    peer_url_problem,
    proxy_problem,
)

__all__ = ["RELAY", "default_lease_key_path", "relay_config"]


def default_lease_key_path(environ: Mapping[str, str]) -> Path:
    """``$XDG_STATE_HOME/sharetunnel/relay-lease-key.pem`` (``~/.local/state`` without it)."""
    if environ.get("XDG_STATE_HOME"):
        state = Path(environ["XDG_STATE_HOME"])
    elif environ.get("HOME"):
        state = Path(environ["HOME"]) / ".local" / "state"
    else:
        state = Path.home() / ".local" / "state"  # no $HOME (env -i): the password database
    return state / "sharetunnel" / "relay-lease-key.pem"


def node_id_problem(node_id: str) -> str | None:
    """Why ``node_id`` cannot name a node (it is an MQTT topic level), or None."""
    if any(c in node_id for c in "/+#") or not node_id.isprintable() or len(node_id) > 128:
        return f"node_id {node_id!r} may not hold /, +, # or control characters"
    return None


class Workers(Parser[int]):
    """A number of processes, or ``auto`` (0) for one per core."""

    metavar = "N|auto"

    def parse(self, raw: object) -> int:
        if isinstance(raw, str) and raw.strip().lower() == "auto":
            return 0
        try:
            return Whole(1, 1024).parse(raw)
        except ValueError:
            raise ValueError(f"{shown(raw)} is not a number of workers (1..1024) or auto") from None

    def format(self, value: int) -> str:
        return "auto" if value == 0 else str(value)


RELAY = Table(
    prefix="RELAY_",
    target=RelayConfig,
    settings=(
        Setting(
            name="host",
            parser=Text(),
            help="Address to listen on (0.0.0.0 for all).",
            example="0.0.0.0",  # noqa: S104
        ),
        Setting(
            name="port",
            parser=Whole(0, 65535),
            help="Port to listen on (0: any free port).",
            example="9090",
        ),
        Setting(
            name="domain",
            parser=Text(check=domain_problem),
            help="Links are <random>.<domain>.",
            example="share.example.com",
        ),
        Setting(
            name="ttl",
            field="ttl_s",
            parser=Duration(),
            help="How long a link lives.",
            example="2h",
        ),
        Setting(
            name="public_scheme",
            parser=Choice("http", "https"),
            help="Scheme visitors use, when a TLS front sits before the relay.",
            unset="what the relay serves",
            example="https",
        ),
        Setting(
            name="public_port",
            parser=Whole(1, 65535),
            help="Port visitors use, when a front sits before the relay.",
            unset="the port the relay listens on",
            example="443",
        ),
        Setting(
            name="response_timeout",
            field="response_timeout_s",
            parser=Duration(),
            help="Time the local server has to start a response (then 504). Streams are never cut.",
            example="5m",
        ),
        Setting(
            name="keepalive",
            field="keepalive_s",
            parser=Duration(),
            help="PING quiet tunnels this often; 3x this with no answer drops one.",
            example="20s",
        ),
        Setting(
            name="reconnect_grace",
            field="reconnect_grace_s",
            parser=Duration(),
            help="How long a dropped client's link answers 503 before it is forgotten.",
            example="1m",
        ),
        Setting(
            name="shutdown_grace",
            field="shutdown_grace_s",
            parser=Duration(),
            help="On SIGTERM, time for in-flight requests to finish.",
            example="30s",
        ),
        Setting(
            name="stream_window",
            parser=Size(MIN_WINDOW, MAX_WINDOW),
            help="Flow-control window per request (memory per request is bounded by it).",
            example="128KiB",
        ),
        Setting(
            name="max_streams",
            parser=Whole(1),
            help="Concurrent requests per link (then 429).",
            example="64",
        ),
        Setting(
            name="max_header_bytes",
            parser=Size(1024, MAX_HEADER_BYTES, why=MAX_HEADER_BYTES_WHY),
            help="Largest request head a visitor may send (then 431); at most 42KiB.",
            example="16KiB",
        ),
        Setting(
            name="max_body_bytes",
            parser=Size(0),
            help="Largest request body a visitor may send (then 413).",
            unset="no limit",
            example="10MiB",
        ),
        Setting(
            name="header_timeout",
            field="header_timeout_s",
            parser=Duration(),
            help="Time a visitor has to send its request headers.",
            example="10s",
        ),
        Setting(
            name="idle_timeout",
            field="idle_timeout_s",
            parser=Duration(),
            help="Close visitor connections idle this long (a live stream is never idle).",
            example="5m",
        ),
        Setting(
            name="rate_per_link",
            parser=Number(0),
            help="Requests per second per link, bursts of 4 s (then 429). 0: unlimited.",
            example="50",
        ),
        Setting(
            name="interstitial",
            parser=Flag(),
            help="Show browsers a warning page on their first visit to each link "
            "(remembered per link in a cookie; API clients and the owner's --bypass-token "
            "pass straight through).",
            example="true",
        ),
        Setting(
            name="tunnels_per_ip",
            parser=Whole(1),
            help="Live links per address.",
            example="5",
        ),
        Setting(
            name="tunnels_per_token",
            parser=Whole(1),
            help="Live links per token.",
            example="10",
        ),
        Setting(
            name="tokens_file",
            parser=FilePath(exists=True),
            help="Require a token (one per line; reloaded on SIGHUP).",
            unset="anyone may create links",
            example="tokens",
        ),
        Setting(
            name="lease_key",
            parser=FilePath(),
            default_from=default_lease_key_path,
            help="Ed25519 key signing leases, created (mode 0600) if missing, so links "
            "survive a relay restart. Default: $XDG_STATE_HOME/sharetunnel/relay-lease-key.pem.",
            example="lease-key.pem",
        ),
        Setting(
            name="tls_cert",
            parser=FilePath(exists=True),
            help="Serve HTTPS/WSS with this certificate chain (PEM).",
            example="cert.pem",
        ),
        Setting(
            name="tls_key",
            parser=FilePath(exists=True),
            help="Private key of --tls-cert (PEM).",
            example="key.pem",
        ),
        Setting(
            name="self_signed",
            parser=Flag(),
            help="Serve HTTPS with a fresh self-signed wildcard certificate (for testing).",
            example="true",
        ),
        Setting(
            name="trusted_proxy",
            field="trusted_proxies",
            parser=Many(Text(check=proxy_problem)),
            help="Address or network of a front whose X-Forwarded-For to believe.",
            metavar="ADDRESS",
            example="10.0.0.0/8",
        ),
        Setting(
            name="ready_file",
            parser=FilePath(),
            help="Write the bound port as JSON here once listening.",
            example="ready.json",
        ),
        Setting(
            name="log_level",
            parser=Choice("debug", "info", "warning", "error"),
            help="Log messages at this level and above (to stderr).",
            example="debug",
        ),
        Setting(
            name="log_format",
            parser=Choice("text", "json"),
            help="json: every log line (and access log line) is one JSON object.",
            example="json",
        ),
        Setting(
            name="access_log",
            parser=Text(check=access_log_problem),
            metavar="FILE",
            help="Log one line per visitor request to this file (- for stdout).",
            unset="no access log",
            example="-",
        ),
        Setting(
            name="admin_host",
            parser=Text(),
            help="Address of the admin listener (metrics, health, the links API).",
            example="::1",
        ),
        Setting(
            name="admin_port",
            parser=Whole(0, 65535),
            help="Serve /metrics, /healthz, /readyz and /api/links on this port "
            "(0: any free port).",
            unset="no admin listener",
            example="9090",
        ),
        Setting(
            name="admin_token_file",
            parser=FilePath(exists=True),
            help="Bearer tokens (one per line) the admin API requires; /metrics, /healthz "
            "and /readyz stay open. Reloaded on SIGHUP. Required off loopback.",
            unset="the API is open to whoever reaches the admin listener",
            example="admin-token",
        ),
        # -- cluster ---------------------------------------------------------------------
        Setting(
            name="cluster",
            parser=Text(check=broker_url_problem),
            help="Join a cluster through this MQTT broker (mqtt://HOST:PORT or mqtts://).",
            unset="a relay on its own",
            metavar="URL",
            example="mqtt://broker:1883",
        ),
        Setting(
            name="cluster_name",
            parser=Text(),
            help="Nodes with the same broker and name form one cluster (MQTT topics "
            "sharetunnel/<name>/...).",
            unset="the domain",
            example="eu-1",
        ),
        Setting(
            name="cluster_secret_file",
            parser=FilePath(exists=True),
            help="Secret shared by every node: signs announcements and the node-to-node "
            "hop. Needed with --cluster.",
            example="cluster-secret",
        ),
        Setting(
            name="cluster_user",
            parser=Text(),
            help="User name at the broker.",
            example="relay",
        ),
        Setting(
            name="cluster_password",
            parser=Text(),
            secret=True,
            help="Password at the broker (better: --cluster-password-file).",
            example="hunter2",
        ),
        Setting(
            name="cluster_password_file",
            parser=FilePath(exists=True),
            help="File holding the password at the broker.",
            example="broker-password",
        ),
        Setting(
            name="cluster_ca_file",
            parser=FilePath(exists=True),
            help="CA certificates to trust for an mqtts:// broker and https:// peer URLs.",
            unset="the system's",
            example="cluster-ca.pem",
        ),
        Setting(
            name="node_id",
            parser=Text(check=node_id_problem),
            help="This node's name in the cluster.",
            unset="<host name>:<port>",
            example="relay-2",
        ),
        Setting(
            name="peer_url",
            parser=Text(check=peer_url_problem),
            help="How other nodes reach this one.",
            unset="http://<host>:<port> of this relay",
            metavar="URL",
            example="http://10.0.0.5:8080",
        ),
        Setting(
            name="workers",
            parser=Workers(),
            help="Relay processes sharing the port, each a node of the cluster (needs "
            "--cluster); auto: one per core.",
            example="2",
        ),
    ),
)
"""The relay's settings, in ``--help`` order."""


def relay_config(resolution: Resolution) -> RelayConfig:
    """The relay's config from resolved settings.

    Raises:
        ConfigError: the values clash (``tls_cert`` without ``tls_key``...).
    """
    return RelayConfig(**resolution.fields())
