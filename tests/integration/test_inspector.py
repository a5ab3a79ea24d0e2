"""The request inspector with real processes: relay, ``tunnel --json`` and the origin.

Requests go through the link; the inspector's JSON API must list them with their heads
and (the start of) their bodies, replay them straight to the origin, refuse foreign
pages, and be gone entirely with ``--no-inspect``.
"""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest

from tests.integration.conftest import Link
from tests.origin import pattern_bytes
from tests.processes import (
    ROOT,
    Origin,
    Reply,
    TunnelProcess,
    _env,
    fetch,
    rss_bytes,
    run_relay,
    run_tunnel,
)

pytestmark = pytest.mark.integration

MIB = 1 << 20
LIMIT = 64 * 1024  # the default --inspect-body-limit


@dataclass(frozen=True)
class Api:
    """The inspector of one tunnel, asked as a script would (right Host, no Origin)."""

    url: str

    @classmethod
    def of(cls, tunnel: TunnelProcess) -> Api:
        ready = next(e for e in tunnel.events if e.get("event") == "ready")
        return cls(ready["inspect"])

    @property
    def port(self) -> int:
        return int(urlsplit(self.url).port or 0)

    @property
    def host(self) -> str:
        return urlsplit(self.url).netloc

    def request(self, path: str, **kwargs: Any) -> Reply:
        return fetch(self.port, kwargs.pop("host", self.host), path, **kwargs)

    def get(self, path: str) -> Any:
        reply = self.request(path)
        assert reply.status == 200, reply
        return json.loads(reply.body)

    def replay(self, entry_id: int, overrides: dict[str, Any] | None = None) -> Any:
        body = json.dumps(overrides).encode() if overrides is not None else None
        reply = self.request(f"/api/requests/{entry_id}/replay", method="POST", body=body)
        assert reply.status == 200, reply
        return json.loads(reply.body)

    def entries(self) -> list[dict[str, Any]]:
        return self.get("/api/requests")["requests"]  # type: ignore[no-any-return]

    def wait_for(
        self, wanted: Callable[[dict[str, Any]], bool], timeout: float = 10
    ) -> dict[str, Any]:
        """The newest listed entry that ``wanted`` accepts, polling until there is one.

        The forwarder reports a request finished just after its last byte left for the
        relay, so the visitor can have the response a moment before the list shows it.
        """
        deadline = time.monotonic() + timeout
        while True:
            found = [e for e in self.entries() if wanted(e)]
            if found:
                return found[0]
            if time.monotonic() > deadline:
                raise TimeoutError(f"no such entry in {self.entries()[:5]}")
            time.sleep(0.05)


def done(path: str) -> Callable[[dict[str, Any]], bool]:
    return lambda e: e["path"] == path and e["done"] and e["replay_of"] is None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_the_ready_event_names_the_inspector(link: Link) -> None:
    api = Api.of(link.tunnel)
    assert api.url.startswith("http://127.0.0.1:")
    page = api.request("/")
    assert page.status == 200 and b"sharetunnel inspector" in page.body


def test_a_request_is_listed_with_its_heads_and_bodies(link: Link) -> None:
    api = Api.of(link.tunnel)
    path = f"/echo?trace={uuid.uuid4().hex}"
    sent = b'{"name": "Ada", "n": [1, 2]}'
    reply = link.fetch(
        path,
        method="POST",
        body=sent,
        headers={"Content-Type": "application/json", "X-Trace": "t-1"},
    )
    assert reply.status == 200
    entry = api.wait_for(done(path))
    assert (entry["method"], entry["status"], entry["visitor"]) == ("POST", 200, "127.0.0.1")
    assert entry["request_bytes"] == len(sent) and entry["response_bytes"] == len(reply.body)
    assert entry["duration_ms"] > 0
    record = api.get(f"/api/requests/{entry['id']}")
    request, response = record["request"], record["response"]
    assert ["X-Trace", "t-1"] in request["headers"]
    assert ["X-Forwarded-For", "127.0.0.1"] in request["headers"]
    assert request["body"]["kind"] == "json" and not request["body"]["truncated"]
    assert request["body"]["pretty"] == json.dumps(json.loads(sent), indent=2)
    assert response["status"] == 200
    assert ["Content-Type", "application/json; charset=utf-8"] in response["headers"]
    assert json.loads(response["body"]["pretty"]) == json.loads(reply.body)
    assert response["body"]["pretty"].startswith('{\n  "method": "POST",')


def test_text_and_binary_bodies_are_told_apart(link: Link) -> None:
    api = Api.of(link.tunnel)
    marker = uuid.uuid4().hex
    link.fetch(f"/?{marker}")
    link.fetch(f"/gzip?{marker}")
    page = api.get(f"/api/requests/{api.wait_for(done(f'/?{marker}'))['id']}")
    assert page["response"]["body"]["kind"] == "text"
    assert page["response"]["body"]["text"] == "hello from the origin\n"
    gzipped = api.get(f"/api/requests/{api.wait_for(done(f'/gzip?{marker}'))['id']}")
    body = gzipped["response"]["body"]
    assert body["kind"] == "binary" and body["content_encoding"] == "gzip"
    assert base64.b64decode(body["base64"])[:2] == b"\x1f\x8b"  # as sent, not decompressed


def test_a_1_mib_download_keeps_only_the_limit(link: Link) -> None:
    api = Api.of(link.tunnel)
    marker = uuid.uuid4().hex
    for i in range(3):  # warm up the client's buffers before measuring its memory
        link.fetch(f"/bytes/{MIB}?warm={i}")
    before = rss_bytes(link.tunnel.proc.pid)
    downloads = 40
    for i in range(downloads):
        assert len(link.fetch(f"/bytes/{MIB}?{marker}={i}").body) == MIB
    last = api.wait_for(done(f"/bytes/{MIB}?{marker}={downloads - 1}"))
    grown = rss_bytes(link.tunnel.proc.pid) - before
    body = api.get(f"/api/requests/{last['id']}")["response"]["body"]
    assert (body["size"], body["captured"], body["truncated"]) == (MIB, LIMIT, True)
    assert body["kind"] == "binary" and base64.b64decode(body["base64"]) == pattern_bytes(LIMIT)
    listed = [e for e in api.entries() if marker in e["path"]]
    assert len(listed) == downloads and all(e["response_bytes"] == MIB for e in listed)
    # Whole bodies would be 40 MiB; the inspector holds 40 x 64 KiB = 2.5 MiB of them.
    assert grown < 12 * MIB, f"the client grew by {grown / MIB:.1f} MiB"


def test_replay_reaches_the_origin_again_and_is_listed(link: Link) -> None:
    api = Api.of(link.tunnel)
    key = uuid.uuid4().hex
    path = f"/count?key={key}"
    assert link.fetch(path, method="POST", body=b"first").status == 200
    original = api.wait_for(done(path))
    assert link.origin.stats()[f"count:{key}"] == 1

    again = api.replay(original["id"])
    assert (again["replay_of"], again["status"], again["visitor"]) == (
        original["id"],
        200,
        "replay",
    )
    assert again["request"]["body"]["text"] == "first"
    assert link.origin.stats()[f"count:{key}"] == 2

    edited = api.replay(original["id"], {"path": f"/count?key={key}-edited", "body": "changed"})
    assert edited["status"] == 200 and edited["request"]["target"] == f"/count?key={key}-edited"
    assert edited["request"]["body"]["text"] == "changed"
    assert ["Content-Length", "7"] in edited["request"]["headers"]
    stats = link.origin.stats()
    assert stats[f"count:{key}"] == 2 and stats[f"count:{key}-edited"] == 1

    newest = api.entries()[:2]
    assert [e["id"] for e in newest] == [edited["id"], again["id"]]
    assert all(e["replay_of"] == original["id"] for e in newest)
    # Straight to the origin: the relay and the forwarder never saw the replays. The
    # request log is written in batches, in order: once a later request's line is in,
    # a forwarded replay's line would be too.
    marker = f"/count?key=marker-{key}"
    assert link.fetch(marker).status == 200
    link.tunnel.wait_event("request", path=marker)
    forwarded = [e for e in link.tunnel.events if e.get("event") == "request"]
    assert [e["path"] for e in forwarded if key in e["path"]] == [path, marker]


async def test_a_websocket_upgrade_is_listed_without_its_messages(link: Link) -> None:
    api = Api.of(link.tunnel)
    path = f"/ws?id={uuid.uuid4().hex}"
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(f"http://127.0.0.1:{link.port}{path}", headers={"Host": link.host}) as ws,
    ):
        await ws.send_str("not recorded")
        assert (await ws.receive()).data == "not recorded"
        entry = api.wait_for(done(path))
    assert entry["status"] == 101 and entry["websocket"] and entry["duration_ms"] is not None
    record = api.get(f"/api/requests/{entry['id']}")
    assert record["response"]["status"] == 101
    assert record["request"]["body"]["size"] == record["response"]["body"]["size"] == 0
    refused = api.request(f"/api/requests/{entry['id']}/replay", method="POST")
    assert refused.status == 400 and b"not replayed" in refused.body


def test_foreign_hosts_and_origins_get_403(link: Link) -> None:
    api = Api.of(link.tunnel)
    key = uuid.uuid4().hex
    link.fetch(f"/count?key={key}")
    entry = api.wait_for(done(f"/count?key={key}"))
    rebound = api.request("/api/requests", host=f"attacker.example:{api.port}")
    assert rebound.status == 403 and b"DNS rebinding" in rebound.body
    assert api.request("/", host=f"rebind.attacker.example:{api.port}").status == 403
    forged = api.request(
        f"/api/requests/{entry['id']}/replay",
        method="POST",
        headers={"Origin": "http://attacker.example"},
    )
    assert forged.status == 403
    assert link.origin.stats()[f"count:{key}"] == 1


def test_no_inspect_serves_nothing_and_the_ready_event_says_none(origin: Origin) -> None:
    port = free_port()
    # TUNNEL_INSPECT asks for that port; --no-inspect (a flag) wins over it.
    with (
        run_relay() as relay,
        run_tunnel(
            origin.port, "--no-inspect", relay=relay, env={"TUNNEL_INSPECT": str(port)}
        ) as tunnel,
    ):
        ready = tunnel.events[0]
        assert ready["event"] == "ready" and "inspect" not in ready
        assert fetch(relay.port, tunnel.host, "/").status == 200
        with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port)):
            pass


def test_an_asked_port_in_use_is_a_short_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done_ = subprocess.run(
            [sys.executable, "-m", "tunnel_client", "8000", "--inspect", str(port)],
            cwd=ROOT,
            env=_env(),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert done_.returncode == 1 and "Traceback" not in done_.stderr
    assert done_.stderr.strip() == (
        f"tunnel: cannot serve the inspector on 127.0.0.1:{port} (Address already in use): "
        "choose another port with --inspect PORT, or turn it off with --no-inspect"
    )


def test_the_python_api_opens_no_inspector_unless_asked(origin: Origin) -> None:
    from tunnel_client import share

    with run_relay() as relay:
        with share(origin.port, relay=relay.url, environ={}) as quiet:
            assert quiet.inspect_url is None
        with share(origin.port, relay=relay.url, inspect=0, environ={}) as inspected:
            assert inspected.inspect_url is not None
            api = Api(inspected.inspect_url)
            host = urlsplit(inspected.url).netloc
            assert fetch(relay.port, host, "/echo?api=1").status == 200
            assert api.wait_for(done("/echo?api=1"))["status"] == 200


@pytest.fixture
def small_limit(origin: Origin) -> Iterator[tuple[Link, Api]]:
    """A tunnel whose inspector keeps 1 KiB of each body."""
    args = ("--inspect-body-limit", "1KiB")
    with run_relay() as relay, run_tunnel(origin.port, *args, relay=relay) as tunnel:
        yield Link(origin, relay, tunnel), Api.of(tunnel)


def test_the_body_limit_setting_is_used(small_limit: tuple[Link, Api]) -> None:
    link, api = small_limit
    link.fetch("/upload", method="POST", body=b"u" * 5000)
    entry = api.wait_for(done("/upload"))
    body = api.get(f"/api/requests/{entry['id']}")["request"]["body"]
    assert (body["size"], body["captured"], body["text"]) == (5000, 1024, "u" * 1024)
    assert api.get("/api/requests")["body_limit"] == 1024


@pytest.mark.timeout(60)
def test_requests_that_are_not_http_get_400_and_no_traceback_on_the_terminal(
    origin: Origin,
) -> None:
    with run_relay() as relay:
        tunnel = run_tunnel(origin.port, relay=relay)
        with tunnel as running:
            api = Api.of(running)
            for raw in (
                b"GET / HTTP/1.1\r\n\r\n",  # no Host: the inspector's own 403
                b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: x\r\n\r\n",
                b"GET / HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n\r\n",
            ):
                with socket.create_connection(("127.0.0.1", api.port), timeout=10) as sock:
                    sock.sendall(raw)
                    answer = sock.recv(100)
                    assert answer.split(b" ")[1] in (b"400", b"403"), answer
            assert api.get("/api/requests")["requests"] == []  # it still answers
    said = "\n".join(running.stderr_lines)
    assert "Traceback" not in said and "Error handling request" not in said, said
