"""A local origin server for tests and benchmarks: what a tunnelled app might do.

Run it as a process: ``python -m tests.origin --port 0 --ready-file f`` writes
``{"port": N}`` to ``f`` once listening (``--host ::1`` listens elsewhere, ``--tls-cert C
--tls-key K`` serves https). Endpoints:

=====================  ==============================================================
``/``                  a small fixed page
``/echo``              any method: JSON of method, raw target, headers, body length+sha256
``/bytes/{n}``         n bytes (a fixed pattern), Content-Length, streamed in 64 KiB chunks
``/chunked/{n}``       the same bytes with chunked encoding
``/upload``            POST: streams the body; JSON of its length and sha256
``/sse``               ``?n=5&interval=0.2``: n events, one per interval, with a timestamp
``/ws``                WebSocket echo; text ``close:<code>`` closes with that code
``/slow``              ``?delay=5``: waits, then answers
``/hold``              never answers; counts how many were cancelled (``/stats``)
``/stats``             JSON counters
``/cookies``           three Set-Cookie headers
``/status/{code}``     that status, with a small body (none for 204/304)
``/gzip``              a gzip-encoded body with Content-Encoding: gzip
``/file``              a 1 MiB file with Range support
``/redirect/{code}``   that redirect status with ``Location: /echo/redirected``
``/hop``               a response carrying hop-by-hop headers (and one end-to-end header)
``/ws/closed``         ``?id=X``: waits until the WebSocket opened as ``/ws?id=X`` ended;
                       JSON of the close code it ended with (504 after ``?timeout=10``)
``/slow-upload``       POST ``?rate=1000000``: reads the body at about that many bytes/s;
                       JSON of its length and sha256 (``/stats`` ``slow_upload_bytes``)
``/endless``           ``?chunk=65536&interval=0.01``: streams until the visitor leaves;
                       ``/stats`` counts ``endless_started`` and ``endless_closed``
``/whoami``            any method: what ``/echo`` says, plus this process's ``pid`` (to
                       tell which origin, hence which tunnel, a request reached)
``/set-cookies``       one ``Set-Cookie`` header per ``?c=`` value, exactly as given
``/count``             any method: counts the request under ``?key=`` (``/stats``
                       ``count:<key>``), after reading its body
``/big-cookies``       ``?n=40&size=8000``: n ``Set-Cookie`` headers of about size bytes
                       each (a response head larger than a tunnel head may be)
=====================  ==============================================================
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
import hashlib
import json
import os
import shutil
import signal
import ssl
import tempfile
import time
from pathlib import Path

from aiohttp import WSMsgType, web

PATTERN = bytes(range(256)) * 256  # 64 KiB
STATS_KEY = web.AppKey("stats", dict)
FILE_KEY = web.AppKey("file", Path)
WS_CLOSED_KEY = web.AppKey("ws_closed", dict)
GZIP_BODY = gzip.compress(b"compressed content " * 100, mtime=0)  # the same in every process
HOP_RESPONSE_HEADERS = (
    ("Connection", "keep-alive, X-Hop-Named"),
    ("X-Hop-Named", "named in Connection"),
    ("Keep-Alive", "timeout=5"),
    ("Proxy-Authenticate", 'Basic realm="origin"'),
    ("TE", "trailers"),
    ("Trailer", "X-Checksum"),
    ("Upgrade", "h2c"),
)


def pattern_bytes(n: int) -> bytes:
    """The first n bytes of what /bytes/{n} sends."""
    full, rest = divmod(n, len(PATTERN))
    return PATTERN * full + PATTERN[:rest]


async def index(request: web.Request) -> web.Response:
    return web.Response(text="hello from the origin\n")


async def echo(request: web.Request) -> web.Response:
    digest = hashlib.sha256()
    length = 0
    async for chunk in request.content.iter_any():
        digest.update(chunk)
        length += len(chunk)
    return web.json_response(
        {
            "method": request.method,
            "target": request.raw_path,
            "headers": [[k, v] for k, v in request.headers.items()],
            "length": length,
            "sha256": digest.hexdigest(),
        }
    )


async def whoami(request: web.Request) -> web.Response:
    response = await echo(request)
    assert isinstance(response.body, bytes)
    return web.json_response({**json.loads(response.body), "pid": os.getpid()})


async def set_cookies(request: web.Request) -> web.Response:
    response = web.Response(text="cookies set\n")
    for value in request.query.getall("c", []):
        response.headers.add("Set-Cookie", value)
    return response


async def big_cookies(request: web.Request) -> web.Response:
    count = int(request.query.get("n", "40"))
    size = int(request.query.get("size", "8000"))
    response = web.Response(text="big cookies\n")
    for i in range(count):
        name = f"c{i}="
        response.headers.add("Set-Cookie", name + "x" * max(size - len(name), 0))
    return response


async def _send_pattern(request: web.Request, n: int, *, chunked: bool) -> web.StreamResponse:
    response = web.StreamResponse()
    response.content_type = "application/octet-stream"
    if chunked:
        response.enable_chunked_encoding()
    else:
        response.content_length = n
    await response.prepare(request)
    left = 0 if request.method == "HEAD" else n
    while left > 0:
        piece = PATTERN[: min(left, len(PATTERN))]
        await response.write(piece)
        left -= len(piece)
    await response.write_eof()
    return response


async def fixed_bytes(request: web.Request) -> web.StreamResponse:
    return await _send_pattern(request, int(request.match_info["n"]), chunked=False)


async def chunked_bytes(request: web.Request) -> web.StreamResponse:
    return await _send_pattern(request, int(request.match_info["n"]), chunked=True)


async def sse(request: web.Request) -> web.StreamResponse:
    count = int(request.query.get("n", "5"))
    interval = float(request.query.get("interval", "0.2"))
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await response.prepare(request)
    for i in range(count):
        await response.write(
            f"id: {i}\ndata: {json.dumps({'i': i, 't': time.time()})}\n\n".encode()
        )
        if i + 1 < count:
            await asyncio.sleep(interval)
    await response.write_eof()
    return response


async def ws_echo(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(protocols=("chat", "superchat"))
    await ws.prepare(request)
    try:
        async for msg in ws:
            if msg.type is WSMsgType.TEXT:
                if msg.data.startswith("close:"):
                    await ws.close(code=int(msg.data[6:]), message=b"asked to close")
                    break
                await ws.send_str(msg.data)
            elif msg.type is WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
    finally:
        if (key := request.query.get("id")) is not None:
            ended = _ws_closed(request.app, key)
            if not ended.done():
                ended.set_result(ws.close_code)
    return ws


def _ws_closed(app: web.Application, key: str) -> asyncio.Future[int | None]:
    """The close code of the WebSocket ``/ws?id=key``, once it ended."""
    futures = app[WS_CLOSED_KEY]
    if key not in futures:
        futures[key] = asyncio.get_running_loop().create_future()
    return futures[key]


async def ws_closed(request: web.Request) -> web.Response:
    ended = _ws_closed(request.app, request.query["id"])
    try:
        code = await asyncio.wait_for(
            asyncio.shield(ended), float(request.query.get("timeout", "10"))
        )
    except TimeoutError:
        return web.json_response({"code": None, "ended": False}, status=504)
    return web.json_response({"code": code, "ended": True})


async def redirect(request: web.Request) -> web.Response:
    return web.Response(
        status=int(request.match_info["code"]),
        text="moved\n",
        headers={"Location": "/echo/redirected"},
    )


async def hop(request: web.Request) -> web.Response:
    """Hop-by-hop headers a proxy must not pass on, next to one it must."""
    response = web.Response(text="hop\n")
    for name, value in HOP_RESPONSE_HEADERS:
        response.headers.add(name, value)
    response.headers.add("X-End-To-End", "kept")
    return response


async def slow(request: web.Request) -> web.Response:
    await asyncio.sleep(float(request.query.get("delay", "5")))
    return web.Response(text="finally\n")


async def hold(request: web.Request) -> web.Response:
    stats = request.app[STATS_KEY]
    stats["held"] += 1
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        stats["cancelled"] += 1
        raise
    return web.Response(text="unreachable")


async def slow_upload(request: web.Request) -> web.Response:
    """Read the body no faster than ``rate`` bytes/s: a local server that pushes back."""
    rate = float(request.query.get("rate", "1000000"))
    stats = request.app[STATS_KEY]
    digest = hashlib.sha256()
    length = 0
    started = time.monotonic()
    while chunk := await request.content.read(16384):
        digest.update(chunk)
        length += len(chunk)
        stats["slow_upload_bytes"] += len(chunk)
        ahead = length / rate - (time.monotonic() - started)
        if ahead > 0:
            await asyncio.sleep(ahead)
    return web.json_response({"length": length, "sha256": digest.hexdigest()})


async def endless(request: web.Request) -> web.StreamResponse:
    """Stream chunks until the visitor goes away, counting how often that was noticed."""
    size = int(request.query.get("chunk", "65536"))
    interval = float(request.query.get("interval", "0.01"))
    stats = request.app[STATS_KEY]
    stats["endless_started"] += 1
    response = web.StreamResponse()
    response.content_type = "application/octet-stream"
    response.enable_chunked_encoding()
    try:
        await response.prepare(request)
        while True:
            await response.write(PATTERN[:size])
            await asyncio.sleep(interval)
    except (asyncio.CancelledError, ConnectionError):
        stats["endless_closed"] += 1
        raise


async def count(request: web.Request) -> web.Response:
    await request.read()
    key = "count:" + request.query.get("key", "")
    stats = request.app[STATS_KEY]
    stats[key] = stats.get(key, 0) + 1
    return web.json_response({key: stats[key]})


async def stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATS_KEY])


async def cookies(request: web.Request) -> web.Response:
    response = web.Response(text="cookies\n")
    response.headers.add("Set-Cookie", "a=1; Path=/")
    response.headers.add("Set-Cookie", "b=2; Path=/; HttpOnly")
    response.headers.add("Set-Cookie", "c=3; Path=/; SameSite=Lax")
    response.headers.add("X-Repeated", "one")
    response.headers.add("X-Repeated", "two")
    return response


async def status(request: web.Request) -> web.Response:
    code = int(request.match_info["code"])
    if code in (204, 304):
        return web.Response(status=code)
    return web.Response(status=code, text=f"status {code}\n")


async def gzipped(request: web.Request) -> web.Response:
    return web.Response(
        body=GZIP_BODY, headers={"Content-Encoding": "gzip", "Content-Type": "text/plain"}
    )


async def file(request: web.Request) -> web.FileResponse:
    return web.FileResponse(request.app[FILE_KEY])


def make_app() -> web.Application:
    app = web.Application(client_max_size=1 << 40)
    app[STATS_KEY] = {
        "held": 0,
        "cancelled": 0,
        "slow_upload_bytes": 0,
        "endless_started": 0,
        "endless_closed": 0,
    }
    path = Path(tempfile.mkdtemp(prefix="origin-")) / "data.bin"
    path.write_bytes(pattern_bytes(1 << 20))
    app[FILE_KEY] = path
    app[WS_CLOSED_KEY] = {}
    app.router.add_get("/", index)
    app.router.add_route("*", "/echo", echo)
    app.router.add_route("*", "/echo/{tail:.*}", echo)
    app.router.add_get("/bytes/{n}", fixed_bytes)
    app.router.add_get("/chunked/{n}", chunked_bytes)
    app.router.add_post("/upload", echo)
    app.router.add_get("/sse", sse)
    app.router.add_get("/ws", ws_echo)
    app.router.add_get("/slow", slow)
    app.router.add_get("/hold", hold)
    app.router.add_get("/stats", stats)
    app.router.add_get("/cookies", cookies)
    app.router.add_route("*", "/status/{code}", status)
    app.router.add_get("/gzip", gzipped)
    app.router.add_get("/file", file)
    app.router.add_get("/redirect/{code}", redirect)
    app.router.add_get("/hop", hop)
    app.router.add_get("/ws/closed", ws_closed)
    app.router.add_post("/slow-upload", slow_upload)
    app.router.add_get("/endless", endless)
    app.router.add_route("*", "/whoami", whoami)
    app.router.add_route("*", "/whoami/{tail:.*}", whoami)
    app.router.add_get("/set-cookies", set_cookies)
    app.router.add_route("*", "/count", count)
    app.router.add_get("/big-cookies", big_cookies)
    return app


async def serve(
    port: int,
    ready_file: Path | None,
    host: str = "127.0.0.1",
    tls: tuple[Path, Path] | None = None,
) -> None:
    app = make_app()
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
    await runner.setup()
    context = None
    if tls is not None:  # https://, for `tunnel https://localhost:PORT`
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(*tls)
    site = web.TCPSite(runner, host, port, ssl_context=context)
    await site.start()
    bound = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    if ready_file is not None:
        tmp = ready_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"port": bound, "pid": os.getpid()}))
        tmp.replace(ready_file)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        shutil.rmtree(app[FILE_KEY].parent, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--ready-file", type=Path)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--tls-cert", type=Path)
    parser.add_argument("--tls-key", type=Path)
    args = parser.parse_args()
    tls = (args.tls_cert, args.tls_key) if args.tls_cert else None
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.port, args.ready_file, args.host, tls))


if __name__ == "__main__":
    main()
