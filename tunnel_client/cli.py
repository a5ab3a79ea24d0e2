"""``tunnel``: share a local port. The only place that sets up logging.

``tunnel 7860`` is short for ``tunnel share 7860``; other subcommands manage the
Gradio integration and show the resolved configuration.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import json
import logging
import signal
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from .config import ClientConfig, LocalTarget, parse_local_target
from .display import HumanDisplay, JsonDisplay
from .protocol.errors import ConfigError, TunnelError
from .protocol.settings import Origin, Resolved, option_specs, resolve
from .protocol.version import package_version
from .settings import CLIENT, client_config

if TYPE_CHECKING:
    from .client import TunnelClient

__all__ = ["main"]

_F = TypeVar("_F", bound=Callable[..., Any])


class _DefaultToShare(click.Group):
    """A group where ``tunnel 7860`` means ``tunnel share 7860``."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help", "--version"):
            args = ["share", *args]
        return super().parse_args(ctx, args)


class _ShareCommand(click.Command):
    """``share``, whose missing TARGET may have been taken by ``--password`` (whose
    secret is optional): ``tunnel --password 7860`` then says so, not just "missing"."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        given = list(args)  # click's parser consumes the list it gets
        try:
            return super().parse_args(ctx, args)
        except click.MissingParameter as exc:
            taken = _port_taken_as_secret(given)
            if exc.param is None or exc.param.name != "target" or taken is None:
                raise
            raise click.UsageError(
                f"Missing TARGET: --password took {taken!r} as its secret. Put the port "
                f"first (tunnel {taken} --password) or give a secret (--password SECRET "
                f"{taken}).",
                ctx,
            ) from None


def _port_taken_as_secret(args: list[str]) -> str | None:
    """The port-like value that follows ``--password`` in ``args``, if one does."""
    for flag, value in itertools.pairwise(args):
        if flag == "--password" and value.isdigit():
            return value
    return None


def _options(command: _F) -> _F:
    """The options of ``share`` and ``check-config``: ``--config``, settings, output."""
    options = [
        click.option(
            "--config",
            metavar="FILE",
            default=None,
            help="Client TOML file (default: $XDG_CONFIG_HOME/sharetunnel/client.toml); its "
            f"keys are the setting names.  [env: {CLIENT.config_env_var}]",
        ),
        *(
            click.option(*decls, **kwargs)
            for setting in CLIENT
            for decls, kwargs in option_specs(CLIENT, setting)
        ),
        click.option("--json", "as_json", is_flag=True, help="Print one JSON object per line."),
        click.option("--quiet", "-q", is_flag=True, help="Do not print a line per request."),
        click.option(
            "--qr/--no-qr",
            default=None,
            help="Print the link as a QR code too (default: when the output is a terminal).",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _show_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        click.echo(f"tunnel {package_version()}")
        ctx.exit()


@click.group(cls=_DefaultToShare, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_show_version,
    help="Print the version and exit.",
)
def main() -> None:
    """Share a local HTTP server through a relay: `tunnel 7860` prints a public link."""


@main.command(cls=_ShareCommand)
@click.argument("target", metavar="TARGET")
@_options
def share(
    target: str, config: str | None, as_json: bool, quiet: bool, qr: bool | None, **given: Any
) -> None:
    """Share the local server at TARGET and print its public link.

    TARGET is a port (8000: http://LOCAL_HOST:8000), HOST:PORT, [IPV6]:PORT,
    http://HOST:PORT or https://HOST:PORT.
    """
    local = _local_target(target, as_json)
    try:
        resolution = resolve(CLIENT, given, config=config)
        client, generated = client_config(resolution, local)
    except ConfigError as exc:
        _fail(exc.problems, as_json)
    _setup_logging(resolution.values["log_level"], as_json)
    display: Any
    if as_json:
        display = JsonDisplay(client.local_url, quiet=quiet)
    else:
        show_qr = sys.stdout.isatty() if qr is None else qr
        display = HumanDisplay(client.local_url, quiet=quiet, qr=show_qr, qr_asked=qr is True)
    if generated is not None:
        display.login = ("share", generated)
    display.protected = client.visitor_auth is not None
    failure = None
    try:
        with asyncio.Runner(loop_factory=event_loop) as runner:
            runner.run(_run(client, display))
    except TunnelError as exc:  # refusals, an unreachable relay: one line, no traceback
        failure = str(exc)
    finally:
        display.close()  # every queued line out before the error line or the exit
    if failure is not None:
        _fail([failure], as_json)


def _local_target(target: str, as_json: bool) -> LocalTarget:
    """TARGET read, or exit 2 (a usage error, as click's own) with one line saying why."""
    try:
        return parse_local_target(target)
    except ValueError as exc:
        _fail([f"TARGET {exc}"], as_json, code=2)


def _setup_logging(level: Resolved, as_json: bool) -> None:
    """Log lines to stderr; a terminal display gets none but errors unless asked.

    Warnings such as a missed keepalive come with an event the display already shows
    in words (``reconnecting...``), so time-stamped log lines would only repeat them.
    """
    if as_json or level.source.origin is not Origin.DEFAULT:
        logging.basicConfig(
            level=level.value.upper(),
            stream=sys.stderr,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
    else:
        logging.basicConfig(level="ERROR", stream=sys.stderr, format="tunnel: %(message)s")


def event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's event loop where it is installed, else asyncio's (see README, Performance)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def _fail(problems: list[str], as_json: bool, code: int = 1) -> NoReturn:
    if as_json:
        click.echo(json.dumps({"event": "error", "message": "; ".join(problems)}))
    for problem in problems:
        click.echo(f"tunnel: {problem}", err=True)
    sys.exit(code)


# Objects a request allocates and frees again (64 requests in flight hold ~1,300) crossed
# the collector's default trigger of 700 over and over: 1,130 young-generation passes over
# 94,000 requests (0.42 s) at 64 connections; at this threshold, none over 71,000.
_YOUNG_COLLECTION_THRESHOLD = 10_000


def _settle_collector() -> None:
    """Tune the cyclic garbage collector once the link is up (the CLI's own process only:
    a library user's process keeps its settings). Everything allocated so far lives as
    long as the process: frozen, full passes no longer walk it (23 ms each, ~2 µs a
    request at 64 connections). Requests leave no reference cycles, so collecting the
    young generation less often keeps no garbage longer."""
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(_YOUNG_COLLECTION_THRESHOLD, middle, old)


async def _settle_collector_when_ready(client: TunnelClient) -> None:
    """Once, after the link first came up (not per event: the display's callback runs
    for every request)."""
    with contextlib.suppress(Exception):  # no link at all: run() says why
        await client.wait_ready()
        _settle_collector()


async def _run(config: ClientConfig, display: Any) -> None:
    from .client import TunnelClient

    client = TunnelClient(config, on_event=display)
    loop = asyncio.get_running_loop()
    interrupts = 0

    def on_signal() -> None:
        nonlocal interrupts
        interrupts += 1
        if interrupts > 1:
            raise SystemExit(130)  # a second Ctrl-C: do not wait for a clean close
        client.stop()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    settling = loop.create_task(_settle_collector_when_ready(client))
    try:
        await client.run()
    finally:
        settling.cancel()


@main.command("check-config")
@click.argument("target", metavar="[TARGET]", required=False)
@_options
def check_config(
    target: str | None,
    config: str | None,
    as_json: bool,
    quiet: bool,
    qr: bool | None,
    **given: Any,
) -> None:
    """Print what `tunnel share` would use and where each value comes from (secrets masked)."""
    local = None if target is None else _local_target(target, as_json)
    try:
        resolution = resolve(CLIENT, given, config=config)
        # Checked as a whole like share does; without a TARGET any valid port stands in.
        client, _ = client_config(resolution, local or LocalTarget(1))
    except ConfigError as exc:
        _fail(exc.problems, as_json)
    port = None if local is None else local.port
    if local is None:
        port_line = "port = none (not given)"
    elif target is not None and target.strip().isdigit():
        port_line = f"port = {port}  (argument PORT)"
    else:  # the host in TARGET wins over local_host
        port_line = f"target = {client.local_url}  (argument TARGET)"
    if as_json:
        rows = {name: {"value": shown, "source": src} for name, shown, src in resolution.rows()}
        file = resolution.file
        report = {
            "event": "config",
            "config_file": None if file.path is None else str(file.path),
            "config_file_source": str(file.source),
            "config_file_found": file.found,
            "port": port,
            "target": None if local is None else client.local_url,
            "settings": rows,
        }
        click.echo(json.dumps(report))
        return
    lines = resolution.lines()
    for line in [lines[0], port_line, *lines[1:]]:
        click.echo(line)


@main.group()
def gradio() -> None:
    """Make stock Gradio's share=True use sharetunnel (no code change in the app)."""


@gradio.command("install")
@click.option("--force", is_flag=True, help="Replace a real frpc binary (kept as .orig).")
def gradio_install(force: bool) -> None:
    """Put a small program at Gradio's frpc path that runs this client.

    The path follows HF_HOME (or XDG_CACHE_HOME) as Gradio computes it, so run this
    with the same environment as the app. At share time the program reads
    TUNNEL_RELAY / TUNNEL_TOKEN / the config file.
    """
    from . import frpc_shim

    try:
        path = frpc_shim.install(force=force)
    except FileExistsError as exc:
        click.echo(f"tunnel: {exc}; pass --force to replace it", err=True)
        sys.exit(1)
    except OSError as exc:
        click.echo(f"tunnel: cannot install the Gradio shim: {exc}", err=True)
        sys.exit(1)
    click.echo(f"installed {path}")
    click.echo(
        "Gradio's share=True now runs sharetunnel. Set TUNNEL_RELAY (and TUNNEL_TOKEN), and "
        "GRADIO_SHARE_SERVER_ADDRESS=<relay host:port> so Gradio skips its own server lookup."
    )


@gradio.command("uninstall")
def gradio_uninstall() -> None:
    """Remove the program `tunnel gradio install` wrote (never a real frpc)."""
    from . import frpc_shim

    try:
        path = frpc_shim.uninstall()
    except FileExistsError as exc:
        click.echo(f"tunnel: {exc}", err=True)
        sys.exit(1)
    except OSError as exc:
        click.echo(f"tunnel: cannot remove the Gradio shim: {exc}", err=True)
        sys.exit(1)
    click.echo(f"removed {path}" if path else f"nothing to remove at {frpc_shim.frpc_path()}")
