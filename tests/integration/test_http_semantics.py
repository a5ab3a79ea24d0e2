"""Through the tunnel, exactly as direct: methods, statuses, headers, ranges and bodies.

Every test asks the same origin twice where that makes sense, once straight and once
through a real relay and tunnel process, and compares what came back (``Date`` aside).
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.client
import json
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import Link
from tests.origin import GZIP_BODY, HOP_RESPONSE_HEADERS, PATTERN, pattern_bytes
from tests.processes import Reply
from tunnel_client.config import CLIENT_WINDOW

pytestmark = pytest.mark.integration

MIB = 1 << 20
FILE_SIZE = MIB  # /file
# Framing and connection management may differ between two hops; nothing else may.
_PER_HOP = frozenset({"date", "transfer-encoding", "connection", "keep-alive"})
_HOP_BY_HOP_REQUEST = {
    "Connection": "keep-alive, X-Hop-Named",
    "X-Hop-Named": "named in Connection",
    "Keep-Alive": "timeout=5",
    "TE": "trailers",
    "Trailer": "X-Checksum",
    "Upgrade": "h2c",
    "Proxy-Authorization": "Basic dXNlcjpwYXNz",
}


def _end_to_end(reply: Reply) -> list[tuple[str, str]]:
    return [(name.lower(), value) for name, value in reply.headers if name.lower() not in _PER_HOP]


def _framing(reply: Reply) -> str:
    if (reply.header("Transfer-Encoding") or "").lower() == "chunked":
        return "chunked"
    return f"length {reply.header('Content-Length')}"


def _assert_same(via: Reply, direct: Reply) -> None:
    assert via.status == direct.status
    assert _end_to_end(via) == _end_to_end(direct)
    assert _framing(via) == _framing(direct)
    assert via.body == direct.body


def _echo(reply: Reply) -> dict[str, Any]:
    assert reply.status == 200, reply.body[:500]
    return json.loads(reply.body)  # type: ignore[no-any-return]


def _values(echo: dict[str, Any], name: str) -> list[str]:
    """Every value of one header the origin received, in order."""
    return [value for key, value in echo["headers"] if key.lower() == name.lower()]


def _names(echo: dict[str, Any]) -> set[str]:
    return {key.lower() for key, _ in echo["headers"]}


def _pattern_chunks(n: int) -> Iterator[bytes]:
    """/bytes/{n} as 64 KiB pieces, never held whole."""
    left = n
    while left > 0:
        piece = PATTERN[: min(left, len(PATTERN))]
        yield piece
        left -= len(piece)


@functools.cache
def _pattern_sha256(n: int) -> str:
    digest = hashlib.sha256()
    for piece in _pattern_chunks(n):
        digest.update(piece)
    return digest.hexdigest()


@functools.cache
def _file_bytes() -> bytes:
    return pattern_bytes(FILE_SIZE)


# -- methods and statuses ----------------------------------------------------------------


@pytest.mark.parametrize(
    "method", ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "PROPFIND", "PURGE"]
)
def test_every_method_reaches_the_origin_with_its_body(link: Link, method: str) -> None:
    body = f"the body of a {method} request".encode()
    via = _echo(link.fetch("/echo/m", method=method, body=body))
    direct = _echo(link.direct("/echo/m", method=method, body=body))
    assert via["method"] == direct["method"] == method
    assert via["target"] == direct["target"] == "/echo/m"
    assert via["length"] == direct["length"] == len(body)
    assert via["sha256"] == direct["sha256"] == hashlib.sha256(body).hexdigest()


@pytest.mark.parametrize("code", [200, 201, 204, 301, 304, 404, 418, 500, 503])
def test_status_codes_pass_unchanged(link: Link, code: int) -> None:
    via = link.fetch(f"/status/{code}")
    assert via.status == code
    _assert_same(via, link.direct(f"/status/{code}"))


@pytest.mark.parametrize("code", [301, 302, 307, 308])
def test_redirects_reach_the_visitor_unfollowed(link: Link, code: int) -> None:
    via = link.fetch(f"/redirect/{code}")
    assert via.status == code
    assert via.header("Location") == "/echo/redirected"
    assert via.body == b"moved\n"
    _assert_same(via, link.direct(f"/redirect/{code}"))


def test_a_conditional_request_gets_304_with_no_body(link: Link) -> None:
    etag = link.direct("/file").header("ETag")
    assert etag
    via = link.fetch("/file", headers={"If-None-Match": etag})
    assert via.status == 304
    assert via.body == b""
    assert via.header("ETag") == etag
    _assert_same(via, link.direct("/file", headers={"If-None-Match": etag}))


# -- headers and cookies -----------------------------------------------------------------


def test_repeated_response_headers_and_set_cookies_stay_separate_and_in_order(
    link: Link,
) -> None:
    via = link.fetch("/cookies")
    assert via.header_all("Set-Cookie") == [
        "a=1; Path=/",
        "b=2; Path=/; HttpOnly",
        "c=3; Path=/; SameSite=Lax",
    ]
    assert via.header_all("X-Repeated") == ["one", "two"]
    _assert_same(via, link.direct("/cookies"))


def _send_repeated_headers(port: int, host: str) -> dict[str, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    try:
        conn.putrequest("GET", "/echo", skip_host=True, skip_accept_encoding=True)
        conn.putheader("Host", host)
        conn.putheader("X-Multi", "first")
        conn.putheader("Cookie", "session=abc123; theme=dark")
        conn.putheader("X-Multi", "second")
        conn.putheader("X-Multi", "third")
        conn.endheaders()
        response = conn.getresponse()
        return _echo(Reply(response.status, response.getheaders(), response.read()))
    finally:
        conn.close()


def test_repeated_request_headers_and_cookies_reach_the_origin_in_order(link: Link) -> None:
    via = _send_repeated_headers(link.port, link.host)
    direct = _send_repeated_headers(link.origin.port, link.host)
    assert _values(via, "X-Multi") == _values(direct, "X-Multi") == ["first", "second", "third"]
    assert _values(via, "Cookie") == _values(direct, "Cookie") == ["session=abc123; theme=dark"]


@pytest.mark.parametrize("spoofed", [False, True], ids=["plain", "spoofed"])
def test_forwarding_headers_are_set_by_the_relay_alone(link: Link, spoofed: bool) -> None:
    headers = {}
    if spoofed:
        headers = {
            "X-Forwarded-For": "203.0.113.9",
            "X-Forwarded-Host": "evil.example",
            "X-Forwarded-Proto": "https",
            "Forwarded": "for=203.0.113.9;host=evil.example;proto=https",
        }
    echo = _echo(link.fetch("/echo", headers=headers))
    assert _values(echo, "X-Forwarded-For") == ["127.0.0.1"]
    assert _values(echo, "X-Forwarded-Host") == [link.host]
    assert _values(echo, "X-Forwarded-Proto") == ["http"]
    assert _values(echo, "Forwarded") == []
    assert _values(echo, "Host") == [link.host]


def test_hop_by_hop_request_headers_are_stripped(link: Link) -> None:
    headers = {**_HOP_BY_HOP_REQUEST, "X-End-To-End": "kept"}
    direct = _echo(link.direct("/echo", headers=headers))
    # The origin does see them when asked directly: the test really sends them.
    assert {name.lower() for name in _HOP_BY_HOP_REQUEST} <= _names(direct)
    via = _echo(link.fetch("/echo", headers=headers))
    assert not {name.lower() for name in _HOP_BY_HOP_REQUEST} & _names(via)
    assert _values(via, "X-End-To-End") == ["kept"]


def test_hop_by_hop_response_headers_are_stripped(link: Link) -> None:
    hop_names = {name.lower() for name, _ in HOP_RESPONSE_HEADERS}
    direct = link.direct("/hop")
    assert hop_names <= {name.lower() for name, _ in direct.headers}
    via = link.fetch("/hop")
    assert via.status == 200
    assert not hop_names & {name.lower() for name, _ in via.headers}
    assert via.header_all("X-End-To-End") == ["kept"]
    assert via.body == direct.body == b"hop\n"


# -- HEAD and ranges ---------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/bytes/100000", "/file", "/cookies"])
def test_head_has_the_headers_and_no_body(link: Link, path: str) -> None:
    via = link.fetch(path, method="HEAD")
    assert via.status == 200
    assert via.header("Content-Length") == link.direct(path).header("Content-Length")
    _assert_same(via, link.direct(path, method="HEAD"))
    # A body after the head would corrupt the next response on the same connection.
    conn = http.client.HTTPConnection("127.0.0.1", link.port, timeout=15)
    try:
        conn.request("HEAD", path, headers={"Host": link.host})
        head = conn.getresponse()
        assert head.status == 200
        assert head.read() == b""
        conn.request("GET", "/", headers={"Host": link.host})
        after = conn.getresponse()
        assert (after.status, after.read()) == (200, b"hello from the origin\n")
    finally:
        conn.close()


@pytest.mark.parametrize(
    ("ranges", "start", "end"),
    [
        ("bytes=100-199", 100, 199),
        ("bytes=-10", FILE_SIZE - 10, FILE_SIZE - 1),
        ("bytes=1048000-", 1048000, FILE_SIZE - 1),
        ("bytes=0-", 0, FILE_SIZE - 1),
    ],
)
def test_a_range_request_gets_206_and_exactly_those_bytes(
    link: Link, ranges: str, start: int, end: int
) -> None:
    via = link.fetch("/file", headers={"Range": ranges})
    assert via.status == 206
    assert via.header("Content-Range") == f"bytes {start}-{end}/{FILE_SIZE}"
    assert via.body == _file_bytes()[start : end + 1]
    _assert_same(via, link.direct("/file", headers={"Range": ranges}))


@pytest.mark.parametrize("ranges", ["bytes=0-3,10-12", "bytes=2000000-", "bytes=5-2", "lines=1-2"])
def test_odd_range_requests_behave_as_direct(link: Link, ranges: str) -> None:
    _assert_same(
        link.fetch("/file", headers={"Range": ranges}),
        link.direct("/file", headers={"Range": ranges}),
    )


# -- bodies ------------------------------------------------------------------------------

SIZES = [0, 1, 300_001, 100 * MIB]  # 300 001: more than the relay's 256 KiB window


@pytest.mark.timeout(300)
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("kind", ["bytes", "chunked"])
def test_download_arrives_byte_identical(link: Link, kind: str, size: int) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", link.port, timeout=60)
    try:
        conn.request("GET", f"/{kind}/{size}", headers={"Host": link.host})
        response = conn.getresponse()
        assert response.status == 200
        if kind == "bytes":
            assert response.getheader("Content-Length") == str(size)
            assert response.getheader("Transfer-Encoding") is None
        else:
            assert response.getheader("Transfer-Encoding") == "chunked"
            assert response.getheader("Content-Length") is None
        digest = hashlib.sha256()
        length = 0
        while chunk := response.read(MIB):
            digest.update(chunk)
            length += len(chunk)
    finally:
        conn.close()
    assert length == size
    assert digest.hexdigest() == _pattern_sha256(size)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("framing", ["fixed", "chunked"])
def test_upload_arrives_byte_identical(link: Link, framing: str, size: int) -> None:
    headers = {"Host": link.host, "Content-Type": "application/octet-stream"}
    if framing == "fixed":
        headers["Content-Length"] = str(size)
    else:
        headers["Transfer-Encoding"] = "chunked"
    conn = http.client.HTTPConnection("127.0.0.1", link.port, timeout=60)
    try:
        conn.request(
            "POST",
            "/upload",
            body=_pattern_chunks(size),
            headers=headers,
            encode_chunked=framing == "chunked",
        )
        response = conn.getresponse()
        echo = _echo(Reply(response.status, response.getheaders(), response.read()))
    finally:
        conn.close()
    assert echo["length"] == size
    assert echo["sha256"] == _pattern_sha256(size)
    if framing == "fixed":
        assert _values(echo, "Content-Length") == [str(size)]
    elif size > CLIENT_WINDOW:
        # Streamed on without knowing the length: never gathered up to count it (an
        # upload flows against the client's window, and more than that cannot all be at
        # the client before its request starts).
        assert _values(echo, "Transfer-Encoding") == ["chunked"]
        assert _values(echo, "Content-Length") == []
    elif size > 0:
        # A body that was all at the client before its request started may go with its
        # length: the relay forwards each chunk as it is decoded, so a 1-byte body and
        # its end often travel with the request head.
        framing = (_values(echo, "Transfer-Encoding"), _values(echo, "Content-Length"))
        assert framing in ((["chunked"], []), ([], [str(size)])), framing


def test_a_gzip_response_keeps_its_encoding_and_compressed_bytes(link: Link) -> None:
    via = link.fetch("/gzip", headers={"Accept-Encoding": "gzip"})
    assert via.status == 200
    assert via.header("Content-Encoding") == "gzip"
    assert via.header("Content-Length") == str(len(GZIP_BODY))
    assert via.body == GZIP_BODY
    assert gzip.decompress(via.body) == b"compressed content " * 100
    _assert_same(via, link.direct("/gzip", headers={"Accept-Encoding": "gzip"}))


def test_a_gzip_request_body_reaches_the_origin_unchanged(link: Link) -> None:
    plain = b"a request body that compresses well; " * 2000
    packed = gzip.compress(plain, mtime=0)
    headers = {"Content-Encoding": "gzip", "Content-Type": "application/octet-stream"}
    via = _echo(link.fetch("/echo", method="POST", body=packed, headers=headers))
    direct = _echo(link.direct("/echo", method="POST", body=packed, headers=headers))
    # The origin decodes (or not) exactly what it was sent, with the same headers.
    assert (via["length"], via["sha256"]) == (direct["length"], direct["sha256"])
    assert via["sha256"] in (
        hashlib.sha256(packed).hexdigest(),
        hashlib.sha256(plain).hexdigest(),
    )
    assert _values(via, "Content-Encoding") == ["gzip"]
    assert _values(via, "Content-Length") == [str(len(packed))]


# -- request targets ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "target",
    [
        "/echo/a/../b",
        "/echo//x",
        "/echo/%2F%2e%2e",
        "/echo/./c/",
        "/echo/..%2F..%2Fetc%2Fpasswd",
        "/echo/%7euser/%E2%9C%93",
        "/echo?q=a%20b&x=%2F&y=[]{}|^`&z=%C3%A9&w='\"<>!$()*+,;=:@~&&=",
        "/echo?a=1&a=2&b&=&c=%&d=%2",
    ],
)
def test_the_request_target_is_not_normalised(link: Link, target: str) -> None:
    via = _echo(link.fetch(target))
    assert via["target"] == target
    assert via["target"] == _echo(link.direct(target))["target"]


# -- Expect: 100-continue ------------------------------------------------------------------


def _read_head(reader: Any) -> tuple[bytes, dict[str, str]]:
    status = reader.readline()
    headers = {}
    while (line := reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers


def test_expect_100_continue_is_answered_before_the_body_is_sent(link: Link) -> None:
    body = PATTERN * 32  # 2 MiB: curl asks for 100-continue above 1 MiB
    head = (
        f"POST /upload HTTP/1.1\r\nHost: {link.host}\r\nContent-Length: {len(body)}\r\n"
        "Content-Type: application/octet-stream\r\nExpect: 100-continue\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", link.port), timeout=15) as sock:
        reader = sock.makefile("rb")
        try:
            started = time.monotonic()
            sock.sendall(head.encode())
            interim, _ = _read_head(reader)  # nothing of the body was sent yet
            waited = time.monotonic() - started
            assert interim.startswith(b"HTTP/1.1 100 ")
            # curl sends anyway after waiting 1 s: the answer must come well before.
            assert waited < 1.0
            sock.sendall(body)
            status, headers = _read_head(reader)
            payload = reader.read(int(headers["content-length"]))
        finally:
            reader.close()
    assert status.startswith(b"HTTP/1.1 200 ")
    echo = json.loads(payload)
    assert (echo["length"], echo["sha256"]) == (len(body), hashlib.sha256(body).hexdigest())
    assert _values(echo, "Expect") == []  # the relay answered it; the origin never waits


def test_curl_uploads_with_expect_100_continue_without_a_stall(link: Link, tmp_path: Path) -> None:
    upload = tmp_path / "upload.bin"
    upload.write_bytes(PATTERN * 48)  # 3 MiB
    result = subprocess.run(
        [
            "curl",
            "--silent",
            "--show-error",
            "--verbose",
            "--header",
            f"Host: {link.host}",
            "--header",
            "Expect: 100-continue",
            "--header",
            "Content-Type: application/octet-stream",
            "--data-binary",
            f"@{upload}",
            "--write-out",
            "\n%{http_code}",
            f"http://127.0.0.1:{link.port}/upload",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    payload, _, code = result.stdout.rpartition("\n")
    assert code == "200"
    # curl waits 1 s for a 100 Continue, then gives up waiting and sends anyway.
    assert "< HTTP/1.1 100 Continue" in result.stderr
    assert "Done waiting for 100-continue" not in result.stderr
    echo = json.loads(payload)
    assert echo["length"] == upload.stat().st_size
    assert echo["sha256"] == hashlib.sha256(upload.read_bytes()).hexdigest()
