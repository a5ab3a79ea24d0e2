"""``tunnel-relay``: serve share links. The only place that sets up logging."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import signal
import ssl
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from tunnel_client.protocol.errors import ConfigError
from tunnel_client.protocol.settings import option_spec, resolve
from tunnel_client.protocol.units import format_duration

from .config import RelayConfig
from .settings import RELAY, relay_config

__all__ = ["main"]

_F = TypeVar("_F", bound=Callable[..., Any])

logger = logging.getLogger("relay_server")


def _setting_options(command: _F) -> _F:
    """One click option per setting of :data:`RELAY`; values reach ``main`` as text."""
    for setting in reversed(RELAY.settings):
        decls, kwargs = option_spec(RELAY, setting)
        command = click.option(*decls, **kwargs)(command)
    return command


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "--config",
    metavar="FILE",
    default=None,
    help=f"TOML file with any of these settings (keys: the option names with _ for -).  "
    f"[env: {RELAY.config_env_var}]",
)
@click.option(
    "--check-config",
    is_flag=True,
    help="Print the settings the relay would use and where each comes from, then exit.",
)
@_setting_options
def main(config: str | None, check_config: bool, **given: Any) -> None:
    """Run a sharetunnel relay: accept tunnel clients and serve their links."""
    try:
        resolution = resolve(RELAY, given, config=config)
        relay = relay_config(resolution)
    except ConfigError as exc:
        for problem in exc.problems:
            click.echo(f"tunnel-relay: {problem}", err=True)
        sys.exit(2)
    if check_config:
        for line in resolution.lines():
            click.echo(line)
        return
    logging.basicConfig(
        level=relay.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    with contextlib.suppress(KeyboardInterrupt), asyncio.Runner(loop_factory=_event_loop) as r:
        r.run(_serve(relay))


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


async def _serve(config: RelayConfig) -> None:
    from .tls import self_signed_context, server_context

    if config.workers != 1:
        from .workers import supervise

        await supervise(config)
        return

    if config.self_signed:
        self_signed, cert_path = self_signed_context(config.domain)
        click.echo(
            f"self-signed certificate for *.{config.domain}: {cert_path} "
            "(clients: --ca-file this file)",
            err=True,
        )
        try:
            await _run(config, self_signed)
        finally:
            # A fresh temporary directory per start: no key material is left behind.
            shutil.rmtree(cert_path.parent, ignore_errors=True)
        return
    ssl_context: ssl.SSLContext | None = None
    if config.tls_cert is not None and config.tls_key is not None:
        try:
            ssl_context = server_context(config.tls_cert, config.tls_key)
        except (OSError, ValueError) as exc:
            raise SystemExit(f"tunnel-relay: cannot load the TLS certificate: {exc}") from None
    await _run(config, ssl_context)


async def _run(config: RelayConfig, ssl_context: ssl.SSLContext | None) -> None:
    from .app import Relay

    try:
        relay = Relay(config, ssl_context=ssl_context)
    except ConfigError as exc:  # the cluster secret or broker password file
        raise SystemExit(f"tunnel-relay: {'; '.join(exc.problems)}") from None
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
