"""The request inspector in-process: what it captures, how it shows it, its settings, and
its server's guards, API and replay against a small local app (no relay needed)."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tunnel_client.api import build_config
from tunnel_client.config import ClientConfig, InspectAt
from tunnel_client.inspector import Capture, Inspector, InspectorUnavailable
from tunnel_client.inspector.render import describe_body, full, summary
from tunnel_client.protocol.errors import ConfigError
from tunnel_client.protocol.heads import RequestHead, ResponseHead
from tunnel_client.protocol.settings import resolve
from tunnel_client.settings import CLIENT, InspectAddress, client_config

HEAD = RequestHead("POST", "/a?b=1", (("Host", "x.localhost"), ("X-Forwarded-For", "203.0.113.9")))


# -- capture: bounded, cheap -------------------------------------------------------------------


def test_a_body_is_kept_up_to_the_limit_and_counted_beyond() -> None:
    capture = Capture(body_limit=10)
    entry = capture.request(HEAD)
    for chunk in (b"0123", b"456789ab", b"cdef"):
        entry.request_body(chunk)
    entry.response(ResponseHead(200, ()))
    entry.response_body(b"x" * 100)
    entry.finished(200)
    assert bytes(entry.request_captured) == b"0123456789" and entry.request_size == 16
    assert bytes(entry.response_captured) == b"x" * 10 and entry.response_size == 100
    assert capture.captured_bytes == 20
    assert entry.status == 200 and entry.duration_s is not None and entry.done


def test_only_the_most_recent_requests_are_kept() -> None:
    capture = Capture(body_limit=4, capacity=3)
    entries = [capture.request(HEAD) for _ in range(5)]
    for entry in entries:
        entry.response_body(b"abcdef")
    assert [e.id for e in capture.newest_first()] == [5, 4, 3]
    assert capture.get(1) is None and capture.get(5) is entries[4]
    assert capture.captured_bytes == 3 * 4 + 2 * 0  # the two forgotten captured nothing more
    assert len(capture._with_bodies) <= 3


def test_the_byte_budget_drops_the_oldest_bodies_first() -> None:
    capture = Capture(body_limit=100, capacity=10, budget=250)
    entries = []
    for _ in range(4):
        entry = capture.request(HEAD)
        entry.response_body(b"y" * 100)
        entry.finished(200)
        entries.append(entry)
    assert capture.captured_bytes <= 250
    assert [e.dropped for e in entries] == [True, True, False, False]
    assert len(capture) == 4  # the requests stay listed
    assert full(entries[0])["response"] is None  # no head was given; bodies are gone
    assert entries[0].response_captured == b""


def test_listeners_hear_every_change_and_finished_counts_once() -> None:
    capture = Capture(body_limit=0)
    heard: list[int] = []
    stop = capture.listen(lambda: heard.append(capture.version))
    entry = capture.request(HEAD)
    entry.request_body(b"not kept")
    entry.response(ResponseHead(204, ()))
    entry.finished(204)
    entry.finished(502, "late")
    assert heard == [1, 2, 3]
    assert (entry.status, entry.error, entry.request_captured) == (204, None, bytearray())
    assert capture.changed_since(2) == [entry]
    stop()
    capture.request(HEAD)
    assert heard == [1, 2, 3]


# -- render: what the API shows ------------------------------------------------------------------


def test_summary_names_the_visitor_and_the_replay() -> None:
    capture = Capture(body_limit=10)
    entry = capture.request(HEAD)
    row = summary(entry)
    assert row["visitor"] == "203.0.113.9" and row["status"] is None and not row["done"]
    replay = capture.request(HEAD, replay_of=entry.id)
    assert summary(replay)["visitor"] == "replay" and summary(replay)["replay_of"] == 1


@pytest.mark.parametrize(
    ("data", "size", "headers", "kind"),
    [
        (b"", 0, (), "empty"),
        (b'{"a": 1}', 8, (("Content-Type", "application/json"),), "json"),
        (b"[1, 2, 3]", 9, (), "json"),
        (b'{"a": [1, 2', 40, (("Content-Type", "application/problem+json"),), "json"),
        (b"hello <b>world</b>", 18, (("Content-Type", "text/html"),), "text"),
        (b"GIF89a", 6, (("Content-Type", "image/gif"),), "binary"),
        (b"plain", 5, (("Content-Encoding", "gzip"),), "binary"),
        (b"\xff\xfe\x00\x01", 4, (), "binary"),
        (b"text with a \x00 NUL", 17, (), "binary"),
        ("caf\u00e9".encode()[:4], 5, (), "text"),  # the limit cut the last character
    ],
    ids=[
        "empty",
        "json",
        "json-sniffed",
        "json-truncated",
        "text",
        "image",
        "gzip",
        "not-utf8",
        "nul",
        "cut-character",
    ],
)
def test_bodies_are_described_by_kind(
    data: bytes, size: int, headers: tuple[tuple[str, str], ...], kind: str
) -> None:
    body = describe_body(data, size, headers)
    assert body["kind"] == kind
    assert body["truncated"] is (size > len(data))
    if kind == "binary":
        assert base64.b64decode(body["base64"]) == data and "text" not in body
    elif kind in ("json", "text"):
        assert "base64" not in body and isinstance(body["text"], str)


def test_json_is_pretty_printed_when_whole() -> None:
    body = describe_body(b'{"b":[1,2],"a":"\xc3\xa9"}', 22, (("Content-Type", "application/json"),))
    assert body["pretty"] == '{\n  "b": [\n    1,\n    2\n  ],\n  "a": "\u00e9"\n}'
    cut = describe_body(b'{"b":[1,', 22, (("Content-Type", "application/json"),))
    assert cut["kind"] == "json" and "pretty" not in cut and cut["text"] == '{"b":[1,'


# -- settings ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("auto", InspectAt()),
        (True, InspectAt()),
        ("off", None),
        (False, None),
        ("4041", InspectAt(port=4041)),
        (4041, InspectAt(port=4041)),
        ("0", InspectAt(port=0)),
        ("localhost:4042", InspectAt("localhost", 4042)),
        ("[::1]:4043", InspectAt("::1", 4043)),
        ("127.0.0.2:auto", InspectAt("127.0.0.2", None)),
    ],
)
def test_inspect_addresses(raw: object, expected: InspectAt | None) -> None:
    parser = InspectAddress()
    assert parser.parse(raw) == expected
    assert parser.parse(parser.format(expected)) == expected


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ("0.0.0.0:4040", "loopback only"),
        ("192.168.1.2:80", "loopback only"),
        ("example.com:80", "not an IP address or localhost"),
        ("70000", "not in 0..65535"),
        ("banana", "is not an address"),
        (1.5, "is not an address"),
    ],
)
def test_inspect_refuses_other_addresses(raw: object, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        InspectAddress().parse(raw)


def test_no_inspect_turns_it_off_and_clashes_with_inspect() -> None:
    off = resolve(CLIENT, {"no_inspect": True}, environ={"TUNNEL_INSPECT": "4041"})
    assert client_config(off, 1)[0].inspect is None
    assert str(off.values["inspect"].source) == "flag --no-inspect"
    with pytest.raises(ConfigError, match="--inspect and --no-inspect exclude each other"):
        resolve(CLIENT, {"inspect": "4041", "no_inspect": True}, environ={})


def test_the_command_line_inspects_by_default_the_api_does_not() -> None:
    assert ClientConfig(port=1).inspect == InspectAt()
    assert build_config(1, environ={}).inspect is None
    assert build_config(1, inspect=True, environ={}).inspect == InspectAt()
    assert build_config(1, environ={"TUNNEL_INSPECT": "4041"}).inspect == InspectAt(port=4041)
    assert build_config(1, inspect=False, environ={"TUNNEL_INSPECT": "4041"}).inspect is None


# -- the server ----------------------------------------------------------------------------------


async def _local_app() -> AsyncIterator[tuple[str, dict[str, Any]]]:
    seen: dict[str, Any] = {"requests": []}

    async def anything(request: web.Request) -> web.Response:
        body = await request.read()
        seen["requests"].append((request.method, request.raw_path, dict(request.headers), body))
        return web.json_response({"got": len(body)}, headers={"X-Local": "yes"})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", anything)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}", seen
    finally:
        await runner.cleanup()


@pytest.fixture
async def served() -> AsyncIterator[tuple[Inspector, dict[str, Any], aiohttp.ClientSession]]:
    async for local_url, seen in _local_app():
        inspector = Inspector(
            InspectAt(port=0), local_url=local_url, local_label="local", body_limit=8
        )
        async with inspector, aiohttp.ClientSession() as http:
            yield inspector, seen, http


def visit(inspector: Inspector, head: RequestHead = HEAD, body: bytes = b"") -> int:
    """A finished visitor request, as the forwarder would report it."""
    entry = inspector.capture.request(head)
    if body:
        entry.request_body(body)
    entry.response(ResponseHead(200, (("Content-Type", "text/plain"),)))
    entry.response_body(b"fine")
    entry.finished(200)
    return entry.id


async def test_the_page_and_the_api_answer_on_loopback(
    served: tuple[Inspector, dict[str, Any], aiohttp.ClientSession],
) -> None:
    inspector, _, http = served
    assert inspector.url.startswith("http://127.0.0.1:")
    entry_id = visit(inspector, body=b"0123456789")
    async with http.get(inspector.url + "/") as page:
        assert page.status == 200 and "sharetunnel inspector" in await page.text()
        assert "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]
    async with http.get(inspector.url + "/api/requests") as listing:
        data = await listing.json()
    assert [r["id"] for r in data["requests"]] == [entry_id]
    assert data["body_limit"] == 8
    async with http.get(f"{inspector.url}/api/requests/{entry_id}") as detail:
        record = await detail.json()
    assert record["request"]["body"]["text"] == "01234567"
    assert record["request"]["body"]["truncated"] is True
    assert record["response"]["body"]["text"] == "fine"
    async with http.get(f"{inspector.url}/api/requests/99") as missing:
        assert missing.status == 404 and "keeps the last 500" in (await missing.json())["error"]


async def test_foreign_hosts_and_origins_are_refused(
    served: tuple[Inspector, dict[str, Any], aiohttp.ClientSession],
) -> None:
    inspector, seen, http = served
    entry_id = visit(inspector)
    port = inspector.url.rsplit(":", 1)[1]
    for host in (f"attacker.example:{port}", "127.0.0.1", f"127.0.0.1:{int(port) + 1}"):
        async with http.get(inspector.url + "/api/requests", headers={"Host": host}) as reply:
            assert reply.status == 403, host
            assert "DNS rebinding" in await reply.text()
    async with http.get(inspector.url + "/", headers={"Host": f"localhost:{port}"}) as reply:
        assert reply.status == 200
    replay = f"{inspector.url}/api/requests/{entry_id}/replay"
    async with http.post(replay, headers={"Origin": "http://attacker.example"}) as reply:
        assert reply.status == 403
    assert seen["requests"] == []
    async with http.post(replay, headers={"Origin": f"http://localhost:{port}"}) as reply:
        assert reply.status == 200
    assert len(seen["requests"]) == 1


async def test_replay_sends_the_request_again_with_overrides(
    served: tuple[Inspector, dict[str, Any], aiohttp.ClientSession],
) -> None:
    inspector, seen, http = served
    entry_id = visit(inspector, body=b"1234")
    url = f"{inspector.url}/api/requests/{entry_id}/replay"
    async with http.post(url) as reply:
        assert reply.status == 200
        first = await reply.json()
    method, target, headers, body = seen["requests"][-1]
    assert (method, target, body) == ("POST", "/a?b=1", b"1234")
    assert headers["Host"] == "x.localhost" and headers["Content-Length"] == "4"
    assert first["replay_of"] == entry_id and first["status"] == 200
    assert ["X-Local", "yes"] in first["response"]["headers"]
    assert first["response"]["body"]["kind"] == "json"  # 10 bytes, 8 kept: not pretty
    overrides = {"method": "put", "path": "/b", "headers": {"X-Edited": "1"}, "body": "é"}
    async with http.post(url, json=overrides) as reply:
        second = await reply.json()
    method, target, headers, body = seen["requests"][-1]
    assert (method, target, body) == ("PUT", "/b", "é".encode())
    assert headers["X-Edited"] == "1" and headers["Content-Length"] == "2"
    assert second["request"]["headers"] == [["X-Edited", "1"], ["Content-Length", "2"]]
    listed = [
        r["id"]
        for r in (await (await http.get(inspector.url + "/api/requests")).json())["requests"]
    ]
    assert listed == [second["id"], first["id"], entry_id]


@pytest.mark.parametrize(
    ("overrides", "status", "message"),
    [
        ({"path": "http://elsewhere/"}, 400, "must start with /"),
        ({"method": "GET POST"}, 400, "invalid method"),
        ({"headers": [["Bad Name", "x"]]}, 400, "invalid header name"),
        ({"headers": "X: y"}, 400, "headers must be"),
        ({"bodyy": "x"}, 400, "unknown overrides"),
        ({"body_base64": "%%%"}, 400, "not base64"),
        ([1], 400, "JSON object"),
    ],
)
async def test_replay_refuses_bad_overrides(
    served: tuple[Inspector, dict[str, Any], aiohttp.ClientSession],
    overrides: object,
    status: int,
    message: str,
) -> None:
    inspector, seen, http = served
    entry_id = visit(inspector)
    async with http.post(f"{inspector.url}/api/requests/{entry_id}/replay", json=overrides) as r:
        assert r.status == status and message in (await r.json())["error"]
    assert seen["requests"] == []


async def test_a_body_not_kept_whole_needs_an_override(
    served: tuple[Inspector, dict[str, Any], aiohttp.ClientSession],
) -> None:
    inspector, seen, http = served
    entry_id = visit(inspector, body=b"longer than eight")
    url = f"{inspector.url}/api/requests/{entry_id}/replay"
    async with http.post(url) as reply:
        assert reply.status == 409 and "give a body" in (await reply.json())["error"]
    async with http.post(url, json={"body_base64": base64.b64encode(b"\x00\x01").decode()}) as r:
        assert r.status == 200
    assert seen["requests"][-1][3] == b"\x00\x01"


async def test_a_replay_to_a_closed_port_is_listed_as_failed() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    inspector = Inspector(
        InspectAt(port=0), local_url=f"http://127.0.0.1:{closed}", local_label="gone", body_limit=8
    )
    async with inspector, aiohttp.ClientSession() as http:
        entry_id = visit(inspector, RequestHead("GET", "/"))
        async with http.post(f"{inspector.url}/api/requests/{entry_id}/replay") as reply:
            record = await reply.json()
    assert record["status"] == 502 and "nothing accepted the connection on gone" in record["error"]


async def test_events_stream_changed_summaries(
    served: tuple[Inspector, dict[str, Any], aiohttp.ClientSession],
) -> None:
    inspector, _, http = served
    visit(inspector)
    async with http.get(inspector.url + "/api/events") as events:
        assert events.headers["Content-Type"] == "text/event-stream"

        async def next_batch() -> list[dict[str, Any]]:
            while True:
                line = (await events.content.readline()).decode()
                if line.startswith("data: "):
                    return json.loads(line[6:])  # type: ignore[no-any-return]

        first = await asyncio.wait_for(next_batch(), 5)
        assert [row["id"] for row in first] == [1]
        visit(inspector)
        visit(inspector)
        second = await asyncio.wait_for(next_batch(), 5)
        assert [row["id"] for row in second] == [2, 3]  # one batch for the burst


async def test_an_asked_port_in_use_is_a_clear_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        inspector = Inspector(
            InspectAt(port=port), local_url="http://127.0.0.1:1", local_label="x", body_limit=0
        )
        with pytest.raises(InspectorUnavailable, match=f"127.0.0.1:{port}.*--no-inspect"):
            await inspector.__aenter__()
