"""Hostile visitors: smuggling, desync, Host tricks, forged headers, oversized requests.

Two links, A and B, each served by its own origin process, so every answer shows which
origin (hence which tunnel) it came from (``/whoami`` includes the origin's pid). Each
request of the corpus goes to the relay on a raw socket, byte for byte as written here;
then, if the relay kept the connection open, a normal request for the *other* link
follows on the same connection and must get its own, correct answer from B (no desync,
no request stuck to the first link); if the relay said it would close, it must have.
No answer may be a 5xx, and every answer from an origin must come from the origin of
the link its Host names.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import pytest

from tests.processes import Origin, RelayProcess, run_origin, run_relay, run_tunnel
from tests.rawhttp import RawConnection, RawResponse

pytestmark = pytest.mark.integration

DOMAIN = "share.test"
MAX_HEADER_BYTES = 4096
MAX_BODY_BYTES = 65536


@dataclass
class Links:
    relay: RelayProcess
    a: str
    """Host header value of link A (with the port)."""
    b: str
    pids: dict[int, str]
    """Origin pid -> the link it serves ("A" or "B")."""

    def bare(self, host: str) -> str:
        return host.rsplit(":", 1)[0]


@pytest.fixture(scope="module")
def links(origin: Origin) -> Iterator[Links]:
    with (
        run_origin() as origin_b,
        run_relay(
            "--domain",
            DOMAIN,
            "--max-header-bytes",
            f"{MAX_HEADER_BYTES}",
            "--max-body-bytes",
            f"{MAX_BODY_BYTES}",
            "--log-level",
            "warning",
        ) as relay,
        run_tunnel(origin.port, relay=relay) as tunnel_a,
        run_tunnel(origin_b.port, relay=relay) as tunnel_b,
    ):
        yield Links(
            relay,
            tunnel_a.host,
            tunnel_b.host,
            {origin.proc.pid: "A", origin_b.proc.pid: "B"},
        )
        assert relay.proc.poll() is None, "the relay died"
        log = relay.stderr_text()
        assert "Traceback" not in log and "Error handling request" not in log, log[-3000:]


def request(
    host: str,
    path: str = "/whoami",
    *,
    method: str = "GET",
    headers: str = "",
    body: bytes = b"",
) -> bytes:
    """A request written out by hand; ``headers`` are raw lines, each ending in CRLF."""
    return f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n{headers}\r\n".encode() + body


# -- expectations ---------------------------------------------------------------------


Check = Callable[[dict[str, Any], "Links"], None]


@dataclass(frozen=True)
class FromOrigin:
    """An answer from the origin of one link (``A`` or ``B``)."""

    link: str
    check: Check | None = None
    status: int = 200


@dataclass(frozen=True)
class FromRelay:
    """One of the relay's own error pages."""

    status: int


Expect = FromOrigin | FromRelay


def headers_of(echo: dict[str, Any], name: str) -> list[str]:
    return [v for k, v in echo["headers"] if k.lower() == name.lower()]


def body_is(data: bytes) -> Check:
    def check(echo: dict[str, Any], links: Links) -> None:
        assert echo["length"] == len(data), echo
        assert echo["sha256"] == hashlib.sha256(data).hexdigest(), echo

    return check


def target_is(target: str) -> Check:
    def check(echo: dict[str, Any], links: Links) -> None:
        assert echo["target"] == target, echo

    return check


def forwarding_is_the_relays(echo: dict[str, Any], links: Links) -> None:
    """Only the relay's own forwarding headers reach the origin."""
    assert headers_of(echo, "X-Forwarded-For") == ["127.0.0.1"], echo
    assert headers_of(echo, "X-Forwarded-Host") == [links.a], echo
    assert headers_of(echo, "X-Forwarded-Proto") == ["http"], echo
    for forged in ("Forwarded", "X-Real-IP", "X-Forwarded-Port", "X-Forwarded-Prefix"):
        assert headers_of(echo, forged) == [], (forged, echo)


def no_upgrade_passes(echo: dict[str, Any], links: Links) -> None:
    for hop in ("Upgrade", "HTTP2-Settings", "Connection", "Keep-Alive", "TE"):
        assert headers_of(echo, hop) == [], (hop, echo)


def gzip_passes_unchanged(echo: dict[str, Any], links: Links) -> None:
    # The origin decompresses what it receives: it can only get the original text
    # back if the relay passed the compressed bytes and their encoding unchanged.
    assert headers_of(echo, "Content-Encoding") == ["gzip"], echo
    body_is(PLAIN)(echo, links)


def no_injected_header(echo: dict[str, Any], links: Links) -> None:
    assert headers_of(echo, "X-Injected") == [], echo
    target_is("/whoami?a=%0d%0aX-Injected:%201")(echo, links)


def latin1_value_kept(echo: dict[str, Any], links: Links) -> None:
    assert len(headers_of(echo, "X-Latin")) == 1, echo


PLAIN = b"compressed request body " * 40
GZIPPED = gzip.compress(PLAIN)


@dataclass(frozen=True)
class Case:
    name: str
    raw: bytes
    """The bytes to send; ``{a}`` and ``{b}`` stand for the Host of link A and B."""
    expect: tuple[Expect, ...]

    def build(self, links: Links) -> bytes:
        return self.raw.replace(b"{a}", links.a.encode()).replace(b"{b}", links.b.encode())


def case(name: str, raw: str | bytes, *expect: Expect) -> Case:
    return Case(name, raw.encode("latin-1") if isinstance(raw, str) else raw, expect)


def chunked(body: bytes, size: int = 0x4000) -> str:
    pieces = [body[i : i + size] for i in range(0, len(body), size)]
    return "".join(f"{len(p):x}\r\n{p.decode('latin-1')}\r\n" for p in pieces) + "0\r\n\r\n"


GET_A = "GET /whoami HTTP/1.1\r\nHost: {a}\r\n"
POST_A = "POST /whoami HTTP/1.1\r\nHost: {a}\r\n"
CHUNKED = "Transfer-Encoding: chunked\r\n"
HELLO = chunked(b"hello")
BAD = FromRelay(400)
A = FromOrigin("A")
BIG = MAX_HEADER_BYTES * 3
"""Longer than any line the relay's HTTP parser accepts."""

CORPUS = [
    # Conflicting, duplicate or malformed lengths.
    case("cl-cl-same", POST_A + "Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello", BAD),
    case("cl-cl-conflict", POST_A + "Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", BAD),
    case("cl-list", POST_A + "Content-Length: 5, 5\r\n\r\nhello", BAD),
    case("cl-negative", POST_A + "Content-Length: -1\r\n\r\n", BAD),
    case("cl-plus-sign", POST_A + "Content-Length: +5\r\n\r\nhello", BAD),
    case("cl-hex", POST_A + "Content-Length: 0x5\r\n\r\nhello", BAD),
    # Smuggling: CL.TE, TE.CL, TE.TE and odd transfer encodings.
    case("cl-te", POST_A + "Content-Length: 6\r\n" + CHUNKED + "\r\n0\r\n\r\nG", BAD),
    case("te-cl", POST_A + CHUNKED + "Content-Length: 3\r\n\r\n" + HELLO, BAD),
    case("te-te", POST_A + CHUNKED + "Transfer-Encoding: cow\r\n\r\n" + HELLO, BAD),
    case(
        "te-chunked-identity", POST_A + "Transfer-Encoding: chunked, identity\r\n\r\n" + HELLO, BAD
    ),
    case("te-xchunked", POST_A + "Transfer-Encoding: xchunked\r\n\r\n" + HELLO, BAD),
    case("te-obs-fold", POST_A + "Transfer-Encoding:\r\n chunked\r\n\r\n" + HELLO, BAD),
    case("te-space-before-colon", POST_A + "Transfer-Encoding : chunked\r\n\r\n" + HELLO, BAD),
    case(
        "te-identity-chunked",
        POST_A + "Transfer-Encoding: identity, chunked\r\n\r\n" + HELLO,
        FromOrigin("A", body_is(b"hello")),
    ),
    case(
        "te-uppercase",
        POST_A + "Transfer-Encoding: CHUNKED\r\n\r\n" + HELLO,
        FromOrigin("A", body_is(b"hello")),
    ),
    case("chunk-size-garbage", POST_A + CHUNKED + "\r\nzz\r\nhello\r\n0\r\n\r\n", BAD),
    case(
        "chunk-size-overflow", POST_A + CHUNKED + "\r\n" + "f" * 19 + "\r\nhello\r\n0\r\n\r\n", BAD
    ),
    case("chunk-bare-lf", POST_A + CHUNKED + "\r\n5\nhello\n0\n\n", BAD),
    case(
        "chunk-extension",
        POST_A + CHUNKED + "\r\n5;ext=1\r\nhello\r\n0\r\n\r\n",
        FromOrigin("A", body_is(b"hello")),
    ),
    case(
        "get-with-body",
        GET_A + "Content-Length: 5\r\n\r\nhello",
        FromOrigin("A", body_is(b"hello")),
    ),
    # A request where a body might be: it is the next request, and goes to its own Host.
    case(
        "cl0-then-request-for-b",
        GET_A + "Content-Length: 0\r\n\r\nGET /whoami?hidden=1 HTTP/1.1\r\nHost: {b}\r\n\r\n",
        A,
        FromOrigin("B", target_is("/whoami?hidden=1")),
    ),
    case(
        "pipelined-a-then-b",
        GET_A + "\r\nGET /whoami?p=2 HTTP/1.1\r\nHost: {b}\r\n\r\n",
        A,
        FromOrigin("B", target_is("/whoami?p=2")),
    ),
    # Folded, malformed, CR/LF/NUL-carrying headers.
    case("obs-fold", GET_A + "X-A: a\r\n b\r\n\r\n", BAD),
    case("name-with-space", GET_A + "Bad Name: x\r\n\r\n", BAD),
    case("nul-in-value", GET_A + "X-A: a\x00b\r\n\r\n", BAD),
    case("bare-cr-in-value", GET_A + "X-A: a\rX-Injected: 1\r\n\r\n", BAD),
    case("lf-line-endings", "GET /whoami HTTP/1.1\nHost: {a}\n\n", BAD),
    case("no-colon", GET_A + "NoColon\r\n\r\n", BAD),
    case(
        "crlf-in-target-encoded",
        "GET /whoami?a=%0d%0aX-Injected:%201 HTTP/1.1\r\nHost: {a}\r\n\r\n",
        FromOrigin("A", no_injected_header),
    ),
    case("latin1-value", GET_A + "X-Latin: caf\xe9\r\n\r\n", FromOrigin("A", latin1_value_kept)),
    # Host tricks.
    case("absolute-other-host", "GET http://evil.example/ HTTP/1.1\r\nHost: {a}\r\n\r\n", BAD),
    case("absolute-b-host-a", "GET http://{b}/whoami HTTP/1.1\r\nHost: {a}\r\n\r\n", BAD),
    case("absolute-userinfo", "GET http://{a}@{b}/whoami HTTP/1.1\r\nHost: {a}\r\n\r\n", BAD),
    case(
        "absolute-own-host",
        "GET http://{a}/whoami?x=1 HTTP/1.1\r\nHost: {a}\r\n\r\n",
        FromOrigin("A", target_is("/whoami?x=1")),
    ),
    case("two-hosts", GET_A + "Host: {b}\r\n\r\n", BAD),
    case("no-host", "GET /whoami HTTP/1.1\r\n\r\n", BAD),
    case(
        "host-b-forwarded-host-a",
        "GET /whoami HTTP/1.1\r\nHost: {b}\r\nX-Forwarded-Host: {a}\r\n\r\n",
        FromOrigin("B"),
    ),
    case("host-below-a-link", "GET /whoami HTTP/1.1\r\nHost: x.{a}\r\n\r\n", FromRelay(404)),
    case("connect-to-b", "CONNECT {b} HTTP/1.1\r\nHost: {a}\r\n\r\n", BAD),
    # Forged forwarding headers are replaced, hop-by-hop ones dropped.
    case(
        "forged-forwarding",
        GET_A + "X-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Host: evil.example\r\n"
        "X-Forwarded-Proto: https\r\nForwarded: for=6.6.6.6;host=evil.example\r\n"
        "X-Real-IP: 6.6.6.6\r\nX-Forwarded-Port: 1\r\nX-Forwarded-Prefix: /evil\r\n\r\n",
        FromOrigin("A", forwarding_is_the_relays),
    ),
    case(
        "connection-names-x-forwarded-for",
        GET_A + "Connection: X-Forwarded-For, X-Forwarded-Host\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n",
        FromOrigin("A", forwarding_is_the_relays),
    ),
    case(
        "h2c-upgrade",
        GET_A + "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
        "HTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\nTE: trailers\r\n\r\n",
        FromOrigin("A", no_upgrade_passes),
    ),
    # Sizes: 431 for heads over --max-header-bytes, 413 for bodies over --max-body-bytes.
    case("header-over-limit", GET_A + f"X-Big: {'a' * MAX_HEADER_BYTES}\r\n\r\n", FromRelay(431)),
    case("header-line-over-parser-limit", GET_A + f"X-Big: {'a' * BIG}\r\n\r\n", FromRelay(431)),
    case("many-small-headers", GET_A + "X-Small: v\r\n" * 1100 + "\r\n", FromRelay(431)),
    case("many-cookies", GET_A + f"Cookie: c={'v' * 90}\r\n" * 50 + "\r\n", FromRelay(431)),
    case(
        "target-over-limit",
        f"GET /whoami?{'a' * BIG} HTTP/1.1\r\nHost: {{a}}\r\n\r\n",
        FromRelay(431),
    ),
    case(
        "body-over-limit",
        POST_A + f"Content-Length: {MAX_BODY_BYTES + 1}\r\n\r\n" + "x" * (MAX_BODY_BYTES + 1),
        FromRelay(413),
    ),
    case(
        "chunked-body-over-limit",
        POST_A + CHUNKED + "\r\n" + chunked(b"x" * (MAX_BODY_BYTES + 1)),
        FromRelay(413),
    ),
    case(
        "body-at-limit",
        POST_A + f"Content-Length: {MAX_BODY_BYTES}\r\n\r\n" + "y" * MAX_BODY_BYTES,
        FromOrigin("A", body_is(b"y" * MAX_BODY_BYTES)),
    ),
    # Compressed bodies pass unchanged.
    case(
        "gzip-body",
        POST_A.encode()
        + f"Content-Encoding: gzip\r\nContent-Length: {len(GZIPPED)}\r\n\r\n".encode()
        + GZIPPED,
        FromOrigin("A", gzip_passes_unchanged),
    ),
    case(
        "gzip-body-chunked",
        POST_A + "Content-Encoding: gzip\r\n" + CHUNKED + "\r\n" + chunked(GZIPPED, 100),
        FromOrigin("A", gzip_passes_unchanged),
    ),
    # Connection handling.
    case(
        "expect-100-continue",
        POST_A + "Expect: 100-continue\r\nContent-Length: 5\r\n\r\nhello",
        FromOrigin("A", body_is(b"hello")),
    ),
    case("connection-close", GET_A + "Connection: close\r\n\r\n", A),
    case("http-1.0", "GET /whoami HTTP/1.0\r\nHost: {a}\r\n\r\n", A),
    case("te-chunked-on-get", GET_A + CHUNKED + "\r\n0\r\n\r\n", A),
    case("trace-method", "TRACE /whoami HTTP/1.1\r\nHost: {a}\r\n\r\n", A),
]


def read_final(conn: RawConnection) -> RawResponse | None:
    """The next response that is not an informational (1xx) one."""
    while True:
        response = conn.read_response()
        if response is None or response.status >= 200:
            return response


def check_answer(links: Links, response: RawResponse, expect: Expect, name: str) -> None:
    assert response.status < 500, f"{name}: {response}"
    if isinstance(expect, FromRelay):
        assert response.from_relay and response.status == expect.status, f"{name}: {response}"
        return
    assert not response.from_relay, f"{name}: the relay answered itself: {response}"
    echo = response.json()
    assert links.pids.get(echo["pid"]) == expect.link, (
        f"{name}: answered by origin {links.pids.get(echo['pid'])}, not {expect.link}"
    )
    assert response.status == expect.status, f"{name}: {response}"
    if expect.check is not None:
        expect.check(echo, links)


def test_the_corpus_is_big_enough() -> None:
    assert len(CORPUS) >= 30
    assert len({c.name for c in CORPUS}) == len(CORPUS)


@pytest.mark.parametrize("hostile", CORPUS, ids=lambda c: c.name)
def test_hostile_request_then_a_normal_one(links: Links, hostile: Case) -> None:
    with RawConnection(links.relay.port) as conn:
        assert conn.send(hostile.build(links))
        last: RawResponse | None = None
        for expect in hostile.expect:
            response = read_final(conn)
            assert response is not None, f"{hostile.name}: closed without an answer"
            check_answer(links, response, expect, hostile.name)
            last = response
        assert last is not None
        if not last.keeps_alive:
            assert conn.closed_by_peer(), f"{hostile.name}: said it would close, did not"
            return
        # Same connection, the other link: must reach B, with nothing left over.
        assert conn.send(request(links.b, "/whoami?follow=1"))
        follow = read_final(conn)
        assert follow is not None, f"{hostile.name}: closed after a keep-alive answer"
        check_answer(links, follow, FromOrigin("B", target_is("/whoami?follow=1")), hostile.name)
        assert not conn.buffer, f"{hostile.name}: bytes left over: {conn.buffer[:200]!r}"


def test_switching_host_on_one_connection_reaches_each_link(links: Links) -> None:
    with RawConnection(links.relay.port) as conn:
        for i in range(8):
            link, host = ("A", links.a) if i % 2 == 0 else ("B", links.b)
            assert conn.send(request(host, f"/whoami?i={i}"))
            response = read_final(conn)
            assert response is not None
            check_answer(links, response, FromOrigin(link, target_is(f"/whoami?i={i}")), f"#{i}")


def test_a_head_that_never_ends_is_cut_at_the_limit(links: Links) -> None:
    """431 as soon as the head passes the limit, without waiting for its end."""
    with RawConnection(links.relay.port, timeout=10) as conn:
        assert conn.send(f"GET /whoami HTTP/1.1\r\nHost: {links.a}\r\n".encode())
        line = f"X-Pad: {'p' * 200}\r\n".encode()
        sent = 0
        while sent < MAX_HEADER_BYTES * 4 and conn.send(line):
            sent += len(line)
        response = conn.read_response()
        assert response is not None and response.status == 431, response
        assert response.from_relay
        assert conn.closed_by_peer()


COOKIES = [
    # (what the app sets, what the visitor must get); {a}/{b}: the links' bare hosts
    ("a=1; Domain=share.test; Path=/", "a=1; Path=/"),
    ("b=1; Domain=.share.test", "b=1"),
    ("c=1; Domain=test", "c=1"),
    ("d=1; Domain=.test; Secure", "d=1; Secure"),
    ("e=1; domain=SHARE.TEST; HttpOnly", "e=1; HttpOnly"),
    ("f=1; Domain=share.test.", "f=1"),
    ("g=1; Domain = share.test ; SameSite=Lax", "g=1; SameSite=Lax"),
    ("h=1; Domain={b}", "h=1"),
    ("i=1; Path=/; Domain={a}", "i=1; Path=/; Domain={a}"),
    ("j=1; Domain=.{a}", "j=1; Domain=.{a}"),
    ("k=1; Domain={a}; Domain=share.test", "k=1; Domain={a}"),
    ("l=1; Path=/x; Max-Age=60", "l=1; Path=/x; Max-Age=60"),
]


def test_cookies_for_the_relay_domain_become_host_only(links: Links) -> None:
    hosts = {"a": links.bare(links.a), "b": links.bare(links.b)}
    query = "&".join("c=" + quote(sent.format(**hosts)) for sent, _ in COOKIES)
    with RawConnection(links.relay.port) as conn:
        assert conn.send(request(links.a, f"/set-cookies?{query}"))
        response = read_final(conn)
    assert response is not None and response.status == 200, response
    assert response.header_all("Set-Cookie") == [got.format(**hosts) for _, got in COOKIES]


def test_forwarding_headers_cannot_be_forged_on_links_either(links: Links) -> None:
    """The same forged headers on B: B's origin sees the relay's values for B."""
    forged = f"X-Forwarded-For: 1.2.3.4, 5.6.7.8\r\nX-Forwarded-Host: {links.a}\r\n"
    with RawConnection(links.relay.port) as conn:
        assert conn.send(request(links.b, headers=forged + "Forwarded: for=1.2.3.4\r\n"))
        response = read_final(conn)
    assert response is not None
    echo = json.loads(response.body)
    assert links.pids[echo["pid"]] == "B"
    assert headers_of(echo, "X-Forwarded-For") == ["127.0.0.1"]
    assert headers_of(echo, "X-Forwarded-Host") == [links.b]
    assert headers_of(echo, "Forwarded") == []


@pytest.mark.parametrize(
    ("raw", "said"),
    [
        ("GET * HTTP/1.1\r\nHost: {a}\r\n\r\n", b"is for OPTIONS requests only"),
        ("GET nopath HTTP/1.1\r\nHost: {a}\r\n\r\n", b"must be a path that starts with /"),
        ("CONNECT {a} HTTP/1.1\r\nHost: {a}\r\n\r\n", b"does not tunnel CONNECT"),
        ("GET http://other.example/ HTTP/1.1\r\nHost: {a}\r\n\r\n", b"names a different host"),
        ("G@T / HTTP/1.1\r\nHost: {a}\r\n\r\n", b"method is not a token"),
        ("GET /_tunnel HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", b"the relay's tunnel endpoint"),
    ],
    ids=["star", "no-slash", "connect", "other-host", "bad-method", "tunnel-by-hand"],
)
def test_a_refused_request_hears_the_reason_that_applies(
    links: Links, raw: str, said: bytes
) -> None:
    with RawConnection(links.relay.port) as conn:
        assert conn.send(raw.format(a=links.a).encode())
        response = read_final(conn)
    assert response is not None and response.status == 400, response
    assert said in response.body, response.body
