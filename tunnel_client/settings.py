"""Every client setting, once: option, ``TUNNEL_*`` variable, TOML key, parser, help.

``tunnel share``, ``tunnel check-config``, the Python API and the Gradio paths all
resolve :data:`CLIENT` and build their :class:`ClientConfig` with :func:`client_config`.
The config file is ``$TUNNEL_CONFIG``, else ``$XDG_CONFIG_HOME/sharetunnel/client.toml``.
Output options (``--json``, ``--quiet``, ``--qr``) shape one run's printing and are
not settings.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping
from pathlib import Path

from .config import (
    ClientConfig,
    InspectAt,
    LocalTarget,
    bypass_token_problem,
    host_header_problem,
    host_problem,
    inspect_host_problem,
    parse_local_target,
    relay_problem,
)
from .protocol.errors import ConfigError
from .protocol.parsers import Choice, Duration, FilePath, Flag, Many, Parser, Size, Text, shown
from .protocol.settings import Origin, Resolution, Setting, Table
from .protocol.window import MAX_WINDOW, MIN_WINDOW

__all__ = ["CLIENT", "client_config", "default_config_path"]


def default_config_path(environ: Mapping[str, str]) -> Path | None:
    """``$XDG_CONFIG_HOME/sharetunnel/client.toml`` (``~/.config`` without it)."""
    if environ.get("XDG_CONFIG_HOME"):
        base = Path(environ["XDG_CONFIG_HOME"])
    elif environ.get("HOME"):
        base = Path(environ["HOME"]) / ".config"
    else:
        return None  # no home given (build_config(use_environment=False)): no file
    return base / "sharetunnel" / "client.toml"


class InspectAddress(Parser[InspectAt | None]):
    """Where the inspector listens: ``auto``, a port, ``host:port``, or ``off``.

    ``true``/``on`` mean ``auto`` and ``false``/``off`` no inspector, so that a TOML
    file can say ``inspect = false``; a bare number is a port (``0``: any free port).
    """

    metavar = "ADDR"
    _ON = frozenset({"auto", "on", "true", "yes"})
    _OFF = frozenset({"off", "false", "no", "none"})
    _ADDRESS = re.compile(r"(?:\[(?P<v6>[^\]]+)\]|(?P<host>[^:\[\]]+)):(?P<port>\d+|auto)")

    def parse(self, raw: object) -> InspectAt | None:
        if isinstance(raw, bool):
            return InspectAt() if raw else None
        if isinstance(raw, int):
            return InspectAt(port=self._port(raw, raw))
        if not isinstance(raw, str):
            raise ValueError(f"{shown(raw)} is not an address: use e.g. 4040 or 127.0.0.1:4040")
        text = raw.strip()
        if text.lower() in self._ON:
            return InspectAt()
        if text.lower() in self._OFF:
            return None
        if text.isdigit():
            return InspectAt(port=self._port(int(text), raw))
        match = self._ADDRESS.fullmatch(text)
        if match is None:
            raise ValueError(
                f"{shown(raw)} is not an address: use a port (4040), host:port "
                "(127.0.0.1:4040), auto or off"
            )
        host = match["v6"] or match["host"]
        if problem := inspect_host_problem(host):
            raise ValueError(problem)
        port = None if match["port"] == "auto" else self._port(int(match["port"]), raw)
        return InspectAt(host, port)

    @staticmethod
    def _port(port: int, raw: object) -> int:
        if not 0 <= port <= 65535:
            raise ValueError(f"{shown(raw)}: port {port} is not in 0..65535")
        return port

    def format(self, value: InspectAt | None) -> str:
        return "off" if value is None else str(value)


def _auth_problem(auth: str) -> str | None:
    return None if ":" in auth else "basic auth must be given as user:password"


CLIENT = Table(
    prefix="TUNNEL_",
    target=ClientConfig,
    default_file=default_config_path,
    settings=(
        Setting(
            name="relay",
            parser=Many(Text(check=relay_problem)),
            metavar="URL",
            help="Relay base URL (ws://, wss://, http:// or https://); several (repeat it, or "
            "a comma-separated list) to fail over between relays. Default: an embedded relay "
            "on this machine (local-only link).",
            unset="an embedded relay: the link works on this machine only",
            example="wss://share.example.com",
        ),
        Setting(
            name="local_host",
            parser=Text(check=host_problem),
            help="Host of the local server, when TARGET is only a port.",
            example="::1",
        ),
        Setting(
            name="local_insecure",
            parser=Flag(),
            help="Accept any certificate from an https:// local server (a self-signed one).",
            example="true",
        ),
        Setting(
            name="host_header",
            parser=Text(check=host_header_problem),
            metavar="rewrite|HOST",
            help="Host header the local server gets: 'rewrite' sends its own address "
            "(for apps that check Host: Jupyter, Django's ALLOWED_HOSTS, Vite), else this "
            "value. X-Forwarded-Host keeps the public name.",
            unset="the visitor's",
            example="rewrite",
        ),
        Setting(
            name="token",
            parser=Text(),
            secret=True,
            help="Token the relay requires to create links.",
            example="alpha-token",
        ),
        Setting(
            name="ca_file",
            parser=FilePath(exists=True),
            help="Extra CA certificate (PEM) to trust for a wss:// relay.",
            example="ca.pem",
        ),
        Setting(
            name="ttl",
            field="ttl_s",
            parser=Duration(low_s=1),
            help="Ask for a shorter link lifetime than the relay's (e.g. 2h).",
            unset="the relay's",
            example="2h",
        ),
        Setting(
            name="bypass_token",
            parser=Text(check=bypass_token_problem),
            secret=True,
            help="On a relay that shows browsers a warning page first (--interstitial), "
            "<link>?st_bypass=TOKEN skips it (printed when the link is ready).",
            example="team-demo-2026",
        ),
        Setting(
            name="password",
            field=None,
            parser=Text(),
            secret=True,
            bare="",
            bare_means="generated when the tunnel starts",
            metavar="[SECRET]",
            help="Ask visitors for a password (user 'share'); without a value one is generated.",
            example="hunter2",
        ),
        Setting(
            name="basic_auth",
            field=None,
            parser=Text(check=_auth_problem),
            secret=True,
            metavar="USER:PASS",
            help="Ask visitors for this user name and password.",
            example="ann:hunter2",
        ),
        Setting(
            name="stream_window",
            parser=Size(MIN_WINDOW, MAX_WINDOW),
            help="Receive window per stream: uploads from visitors flow against it.",
            example="512KiB",
        ),
        Setting(
            name="response_timeout",
            field="response_timeout_s",
            parser=Duration(),
            help="(embedded relay) Time the local server has to start answering (then 504).",
            unset="the embedded relay's, 10m",
            example="30s",
        ),
        Setting(
            name="inspect",
            parser=InspectAddress(),
            off="off",
            help="Serve the request inspector (list, bodies, replay) on this loopback "
            "address: a port or host:port; auto takes 4040, else the next free port.",
            unset="off: no inspector",
            example="127.0.0.1:4141",
        ),
        Setting(
            name="inspect_body_limit",
            parser=Size(0, 16 << 20, why="the inspector keeps bodies in memory"),
            help="The inspector keeps the first this many bytes of each request and response body.",
            example="1MiB",
        ),
        Setting(
            name="log_level",
            field=None,
            parser=Choice("debug", "info", "warning", "error"),
            default="warning",
            help="Log messages at this level and above (to stderr). Unset, the terminal "
            "display shows only errors, as sentences; --json gets warnings too.",
            example="debug",
        ),
    ),
)
"""The client's settings, in ``--help`` order."""

_STRENGTH = list(Origin)


def client_config(
    resolution: Resolution, target: int | str | LocalTarget
) -> tuple[ClientConfig, str | None]:
    """The client's config for ``target``, and the visitor password generated for it.

    ``target`` is a port or a local address as :func:`~.config.parse_local_target`
    reads it; a host in it wins over the ``local_host`` setting.

    Raises:
        ConfigError: every problem with the values taken together.
    """
    if not isinstance(target, LocalTarget):
        try:
            target = parse_local_target(target)
        except ValueError as exc:
            raise ConfigError([str(exc)]) from None
    visitor_auth, generated = _visitor_auth(resolution)
    fields = resolution.fields()
    if target.host is not None:
        fields["local_host"] = target.host
    config = ClientConfig(
        port=target.port, local_scheme=target.scheme, visitor_auth=visitor_auth, **fields
    )
    return config, generated


def _visitor_auth(resolution: Resolution) -> tuple[str | None, str | None]:
    """``user:password`` from ``password`` or ``basic_auth``, and a generated password.

    Both fill ``visitor_auth``: the one from the stronger source wins (``--basic-auth``
    over ``TUNNEL_PASSWORD``); two from the same kind of source clash.
    """
    given = [resolution.values[n] for n in ("password", "basic_auth")]
    given = [r for r in given if r.value is not None]
    if len(given) == 2:
        password, basic_auth = given
        if password.source.origin is basic_auth.source.origin:
            raise ConfigError(
                [
                    f"password ({password.source}) and basic_auth ({basic_auth.source}) "
                    "exclude each other: give one"
                ]
            )
        given.sort(key=lambda r: _STRENGTH.index(r.source.origin))
    if not given:
        return None, None
    if given[0].setting.name == "basic_auth":
        return given[0].value, None
    if given[0].value:
        return f"share:{given[0].value}", None
    generated = secrets.token_urlsafe(9)  # "" is --password given alone
    return f"share:{generated}", generated
