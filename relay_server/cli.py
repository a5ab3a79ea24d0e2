"""``tunnel-relay``: serve share links. The only place that sets up logging."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from tunnel_client.protocol.errors import ConfigError
from tunnel_client.protocol.units import format_duration, parse_duration, parse_size

from .config import RelayConfig

__all__ = ["main"]

_F = TypeVar("_F", bound=Callable[..., Any])

logger = logging.getLogger("relay_server")


class Duration(click.ParamType):  # type: ignore[type-arg]
    """A duration such as 72h, 90m, 5s (stored as seconds)."""

    name = "duration"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        if isinstance(value, int | float):
            return float(value)
        try:
            return parse_duration(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class Size(click.ParamType):  # type: ignore[type-arg]
    """A byte size such as 64KiB or 10MB (stored as bytes)."""

    name = "size"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        try:
            return parse_size(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


_FILE_KEYS = {
    "host",
    "port",
    "domain",
    "ttl",
    "public_scheme",
    "public_port",
    "response_timeout",
    "keepalive",
    "reconnect_grace",
    "shutdown_grace",
    "stream_window",
    "max_streams",
    "max_header_bytes",
    "max_body_bytes",
    "header_timeout",
    "idle_timeout",
    "rate_per_link",
    "tunnels_per_ip",
    "tunnels_per_token",
    "tokens_file",
    "lease_key",
    "tls_cert",
    "tls_key",
    "self_signed",
    "trusted_proxy",
    "ready_file",
    "log_level",
}


def _load_config_file(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    """Load a TOML file into click's default map, so flags and env vars still win."""
    if value is None:
        return
    try:
        data = tomllib.loads(Path(value).read_text())
    except OSError as exc:
        raise click.BadParameter(f"cannot read {value}: {exc.strerror}", ctx, param) from None
    except tomllib.TOMLDecodeError as exc:
        raise click.BadParameter(f"{value} is not valid TOML: {exc}", ctx, param) from None
    unknown = sorted(set(data) - _FILE_KEYS)
    if unknown:
        raise click.BadParameter(
            f"{value}: unknown key(s) {', '.join(unknown)}; known keys are the flag names "
            "with _ for -",
            ctx,
            param,
        )
    ctx.default_map = {**(ctx.default_map or {}), **data}


def _opt(*names: str, **kwargs: Any) -> Callable[[_F], _F]:
    long = next(n for n in names if n.startswith("--"))
    env = "RELAY_" + long[2:].replace("-", "_").upper()
    return click.option(*names, envvar=env, show_envvar=True, show_default=True, **kwargs)


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "--config",
    type=click.Path(dir_okay=False),
    callback=_load_config_file,
    is_eager=True,
    expose_value=False,
    envvar="RELAY_CONFIG",
    show_envvar=True,
    help="TOML file with any of these settings (keys: flag names with _).",
)
@_opt("--host", default="127.0.0.1", help="Address to listen on (0.0.0.0 for all).")
@_opt(
    "--port",
    type=click.IntRange(0, 65535),
    default=8080,
    help="Port to listen on (0: any free port).",
)
@_opt("--domain", default="localhost", help="Links are <random>.<domain>.")
@_opt("--ttl", type=Duration(), default="72h", help="How long a link lives.")
@_opt(
    "--public-scheme",
    type=click.Choice(["http", "https"]),
    default=None,
    help="Scheme visitors use, when a TLS front sits before the relay.",
)
@_opt(
    "--public-port",
    type=click.IntRange(1, 65535),
    default=None,
    help="Port visitors use, when a front sits before the relay.",
)
@_opt(
    "--response-timeout",
    type=Duration(),
    default="10m",
    help="Time the local server has to start a response (then 504). Streams are never cut.",
)
@_opt(
    "--keepalive",
    type=Duration(),
    default="10s",
    help="PING quiet tunnels this often; 3x this with no answer drops one.",
)
@_opt(
    "--reconnect-grace",
    type=Duration(),
    default="10m",
    help="How long a dropped client's link answers 503 before it is forgotten.",
)
@_opt(
    "--shutdown-grace",
    type=Duration(),
    default="10s",
    help="On SIGTERM, time for in-flight requests to finish.",
)
@_opt(
    "--stream-window",
    type=Size(),
    default="256KiB",
    help="Flow-control window per request (memory per request is bounded by it).",
)
@_opt(
    "--max-streams",
    type=click.IntRange(1),
    default=256,
    help="Concurrent requests per link (then 429).",
)
@_opt(
    "--max-header-bytes",
    type=Size(),
    default="32KiB",
    help="Largest request head a visitor may send (then 431).",
)
@_opt(
    "--max-body-bytes",
    type=Size(),
    default=None,
    help="Largest request body a visitor may send (then 413). Default: no limit.",
)
@_opt(
    "--header-timeout",
    type=Duration(),
    default="30s",
    help="Time a visitor has to send its request headers.",
)
@_opt(
    "--idle-timeout",
    type=Duration(),
    default="15m",
    help="Close visitor connections idle this long (a live stream is never idle).",
)
@_opt(
    "--rate-per-link",
    type=click.FloatRange(0),
    default=0.0,
    help="Requests per second per link, bursts of 4 s (then 429). 0: unlimited.",
)
@_opt("--tunnels-per-ip", type=click.IntRange(1), default=20, help="Live links per address.")
@_opt("--tunnels-per-token", type=click.IntRange(1), default=100, help="Live links per token.")
@_opt(
    "--tokens-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Require a token (one per line; reloaded on SIGHUP).",
)
@_opt(
    "--lease-key",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Ed25519 key signing leases, created (mode 0600) if missing, so links survive a "
    "relay restart. Default: $XDG_STATE_HOME/sharetunnel/relay-lease-key.pem.",
)
@_opt(
    "--tls-cert",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Serve HTTPS/WSS with this certificate chain (PEM).",
)
@_opt(
    "--tls-key",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Private key of --tls-cert (PEM).",
)
@_opt(
    "--self-signed",
    is_flag=True,
    default=False,
    help="Serve HTTPS with a fresh self-signed wildcard certificate (for testing).",
)
@_opt(
    "--trusted-proxy",
    multiple=True,
    default=(),
    help="Address or network of a front whose X-Forwarded-For to believe (repeatable).",
)
@_opt(
    "--ready-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the bound port as JSON here once listening.",
)
@_opt("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info")
def main(**options: Any) -> None:
    """Run a sharetunnel relay: accept tunnel clients and serve their links."""
    logging.basicConfig(
        level=options["log_level"].upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    renamed = {
        "ttl": "ttl_s",
        "response_timeout": "response_timeout_s",
        "keepalive": "keepalive_s",
        "reconnect_grace": "reconnect_grace_s",
        "shutdown_grace": "shutdown_grace_s",
        "header_timeout": "header_timeout_s",
        "idle_timeout": "idle_timeout_s",
        "trusted_proxy": "trusted_proxies",
    }
    fields = {renamed.get(k, k): v for k, v in options.items()}
    fields["trusted_proxies"] = tuple(fields["trusted_proxies"])
    if fields["lease_key"] is None:
        fields["lease_key"] = default_lease_key_path()
    try:
        config = RelayConfig(**fields)
    except ConfigError as exc:
        for problem in exc.problems:
            click.echo(f"tunnel-relay: {problem}", err=True)
        sys.exit(2)
    with contextlib.suppress(KeyboardInterrupt), asyncio.Runner(loop_factory=_event_loop) as r:
        r.run(_serve(config))


def _event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's event loop where it is installed, else asyncio's.

    On uvloop the relay spends 5-20% less CPU per request and carries more requests per
    second (``bench/run.py`` against ``bench/run.py --asyncio``). The client stays on
    asyncio's loop: on uvloop its bulk sends to the relay were about 40% slower.
    """
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def default_lease_key_path() -> Path:
    """Where the lease signing key lives unless --lease-key says otherwise."""
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "sharetunnel" / "relay-lease-key.pem"


async def _serve(config: RelayConfig) -> None:
    from .app import Relay
    from .tls import self_signed_context, server_context

    ssl_context = None
    if config.self_signed:
        ssl_context, cert_path = self_signed_context(config.domain)
        click.echo(
            f"self-signed certificate for *.{config.domain}: {cert_path} "
            "(clients: --ca-file this file)",
            err=True,
        )
    elif config.tls_cert is not None and config.tls_key is not None:
        try:
            ssl_context = server_context(config.tls_cert, config.tls_key)
        except (OSError, ValueError) as exc:
            raise SystemExit(f"tunnel-relay: cannot load the TLS certificate: {exc}") from None
    try:
        relay = Relay(config, ssl_context=ssl_context)
    except (OSError, ValueError) as exc:
        raise SystemExit(f"tunnel-relay: cannot load the lease key: {exc}") from None
    try:
        await relay.start()
    except OSError as exc:
        raise SystemExit(
            f"tunnel-relay: cannot listen on {config.host}:{config.port}: {exc.strerror}"
        ) from None
    example = config.link_for("<random>", relay.port)
    click.echo(
        f"tunnel-relay listening on {'https' if ssl_context else 'http'}://{config.host}:"
        f"{relay.port}; links look like {example} and live {format_duration(config.ttl_s)}",
        err=True,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, relay.tokens.reload)
    await stop.wait()
    logger.info("stopping: finishing in-flight requests, then closing tunnels")
    await relay.shutdown()
