"""The client's settings: one frozen dataclass, checked as a whole when built.

The command line and the Python API fill it from the settings table in
:mod:`tunnel_client.settings` (flag or argument, ``TUNNEL_*`` variable, TOML key); the
checks on single values live here as functions that the table uses too.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from .protocol.errors import ConfigError
from .protocol.handshake import bypass_token_problem
from .protocol.mux import DEFAULT_WINDOW
from .protocol.window import MAX_WINDOW, MIN_WINDOW

__all__ = [
    "INSPECT_BODY_LIMIT",
    "INSPECT_PORTS",
    "ClientConfig",
    "InspectAt",
    "LocalTarget",
    "bypass_token_problem",
    "host_header_problem",
    "host_problem",
    "inspect_host_problem",
    "parse_local_target",
    "relay_problem",
    "relay_ws_url",
]

CLIENT_WINDOW = 4 * DEFAULT_WINDOW
"""1 MiB: a bigger window than the relay's, because it is the client's memory, not the
shared relay's, that it commits, and it lifts upload throughput by about a third
(bench/run.py: 100 MiB up 227-284 -> 372 MB/s on loopback)."""


INSPECT_PORTS = tuple(range(4040, 4050))
"""Where the request inspector looks for a free port first (ngrok's is 4040), then any."""

INSPECT_BODY_LIMIT = 64 * 1024
"""The inspector keeps the first 64 KiB of each request and response body."""


@dataclass(frozen=True)
class InspectAt:
    """Where the request inspector listens: a loopback host, and a port or None.

    ``port=None`` takes the first free port of :data:`INSPECT_PORTS`, else any free
    port; ``port=0`` takes any free port at once.
    """

    host: str = "127.0.0.1"
    port: int | None = None

    def __str__(self) -> str:
        if self.port is None and self.host == "127.0.0.1":
            return "auto"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{'auto' if self.port is None else self.port}"


def inspect_host_problem(host: str) -> str | None:
    """Why the inspector may not listen on ``host`` (it serves this machine only), or None."""
    if host.lower() == "localhost":
        return None
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        return f"inspector host {host!r} is not an IP address or localhost"
    if not loopback:
        return (
            f"the inspector shows every request and can replay them: it listens on loopback "
            f"only (127.0.0.1, ::1 or localhost), not {host}"
        )
    return None


def host_problem(host: str) -> str | None:
    """Why ``host`` is not a host name or address, or None."""
    if not host or any(c in host for c in "/ @?#"):
        return f"local host {host!r} is not a host name or address"
    return None


TARGET_FORMS = "PORT, HOST:PORT, [IPV6]:PORT, http://HOST:PORT or https://HOST:PORT"


@dataclass(frozen=True)
class LocalTarget:
    """The local server as the owner named it: ``8000``, ``localhost:8000``, ``https://...``."""

    port: int
    host: str | None = None
    """None when only a port was given: the ``local_host`` setting applies."""
    scheme: str = "http"


def parse_local_target(target: int | str) -> LocalTarget:
    """Read ``8000``, ``localhost:8000``, ``[::1]:8000``, ``http(s)://host[:port]``.

    Raises:
        ValueError: a one-line reason that names the accepted forms.
    """
    if isinstance(target, bool):
        raise ValueError(f"{target!r} is not a local port or address: use {TARGET_FORMS}")
    if isinstance(target, int):
        return LocalTarget(_port(target, str(target)))
    text = target.strip()
    if text.isdigit():
        return LocalTarget(_port(int(text), text))
    scheme, has_scheme, rest = text.partition("://")
    if not has_scheme:
        scheme, rest = "http", text
    scheme = scheme.lower()
    if scheme not in ("http", "https"):
        raise ValueError(
            f"{text!r}: the local server must be spoken to over http:// or https://, "
            f"not {scheme}://"
        )
    parts = urlsplit(f"{scheme}://{rest}")
    host = parts.hostname
    try:
        port = parts.port
    except ValueError:  # not a number, or out of range
        digits = parts.netloc.rpartition(":")[2]
        port = _port(int(digits), text) if digits.isdigit() else -1
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise ValueError(f"{text!r}: give only the scheme, host and port of the local server")
    if port == -1 or not host or (port is None and not has_scheme):
        raise ValueError(f"{text!r} is not a local port or address: use {TARGET_FORMS}")
    if port is None:
        port = 443 if scheme == "https" else 80
    if problem := host_problem(host):
        raise ValueError(f"{text!r}: {problem}")
    return LocalTarget(_port(port, text), host, scheme)


def _port(port: int, text: str) -> int:
    if not 1 <= port <= 65535:
        raise ValueError(f"{text!r}: port {port} is not in 1..65535")
    return port


def host_header_problem(value: str) -> str | None:
    """Why ``value`` cannot be sent as ``Host`` (``rewrite`` aside), or None."""
    if not value or any(c.isspace() or not c.isprintable() for c in value) or "/" in value:
        return f"host header {value!r} is not a host (with an optional :port) or 'rewrite'"
    return None


def relay_problem(relay: str) -> str | None:
    """Why ``relay`` is not a relay URL, or None."""
    try:
        relay_ws_url(relay)
    except ConfigError as exc:
        return "; ".join(exc.problems)
    return None


def relay_ws_url(relay: str) -> str:
    """The WebSocket URL of a relay given as ``ws(s)://`` or ``http(s)://`` base URL.

    Raises:
        ConfigError: for any other scheme, or no host.
    """
    text = relay.strip()
    if "://" not in text:
        text = "wss://" + text  # "share.example.com" means the public relay there
    parts = urlsplit(text)
    schemes = {"ws": "ws", "wss": "wss", "http": "ws", "https": "wss"}
    if parts.scheme.lower() not in schemes:
        raise ConfigError(
            [f"relay URL {relay!r} must start with ws://, wss://, http:// or https://"]
        )
    if not parts.hostname:
        raise ConfigError([f"relay URL {relay!r} has no host"])
    try:
        parts.port  # noqa: B018  (raises on a bad port)
    except ValueError:
        raise ConfigError([f"relay URL {relay!r} has an invalid port"]) from None
    path = parts.path.rstrip("/")
    if not path.endswith("/_tunnel"):
        path += "/_tunnel"
    return urlunsplit((schemes[parts.scheme.lower()], parts.netloc, path, parts.query, ""))


@dataclass(frozen=True, kw_only=True)
class ClientConfig:
    """Everything one tunnel needs; no ``relay`` means an embedded local relay."""

    port: int
    """The local port to share."""
    relay: tuple[str, ...] = ()
    """Relay URLs, tried in order; a client whose relay dies moves to the next one."""
    local_host: str = "127.0.0.1"
    local_scheme: str = "http"
    """``https`` to speak TLS to the local server (``tunnel https://localhost:8443``)."""
    local_insecure: bool = False
    """Accept any certificate from an https local server (a self-signed one, say)."""
    token: str | None = field(default=None, repr=False)
    ca_file: Path | None = None
    """Trust this CA (or self-signed certificate) for a wss:// relay, besides the system's."""
    ttl_s: float | None = None
    """Ask for a shorter link lifetime than the relay's."""
    visitor_auth: str | None = field(default=None, repr=False)
    """``user:password`` visitors must give."""
    bypass_token: str | None = field(default=None, repr=False)
    """Browsers that open the link with ``?st_bypass=<this>`` skip the relay's warning page."""
    stream_window: int = CLIENT_WINDOW
    """Receive window per stream: uploads from visitors flow against it."""
    max_streams: int = 1024
    connect_timeout_s: float = 10.0
    response_timeout_s: float | None = None
    """(embedded relay) time the local server has to start a response."""
    host_header: str | None = None
    """``Host`` for the local server: None passes the visitor's, ``rewrite`` sends the
    local server's address, anything else is sent as is."""
    reconnect_max_delay_s: float = 30.0
    inspect: InspectAt | None = InspectAt()
    """Serve the request inspector there; None: no inspector, the traffic is never seen."""
    inspect_body_limit: int = INSPECT_BODY_LIMIT
    """The inspector keeps the first this many bytes of each body."""

    def __post_init__(self) -> None:
        problems = []
        if not 1 <= self.port <= 65535:
            problems.append(f"port {self.port} is not in 1..65535")
        if isinstance(self.relay, str):  # relay="wss://..." where a tuple belongs
            object.__setattr__(self, "relay", (self.relay,))
        problems.extend(filter(None, map(relay_problem, self.relay)))
        if problem := host_problem(self.local_host):
            problems.append(problem)
        if self.local_scheme not in ("http", "https"):
            problems.append(f"local scheme must be http or https, not {self.local_scheme!r}")
        if self.host_header is not None and (problem := host_header_problem(self.host_header)):
            problems.append(problem)
        if not MIN_WINDOW <= self.stream_window <= MAX_WINDOW:
            problems.append(f"stream window must be in {MIN_WINDOW}..{MAX_WINDOW} bytes")
        if self.ca_file is not None and not self.ca_file.is_file():
            problems.append(f"CA file {self.ca_file} does not exist")
        if self.bypass_token is not None and (problem := bypass_token_problem(self.bypass_token)):
            problems.append(problem)
        if self.visitor_auth is not None and ":" not in self.visitor_auth:
            problems.append("basic auth must be given as user:password")
        if self.ttl_s is not None and self.ttl_s < 1:
            problems.append("ttl must be at least 1 s")
        if self.inspect is not None and (problem := inspect_host_problem(self.inspect.host)):
            problems.append(problem)
        if self.inspect_body_limit < 0:
            problems.append("the inspector's body limit cannot be negative")
        if problems:
            raise ConfigError(problems)

    @property
    def local_url(self) -> str:
        """``http://127.0.0.1:7860``, ``https://localhost:8443``."""
        return f"{self.local_scheme}://{self.local_label}"

    @property
    def local_label(self) -> str:
        """How error messages name the local server: ``127.0.0.1:7860``."""
        host = f"[{self.local_host}]" if ":" in self.local_host else self.local_host
        return f"{host}:{self.port}"
