"""``launch(share=True)`` in Gradio through our relay: call :func:`install` once.

    >>> import tunnel_client.gradio
    >>> tunnel_client.gradio.install()          # relay/token: TUNNEL_* or the config file
    >>> demo.launch(share=True)                 # prints a sharetunnel link

Gradio makes its share link by calling ``gradio.networking.setup_tunnel(...)``, looked
up on the module at call time, from the thread that runs ``launch()``; it prints the
URL it gets back. :func:`install` swaps that function for one that runs a
:class:`~tunnel_client.api.Share` (a background thread) and blocks until the relay gave
the link, so no frpc binary is downloaded or run. Three smaller patches make the result
right, all undone by :func:`uninstall`:

- ``Blocks.launch`` is wrapped only to tell our ``setup_tunnel`` which app is launching:
  Gradio overwrites the returned URL's scheme with ``share_server_protocol`` (``https``
  unless a ``share_server_address`` was passed), so we set that attribute to our link's
  own scheme. An ``http://<sub>.localhost`` link of a loopback relay stays http and an
  https relay's link stays https.
- The share page: for share links Gradio renders ``frontend/share.html``, which differs
  from ``frontend/index.html`` in one line, a ``<script>`` loading the whole frontend
  from Gradio's CDN instead of ``./assets/``. Offline or on a network that blocks that
  CDN the page stays blank, and a version with no CDN build cannot render at all. We
  render ``index.html`` for it instead (in this process only; nothing else differs): the
  assets then come from the app through the relay like every other request. The relay
  itself never rewrites response bodies. ``install(local_assets=False)`` keeps Gradio's
  CDN page (fewer bytes through the tunnel on the first visit).
- Gradio prints its own expiry after the link ("This share link is temporary and will
  last for up to 1 week..."), which is wrong for ours: ``print`` in ``gradio.blocks`` is
  shadowed (a module global wins over the builtin) by one that drops that message and
  passes everything else on, so the one expiry line is ours.
- Failures: Gradio swallows any exception from ``setup_tunnel`` and prints a misleading
  "Missing file: ...frpc..." text, except for ``ShareCertificateWriteError``, whose
  message it prints as ``Could not create share link. <message>``. We raise a subclass
  of it with the real reason; the app then runs locally, as with any failed share.

Each link is registered in ``gradio.tunneling.CURRENT_TUNNELS``, whose ``.kill()`` Gradio
calls on Ctrl-C, and closed at interpreter exit. Like Gradio's own tunnels, a link
outlives ``demo.close()`` (a relaunch of the same app reuses its ``share_url``).
"""

from __future__ import annotations

import atexit
import contextvars
import datetime
import functools
import importlib
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .api import Share, build_config
from .client import ClientEvent, Expired, Link, Reconnected, Reconnecting
from .connection import RelayRefused
from .protocol.errors import ConfigError
from .protocol.units import format_duration

__all__ = [
    "GradioTunnel",
    "install",
    "installed",
    "live_tunnels",
    "reachable_host",
    "share_link_error",
    "uninstall",
]

_launching: contextvars.ContextVar[Any] = contextvars.ContextVar("sharetunnel_launching")
"""The Blocks whose ``launch()`` is running in this context (set by our launch wrapper)."""


class _Installation:
    """What :func:`install` changed, to undo it, plus the options it was given."""

    def __init__(self, options: dict[str, Any]) -> None:
        self.options = options
        self.setup_tunnel: Callable[..., str] | None = None
        self.launch: Callable[..., Any] | None = None
        self.templates: Any = None
        self.blocks: Any = None
        """``gradio.blocks``, whose ``print`` we shadow."""


_installed: _Installation | None = None
_lock = threading.Lock()
_live: list[GradioTunnel] = []
_atexit_registered = False


@functools.cache
def share_link_error() -> type[Exception]:
    """The exception our ``setup_tunnel`` raises: Gradio prints its message verbatim."""
    base = _gradio("exceptions").ShareCertificateWriteError
    doc = "sharetunnel could not make the share link; the message says why."
    error: type[Exception] = type("ShareLinkError", (base,), {"__doc__": doc})
    return error


def _gradio(module: str) -> Any:
    """A gradio submodule, imported on first use (typed Any: Gradio is optional)."""
    return importlib.import_module(f"gradio.{module}")


class GradioTunnel:
    """One share link made for Gradio; Gradio calls :meth:`kill` on Ctrl-C."""

    def __init__(self, share: Share, local_host: str, local_port: int) -> None:
        self.share = share
        self.url = share.url.rstrip("/")
        self.local_host = local_host
        self.local_port = local_port

    @property
    def alive(self) -> bool:
        return self.share.alive

    def kill(self) -> None:
        """Free the link (idempotent)."""
        if self.share.alive:
            print(f"Closing share link {self.url} -> {self.local_host}:{self.local_port}")
            self.share.close()
        with _lock:
            if self in _live:
                _live.remove(self)

    def __repr__(self) -> str:
        return f"<GradioTunnel {self.url} -> {self.local_host}:{self.local_port}>"


def _close_all() -> None:
    for tunnel in list(_live):
        tunnel.kill()


def _when(link: Link) -> str:
    when = datetime.datetime.fromtimestamp(link.expires_at, datetime.UTC)
    left = link.expires_at - datetime.datetime.now(datetime.UTC).timestamp()
    return f"{when:%Y-%m-%d %H:%M:%S} UTC (in {format_duration(max(left, 0))})"


def _on_event(event: ClientEvent) -> None:
    # Gradio's own output goes to stdout; what goes wrong later goes to stderr.
    match event:
        case Reconnecting(reason=reason, delay_s=delay):
            print(
                f"sharetunnel: connection to the relay lost ({reason}); "
                f"reconnecting in {delay:.1f} s",
                file=sys.stderr,
            )
        case Reconnected(link=link):
            print(f"sharetunnel: reconnected, {link.url} is back", file=sys.stderr)
        case Expired(link=link):
            print(
                f"sharetunnel: the share link {link.url} expired; restart the app for a new one",
                file=sys.stderr,
            )
        case _:
            pass


def reachable_host(host: str | None) -> str:
    """Where to reach the app: Gradio passes its bind address, which may be a wildcard."""
    host = (host or "127.0.0.1").strip("[]")
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)  # noqa: S104


def _setup_tunnel(
    local_host: str,
    local_port: int,
    share_token: str | None = None,
    share_server_address: str | None = None,
    share_server_tls_certificate: str | None = None,
    **_: Any,
) -> str:
    """Our ``gradio.networking.setup_tunnel``: a sharetunnel link for the app's port.

    ``share_token``, ``share_server_address`` and ``share_server_tls_certificate`` are
    for Gradio's frp server and are ignored: the relay comes from :func:`install`.
    """
    installation = _installed
    options = dict(installation.options) if installation is not None else {}
    error = share_link_error()
    host = reachable_host(local_host)
    try:
        config = build_config(int(local_port), local_host=host, **options)
    except ConfigError as exc:
        raise error("sharetunnel: " + "; ".join(exc.problems)) from None
    try:
        share = Share(config, on_event=_on_event).start()
    except RelayRefused as exc:
        relays = ", ".join(config.relay)
        raise error(f"sharetunnel: the relay at {relays} refused the link: {exc}") from None
    except Exception as exc:  # whatever it is, Gradio must print it and go on locally
        raise error(f"sharetunnel: {str(exc) or type(exc).__name__}") from None
    tunnel = GradioTunnel(share, host, int(local_port))
    _register(tunnel)
    scheme = urlsplit(tunnel.url).scheme
    blocks = _launching.get(None)
    if blocks is not None:
        # Gradio rebuilds the URL with this scheme right after we return.
        blocks.share_server_protocol = scheme
    print(f"* Share link by sharetunnel; it expires {_when(share.link)}")
    if share.link.local_only:
        print(
            "* This link works on this machine only (embedded relay). For a public link, "
            "set TUNNEL_RELAY or pass relay= to tunnel_client.gradio.install()."
        )
    return tunnel.url


def _register(tunnel: GradioTunnel) -> None:
    global _atexit_registered

    with _lock:
        _live.append(tunnel)
        if not _atexit_registered:
            atexit.register(_close_all)
            _atexit_registered = True
    # Gradio calls .kill() on every entry when Ctrl-C stops launch()'s block_thread().
    _gradio("tunneling").CURRENT_TUNNELS.append(tunnel)


def _wrap_launch(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def launch(self: Any, *args: Any, **kwargs: Any) -> Any:
        token = _launching.set(self)
        try:
            return original(self, *args, **kwargs)
        finally:
            _launching.reset(token)

    return launch


GRADIO_EXPIRY_NOTE = "This share link is temporary and will last for up to"
"""The start of Gradio's own expiry message (Gradio 5 and 6), which is not about our links."""


def _gradio_print(*args: Any, **kwargs: Any) -> None:
    """``print`` for ``gradio.blocks``: everything but Gradio's note on how long links last."""
    if args and isinstance(args[0], str) and args[0].lstrip().startswith(GRADIO_EXPIRY_NOTE):
        return
    print(*args, **kwargs)


def _local_template_response(templates: Any) -> Callable[..., Any]:
    original = templates.TemplateResponse

    @functools.wraps(original)
    def template_response(*args: Any, **kwargs: Any) -> Any:
        if kwargs.get("name") == "frontend/share.html":
            kwargs["name"] = "frontend/index.html"
        return original(*args, **kwargs)

    return template_response


def install(
    relay: str | Sequence[str] | None = None,
    token: str | None = None,
    *,
    ca_file: str | Path | None = None,
    ttl: float | str | None = None,
    local_assets: bool = True,
) -> None:
    """Make every later ``launch(share=True)`` in this process use a sharetunnel relay.

    ``relay`` and ``token`` default, like ``ca_file``, to ``TUNNEL_RELAY``,
    ``TUNNEL_TOKEN`` and the config file, read at each launch; with no relay at all the
    link comes from an embedded relay and works on this machine only. ``ttl`` asks for
    a shorter link lifetime. ``local_assets=False`` keeps Gradio's share page, which
    loads the frontend from Gradio's CDN. Calling it again replaces the options.

    Raises:
        ConfigError: the options, environment or config file are invalid.
    """
    global _installed
    options: dict[str, Any] = {"relay": relay, "token": token, "ca_file": ca_file, "ttl": ttl}
    build_config(1, **options)  # fail now, not at launch, on a bad option or config file
    try:
        networking, blocks, routes = _gradio("networking"), _gradio("blocks"), _gradio("routes")
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError(
            "tunnel_client.gradio.install() needs Gradio: pip install 'sharetunnel[gradio]'",
            name=exc.name,
        ) from exc

    with _lock:
        if _installed is None:
            installation = _Installation(options)
            installation.setup_tunnel = networking.setup_tunnel
            networking.setup_tunnel = _setup_tunnel
            installation.launch = blocks.Blocks.launch
            blocks.Blocks.launch = _wrap_launch(blocks.Blocks.launch)
            blocks.print = _gradio_print
            installation.blocks = blocks
            _installed = installation
        _installed.options = options
        templates = routes.templates
        if local_assets and _installed.templates is None:
            # An instance attribute shadows the method; deleting it restores Gradio's.
            templates.TemplateResponse = _local_template_response(templates)
            _installed.templates = templates
        elif not local_assets and _installed.templates is not None:
            del _installed.templates.TemplateResponse
            _installed.templates = None


def uninstall() -> None:
    """Give ``launch(share=True)`` back to Gradio. Links already made stay up until killed."""
    global _installed
    with _lock:
        installation, _installed = _installed, None
        if installation is None:
            return
        _gradio("networking").setup_tunnel = installation.setup_tunnel
        _gradio("blocks").Blocks.launch = installation.launch
        if getattr(installation.blocks, "print", None) is _gradio_print:
            del installation.blocks.print  # the builtin again
        if installation.templates is not None:
            del installation.templates.TemplateResponse


def installed() -> bool:
    """True between :func:`install` and :func:`uninstall`."""
    return _installed is not None


def live_tunnels() -> list[GradioTunnel]:
    """The links made for Gradio in this process that are still up."""
    with _lock:
        return [t for t in _live if t.alive]
