"""``tunnel``: share a local port. The only place that sets up logging.

``tunnel 7860`` is short for ``tunnel share 7860``; other subcommands manage the
Gradio integration and show the resolved configuration.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from .config import FILE_KEYS, ClientConfig, default_config_path, read_config_file
from .display import HumanDisplay, JsonDisplay
from .protocol.errors import ConfigError, TunnelError
from .protocol.units import parse_duration, parse_size

__all__ = ["main"]

_F = TypeVar("_F", bound=Callable[..., Any])


class _DefaultToShare(click.Group):
    """A group where ``tunnel 7860`` means ``tunnel share 7860``."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = ["share", *args]
        return super().parse_args(ctx, args)


class Duration(click.ParamType):  # type: ignore[type-arg]
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
    name = "size"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        try:
            return parse_size(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


def _load_config_file(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    path = Path(value) if value else default_config_path()
    try:
        data = read_config_file(path, required=bool(value))
    except ConfigError as exc:
        raise click.BadParameter("; ".join(exc.problems), ctx, param) from None
    ctx.default_map = {**(ctx.default_map or {}), **data}


def _opt(*names: str, **kwargs: Any) -> Callable[[_F], _F]:
    long = next(n for n in names if n.startswith("--"))
    env = "TUNNEL_" + long[2:].replace("-", "_").upper()
    return click.option(*names, envvar=env, show_envvar=True, **kwargs)


@click.group(cls=_DefaultToShare, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Share a local HTTP server through a relay: `tunnel 7860` prints a public link."""


@main.command()
@click.argument("port", type=click.IntRange(1, 65535), metavar="PORT")
@click.option(
    "--config",
    type=click.Path(dir_okay=False),
    callback=_load_config_file,
    is_eager=True,
    expose_value=False,
    envvar="TUNNEL_CONFIG",
    show_envvar=True,
    help=f"Client TOML file (default {default_config_path()}; keys: "
    f"{', '.join(sorted(FILE_KEYS))}).",
)
@_opt(
    "--relay",
    metavar="URL",
    default=None,
    help="Relay base URL (ws://, wss://, http:// or https://). Default: an embedded relay "
    "on this machine (local-only link).",
)
@_opt("--local-host", default="127.0.0.1", show_default=True, help="Host of the local server.")
@_opt("--token", default=None, help="Token the relay requires to create links.")
@_opt(
    "--ca-file",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="Extra CA certificate (PEM) to trust for a wss:// relay.",
)
@_opt(
    "--ttl",
    type=Duration(),
    default=None,
    help="Ask for a shorter link lifetime than the relay's (e.g. 2h).",
)
@_opt(
    "--password",
    is_flag=False,
    flag_value="",
    default=None,
    metavar="[SECRET]",
    help="Ask visitors for a password (user 'share'); without a value one is generated.",
)
@_opt(
    "--basic-auth",
    metavar="USER:PASS",
    default=None,
    help="Ask visitors for this user name and password.",
)
@_opt("--stream-window", type=Size(), default=None, hidden=True)
@_opt(
    "--response-timeout",
    type=Duration(),
    default=None,
    help="(embedded relay) Time the local server has to start answering (then 504).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per line.")
@click.option("--quiet", "-q", is_flag=True, help="Do not print a line per request.")
@click.option(
    "--qr/--no-qr",
    default=None,
    help="Print the link as a QR code too (default: when the output is a terminal).",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="warning",
    envvar="TUNNEL_LOG_LEVEL",
    show_envvar=True,
)
def share(
    port: int,
    as_json: bool,
    quiet: bool,
    qr: bool | None,
    log_level: str,
    password: str | None,
    basic_auth: str | None,
    **options: Any,
) -> None:
    """Share http://LOCAL_HOST:PORT and print its public link."""
    logging.basicConfig(
        level=log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    generated = None
    if password is not None:
        if basic_auth is not None:
            _fail("give --password or --basic-auth, not both", as_json)
        generated = password or secrets.token_urlsafe(9)
        basic_auth = f"share:{generated}"
    ttl = options.pop("ttl")
    window = options.pop("stream_window")
    response_timeout = options.pop("response_timeout")
    try:
        config = ClientConfig(
            port=port,
            visitor_auth=basic_auth,
            ttl_s=ttl,
            response_timeout_s=response_timeout,
            **({"stream_window": window} if window else {}),
            **options,
        )
    except ConfigError as exc:
        _fail("; ".join(exc.problems), as_json)
    display: Any
    if as_json:
        display = JsonDisplay(config.local_label, quiet=quiet)
    else:
        show_qr = sys.stdout.isatty() if qr is None else qr
        display = HumanDisplay(config.local_label, quiet=quiet, qr=show_qr)
    if generated is not None:
        display.login = ("share", generated)
    failure = None
    try:
        asyncio.run(_run(config, display))
    except TunnelError as exc:  # refusals, an unreachable relay: one line, no traceback
        failure = str(exc)
    finally:
        display.close()  # every queued line out before the error line or the exit
    if failure is not None:
        _fail(failure, as_json)


def _fail(message: str, as_json: bool) -> None:
    if as_json:
        import json

        click.echo(json.dumps({"event": "error", "message": message}))
    click.echo(f"tunnel: {message}", err=True)
    sys.exit(1)


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
    await client.run()


@main.command("check-config")
@click.option("--config", type=click.Path(dir_okay=False), default=None, envvar="TUNNEL_CONFIG")
def check_config(config: str | None) -> None:
    """Print the settings the client would use (secrets masked)."""
    import os

    from .config import load_defaults

    environ = dict(os.environ)
    if config:
        environ["TUNNEL_CONFIG"] = config
    try:
        values = load_defaults(environ)
    except ConfigError as exc:
        for problem in exc.problems:
            click.echo(f"tunnel: {problem}", err=True)
        sys.exit(1)
    click.echo(f"config file: {default_config_path(environ)}")
    for key in sorted(FILE_KEYS):
        value = values.get(key)
        if key == "token" and value:
            value = "MASKED"
        click.echo(f"{key} = {value if value is not None else '(default)'}")


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
