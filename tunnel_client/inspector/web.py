"""The inspector's local web server: the page, the JSON API, live updates and replay.

It runs in the client's event loop on a loopback address (127.0.0.1:4040 by default,
else the next free port up to 4049, else any free port). Only this machine may use it:

* every request must carry a ``Host`` of the inspector itself (``127.0.0.1:4040`` or
  ``localhost:4040``): a DNS-rebinding page, whose requests carry its own host name,
  gets 403;
* a POST with an ``Origin`` must come from the inspector's own origin (so another site
  open in the browser cannot replay requests); scripts send no Origin;
* the page is served with a strict Content-Security-Policy and may not be framed.

API (JSON; see README.md):

``GET /api/requests``                 newest first, summaries
``GET /api/requests/<id>``            heads and captured bodies
``POST /api/requests/<id>/replay``    optional overrides ``method``, ``path``, ``headers``,
                                      ``body`` (text) or ``body_base64``
``GET /api/events``                   Server-Sent Events: ``requests`` with changed summaries

A replay goes straight to the local server, not through the relay, and is captured as a
new entry whose ``replay_of`` names the original.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import socket
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from multidict import CIMultiDict
from yarl import URL

from ..config import INSPECT_PORTS, ClientConfig, InspectAt
from ..protocol.errors import ProtocolError, TunnelError
from ..protocol.heads import Headers, RequestHead, ResponseHead, strip_hop_by_hop
from .capture import CAPACITY, Capture, Entry
from .render import full, summary

__all__ = ["Inspector", "InspectorUnavailable"]

logger = logging.getLogger(__name__)

REPLAY_WAIT_S = 30.0
"""A replay answers once the local server finished, or with 202 after this long (it goes on)."""
EVENTS_COALESCE_S = 0.1
"""Live updates are sent at most this often: a burst of requests costs one message."""
EVENTS_KEEPALIVE_S = 15.0
MAX_OVERRIDE_BYTES = 16 << 20
_STATIC = {
    "/": ("index.html", "text/html"),
    "/app.js": ("app.js", "text/javascript"),
    "/style.css": ("style.css", "text/css"),
}
_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
_OVERRIDES = ("method", "path", "headers", "body", "body_base64")
_SKIP_AUTO_HEADERS = frozenset({"Accept", "Accept-Encoding", "User-Agent", "Content-Type"})
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class InspectorUnavailable(TunnelError):
    """The inspector cannot listen where it was asked to."""


class _BadRequest(Exception):
    """A replay request the API refuses; the message says why."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def listen_socket(at: InspectAt) -> socket.socket:
    """A bound socket for the inspector: the asked port, or the first free one.

    Raises:
        InspectorUnavailable: nothing could be bound (the port in use, say).
    """
    ports = (*INSPECT_PORTS, 0) if at.port is None else (at.port,)
    try:
        family, _, _, _, address = socket.getaddrinfo(at.host, None, type=socket.SOCK_STREAM)[0]
    except OSError as exc:
        raise InspectorUnavailable(f"cannot resolve the inspector host {at.host}: {exc}") from None
    failure: OSError | None = None
    for port in ports:
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError as exc:
            failure = exc
            break
        try:
            # Not SO_REUSEPORT: a port another process listens on must stay taken.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((address[0], port))
        except OSError as exc:
            sock.close()
            failure = exc
            continue
        return sock
    where = f"{at.host}:{ports[0]}"
    why = failure.strerror if failure is not None and failure.strerror else str(failure)
    raise InspectorUnavailable(
        f"cannot serve the inspector on {where} ({why}): choose another port with "
        "--inspect PORT, or turn it off with --no-inspect"
    )


class Inspector:
    """The request inspector of one tunnel: capture, web page, API and replay.

    Use it as an async context manager; :attr:`capture` is the forwarder's tap and
    :attr:`url` the page once started.
    """

    def __init__(
        self,
        at: InspectAt,
        *,
        local_url: str,
        local_label: str,
        body_limit: int,
        capacity: int = CAPACITY,
    ) -> None:
        self.at = at
        self.local_url = local_url
        self.local_label = local_label
        self.capture = Capture(body_limit=body_limit, capacity=capacity)
        self.url = ""
        self._allowed_hosts: frozenset[str] = frozenset()
        self._allowed_origins: frozenset[str] = frozenset()
        self._runner: web.AppRunner | None = None
        self._http: aiohttp.ClientSession | None = None
        self._replays: set[asyncio.Task[None]] = set()
        self._wakers: set[asyncio.Event] = set()
        self._closing = False

    @classmethod
    def for_config(cls, config: ClientConfig) -> Inspector:
        assert config.inspect is not None
        return cls(
            config.inspect,
            local_url=config.local_url,
            local_label=config.local_label,
            body_limit=config.inspect_body_limit,
        )

    async def __aenter__(self) -> Inspector:
        sock = listen_socket(self.at)
        port = sock.getsockname()[1]
        host = f"[{self.at.host}]" if ":" in self.at.host else self.at.host
        self.url = f"http://{host}:{port}"
        names = {host.lower(), "127.0.0.1", "localhost"}
        self._allowed_hosts = frozenset(f"{name}:{port}" for name in names)
        self._allowed_origins = frozenset(f"http://{h}" for h in self._allowed_hosts)
        app = web.Application(
            middlewares=[self._guard], client_max_size=MAX_OVERRIDE_BYTES + (1 << 20)
        )
        app.on_response_prepare.append(_secure)
        pages = {path: (_static(name), kind) for path, (name, kind) in _STATIC.items()}
        for path, (body, kind) in pages.items():
            app.router.add_get(path, _page(body, kind))
        app.router.add_get("/api/requests", self._list)
        app.router.add_get(r"/api/requests/{id:\d+}", self._detail)
        app.router.add_post(r"/api/requests/{id:\d+}/replay", self._replay)
        app.router.add_get("/api/events", self._events)
        self._http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
            skip_auto_headers=_SKIP_AUTO_HEADERS,
        )
        self._runner = web.AppRunner(
            app,
            access_log=None,
            handle_signals=False,
            shutdown_timeout=1.0,
            logger=_SERVER_LOGGER,
        )
        try:
            await self._runner.setup()
            await web.SockSite(self._runner, sock).start()
        except BaseException:
            sock.close()
            await self._close()
            raise
        logger.info("request inspector on %s", self.url)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._close()

    async def _close(self) -> None:
        self._closing = True
        for waker in self._wakers:
            waker.set()
        for task in self._replays:
            task.cancel()
        await asyncio.gather(*self._replays, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
        if self._http is not None:
            await self._http.close()

    # -- guards ---------------------------------------------------------------------------

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        host = request.headers.get("Host", "").lower()
        if host not in self._allowed_hosts:
            return _refuse(
                f"this inspector answers at {self.url} only, not to Host {host!r} "
                "(a guard against DNS rebinding)"
            )
        if request.method not in ("GET", "HEAD"):
            origin = request.headers.get("Origin")
            if origin is not None and origin.lower() not in self._allowed_origins:
                return _refuse(f"requests from {origin!r} may not change anything here")
        return await handler(request)

    # -- API ------------------------------------------------------------------------------

    async def _list(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "requests": [summary(e) for e in self.capture.newest_first()],
                "capacity": self.capture.capacity,
                "body_limit": self.capture.body_limit,
                "local": self.local_url,
            }
        )

    def _entry(self, request: web.Request) -> Entry:
        entry_id = int(request.match_info["id"])
        entry = self.capture.get(entry_id)
        if entry is None:
            raise _BadRequest(
                f"no request {entry_id}: the inspector keeps the last {self.capture.capacity}",
                404,
            )
        return entry

    async def _detail(self, request: web.Request) -> web.Response:
        try:
            return web.json_response(full(self._entry(request)))
        except _BadRequest as exc:
            return web.json_response({"error": str(exc)}, status=exc.status)

    async def _replay(self, request: web.Request) -> web.Response:
        try:
            original = self._entry(request)
            overrides = await _overrides(request)
            head, body = _replayed(original, overrides, self.capture.body_limit)
        except _BadRequest as exc:
            return web.json_response({"error": str(exc)}, status=exc.status)
        entry = self.capture.request(head, replay_of=original.id)
        task = asyncio.create_task(self._send(entry, head, body))
        self._replays.add(task)
        task.add_done_callback(self._replays.discard)
        done, _ = await asyncio.wait({task}, timeout=REPLAY_WAIT_S)
        return web.json_response(full(entry), status=200 if done else 202)

    async def _send(self, entry: Entry, head: RequestHead, body: bytes) -> None:
        """Send a replay to the local server, capturing it like a visitor's request."""
        assert self._http is not None
        headers = CIMultiDict(head.headers)
        if body:
            entry.request_body(body)
        try:
            async with self._http.request(
                head.method,
                URL(self.local_url + head.target, encoded=True),
                headers=headers,
                data=body or None,
                allow_redirects=False,
                compress=None,
                expect100=False,
            ) as response:
                reply_headers = tuple(strip_hop_by_hop(response.headers.items()))
                entry.response(ResponseHead(response.status, reply_headers))
                async for chunk in response.content.iter_any():
                    entry.response_body(chunk)
        except aiohttp.ClientConnectorError as exc:
            why = exc.os_error.strerror or str(exc.os_error)
            entry.finished(502, f"nothing accepted the connection on {self.local_label} ({why})")
            return
        except asyncio.CancelledError:
            entry.finished(499, "the replay was cancelled")
            raise
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError, ProtocolError) as exc:
            why = (str(exc) or type(exc).__name__).splitlines()[0][:160]
            entry.finished(502, f"the local server at {self.local_label} failed: {why}")
            return
        entry.finished(response.status)

    async def _events(self, request: web.Request) -> web.StreamResponse:
        """Server-Sent Events: every changed summary, batched, at most every 100 ms.

        Each message's id is the capture's version, so a reconnecting EventSource
        (``Last-Event-ID``) gets what changed meanwhile; a new one gets everything.
        """
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        try:
            since = int(request.headers.get("Last-Event-ID", "0"))
        except ValueError:
            since = 0
        if since > self.capture.version:
            since = 0  # from an earlier inspector: start over
        changed = asyncio.Event()
        changed.set()
        stop_listening = self.capture.listen(changed.set)
        self._wakers.add(changed)
        try:
            await response.write(b"retry: 2000\n\n")
            while not self._closing:
                try:
                    await asyncio.wait_for(changed.wait(), EVENTS_KEEPALIVE_S)
                except TimeoutError:
                    await response.write(b": keepalive\n\n")
                    continue
                await asyncio.sleep(EVENTS_COALESCE_S)
                changed.clear()
                if self._closing:
                    break
                entries = self.capture.changed_since(since)
                since = self.capture.version
                if entries:
                    data = json.dumps([summary(e) for e in entries], separators=(",", ":"))
                    await response.write(f"id: {since}\nevent: requests\ndata: {data}\n\n".encode())
        except ConnectionError:
            pass  # the page went away
        finally:
            stop_listening()
            self._wakers.discard(changed)
        return response


def _refuse(message: str) -> web.Response:
    return web.Response(status=403, text=f"sharetunnel inspector: {message}\n")


async def _secure(request: web.Request, response: web.StreamResponse) -> None:
    for name, value in _SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)


def _static(name: str) -> bytes:
    return (resources.files(__package__) / "static" / name).read_bytes()


def _page(body: bytes, kind: str) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type=kind, charset="utf-8")

    return handler


async def _overrides(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        overrides = json.loads(raw)
    except ValueError:
        raise _BadRequest("the replay overrides must be a JSON object") from None
    if not isinstance(overrides, dict):
        raise _BadRequest("the replay overrides must be a JSON object")
    unknown = sorted(set(overrides) - set(_OVERRIDES))
    if unknown:
        raise _BadRequest(f"unknown overrides {unknown}: give {', '.join(_OVERRIDES)}")
    return overrides


def _replayed(
    original: Entry, overrides: dict[str, Any], body_limit: int
) -> tuple[RequestHead, bytes]:
    """The head and body of a replay of ``original`` with ``overrides``."""
    if original.websocket:
        raise _BadRequest("WebSocket upgrades are not replayed")
    method = overrides.get("method", original.method)
    path = overrides.get("path", original.target)
    if not isinstance(method, str) or not isinstance(path, str):
        raise _BadRequest("method and path must be text")
    if not path.startswith("/"):
        raise _BadRequest(f"path {path!r} must start with / (replays go to the local server)")
    headers = _headers(overrides["headers"]) if "headers" in overrides else original.request_headers
    body = _body(overrides)
    framing = ("content-length", "transfer-encoding")
    if body is None:
        if original.request_size > len(original.request_captured):
            raise _BadRequest(
                f"the request body ({original.request_size} bytes) was not kept whole "
                f"(the inspector keeps {body_limit} bytes): give a body to "
                "replay it with",
                409,
            )
        body = bytes(original.request_captured)
    # The body may have changed: its length is what is sent (and what the entry shows).
    had_length = any(n.lower() == "content-length" for n, _ in headers)
    headers = tuple((n, v) for n, v in strip_hop_by_hop(headers) if n.lower() not in framing)
    if body or had_length:
        headers += (("Content-Length", str(len(body))),)
    try:
        return RequestHead(method.upper(), path, headers), body
    except ProtocolError as exc:
        raise _BadRequest(str(exc)) from None


def _headers(raw: object) -> Headers:
    if isinstance(raw, dict):
        raw = list(raw.items())
    if not isinstance(raw, list) or not all(
        isinstance(pair, list | tuple)
        and len(pair) == 2
        and all(isinstance(part, str) for part in pair)
        for pair in raw
    ):
        raise _BadRequest("headers must be [[name, value], ...] or {name: value}")
    return tuple((name, value) for name, value in raw)


def _body(overrides: dict[str, Any]) -> bytes | None:
    if "body" in overrides and "body_base64" in overrides:
        raise _BadRequest("give body or body_base64, not both")
    if "body" in overrides:
        if not isinstance(overrides["body"], str):
            raise _BadRequest("body must be text (or give body_base64)")
        return overrides["body"].encode("utf-8")
    if "body_base64" in overrides:
        try:
            return base64.b64decode(overrides["body_base64"], validate=True)
        except (binascii.Error, TypeError, ValueError):
            raise _BadRequest("body_base64 is not base64") from None
    return None


class _BadRequestFilter(logging.Filter):
    """Drops aiohttp's traceback for a request that is not HTTP (no Host, a bad
    Content-Length...): the sender got its 400, and the owner's terminal is no log."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, HttpProcessingError)


_SERVER_LOGGER = logging.getLogger(__name__ + ".server")
"""The inspector's own aiohttp server logger (not aiohttp's, which a library user's own
servers share), without the tracebacks of requests that are not HTTP."""
_SERVER_LOGGER.addFilter(_BadRequestFilter())
