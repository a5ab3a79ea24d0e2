"""``tunnel-relay``: serve share links. The only place that sets up logging."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import logging.handlers
import shutil
import signal
import ssl
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from tunnel_client.protocol.errors import ConfigError
from tunnel_client.protocol.settings import option_spec, resolve
from tunnel_client.protocol.units import format_duration
from tunnel_client.protocol.version import package_version

from .config import RelayConfig
from .logs import formatter
from .observe import ACCESS_LOGGER
from .settings import RELAY, relay_config

__all__ = ["main"]

_F = TypeVar("_F", bound=Callable[..., Any])

logger = logging.getLogger("relay_server")

_YOUNG_COLLECTION_THRESHOLD = 10_000
"""Allocations (less frees) between two passes of the collector over young objects."""


def _setting_options(command: _F) -> _F:
    """One click option per setting of :data:`RELAY`; values reach ``main`` as text."""
    for setting in reversed(RELAY.settings):
        decls, kwargs = option_spec(RELAY, setting)
        command = click.option(*decls, **kwargs)(command)
    return command


def _show_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        click.echo(f"tunnel-relay {package_version()}")
        ctx.exit()


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_show_version,
    help="Print the version and exit.",
)
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
    try:
        _setup_logging(relay)
    except OSError as exc:
        click.echo(f"tunnel-relay: cannot open the access log {relay.access_log}: {exc}", err=True)
        sys.exit(2)
    try:
        with contextlib.suppress(KeyboardInterrupt), asyncio.Runner(loop_factory=_event_loop) as r:
            r.run(_serve(relay))
    except SystemExit as exc:
        if relay.log_format == "json" and isinstance(exc.code, str):
            # Even a fatal start error is one JSON line when every line must be one.
            logger.error(exc.code.removeprefix("tunnel-relay: "))
            raise SystemExit(1) from None
        raise


def _setup_logging(config: RelayConfig) -> None:
    """stderr for the relay's own lines; the access log to its own handler, if asked."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(config.log_format))
    logging.basicConfig(level=config.log_level.upper(), handlers=[handler])
    if config.log_format == "json":
        logging.captureWarnings(True)  # a warning would otherwise be a bare text line
    if config.access_log is not None:
        target = config.access_log
        access: logging.Handler
        if target == "-":
            access = logging.StreamHandler(sys.stdout)
        else:
            # WatchedFileHandler reopens the file after logrotate moved it.
            access = logging.handlers.WatchedFileHandler(target, encoding="utf-8")
        access.setFormatter(formatter(config.log_format))
        access_logger = logging.getLogger(ACCESS_LOGGER)
        access_logger.addHandler(access)
        access_logger.setLevel(logging.INFO)  # whatever --log-level says
        access_logger.propagate = False


def _say(config: RelayConfig, message: str) -> None:
    """A line for the operator: plain on stderr, or a log record in JSON mode."""
    if config.log_format == "json":
        logger.info(message)
    else:
        click.echo(message, err=True)


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
    from .tls import load_or_create_self_signed, server_context

    ssl_context: ssl.SSLContext | None = None
    if config.workers != 1:
        from .workers import supervise

        await supervise(config)
        return

    if config.self_signed:
        # Kept beside the lease key, so that clients and browsers that trust it once
        # keep trusting it across restarts; with no key file, a directory gone at exit.
        temporary = config.lease_key is None
        directory = (
            Path(tempfile.mkdtemp(prefix="sharetunnel-tls-"))
            if config.lease_key is None
            else config.lease_key.parent
        )
        try:
            try:
                cert, key, made = load_or_create_self_signed(config.domain, directory)
                ssl_context = server_context(cert, key, config.domain)
            except (OSError, ValueError) as exc:
                raise SystemExit(
                    f"tunnel-relay: cannot make the self-signed certificate in {directory}: {exc}"
                ) from None
            _say(
                config,
                f"self-signed certificate for *.{config.domain}: {cert} "
                f"({'made now' if made else 'reused'}; clients: --ca-file this file)",
            )
            await _run(config, ssl_context, cert)
        finally:
            if temporary:
                shutil.rmtree(directory, ignore_errors=True)
        return
    if config.tls_cert is not None and config.tls_key is not None:
        try:
            # A certificate that is its own CA (the workers' shared --self-signed one)
            # issues per-link certificates where a wildcard cannot serve (see tls).
            ssl_context = server_context(config.tls_cert, config.tls_key, config.domain)
        except (OSError, ValueError) as exc:
            raise SystemExit(f"tunnel-relay: cannot load the TLS certificate: {exc}") from None
    await _run(config, ssl_context)


async def _run(
    config: RelayConfig, ssl_context: ssl.SSLContext | None, ca_file: Path | None = None
) -> None:
    from .app import ListenError, Relay

    try:
        relay = Relay(config, ssl_context=ssl_context)
    except ConfigError as exc:  # the lease key, token files, cluster secret, broker password
        raise SystemExit(f"tunnel-relay: {'; '.join(exc.problems)}") from None
    except (OSError, ValueError) as exc:
        raise SystemExit(f"tunnel-relay: cannot start: {exc}") from None
    # Handlers first: a stop signal that comes the moment the relay is up (a supervisor
    # that saw the ready file) must find them, or it would kill the relay mid-start.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, relay.reload)
    try:
        await relay.start()
    except ListenError as exc:
        raise SystemExit(f"tunnel-relay: cannot listen on {exc.where}: {exc.strerror}") from None
    # Everything allocated so far lives as long as the relay: keep the collector from
    # walking it again and again (its full passes took about 5% of a busy relay's time).
    gc.freeze()
    # Requests leave no reference cycles, but the objects of those in flight crossed the
    # default trigger of 700 allocations over and over (a young-generation pass every ~90
    # requests at 64 connections): collect the young generation less often.
    _, middle, old = gc.get_threshold()
    gc.set_threshold(_YOUNG_COLLECTION_THRESHOLD, middle, old)
    example = config.link_for("<random>", relay.port)
    _say(
        config,
        f"tunnel-relay listening on {'https' if ssl_context else 'http'}://{config.host}:"
        f"{relay.port}; links look like {example} and live {format_duration(config.ttl_s)}",
    )
    trust = f" --ca-file {ca_file}" if ca_file is not None else ""
    _say(config, f"clients: tunnel PORT --relay {config.relay_url(relay.port)}{trust}")
    if config.ready_file is not None:
        relay.write_ready_file(config.ready_file)  # last: what it announces is all true
    await stop.wait()
    logger.info("stopping: finishing in-flight requests, then closing tunnels")
    await relay.shutdown()
