"""Request and response heads, their JSON encoding, and header hygiene.

An OPEN frame carries a :class:`RequestHead` from the relay to the client; a REPLY
frame carries a :class:`ResponseHead` back. Both are JSON objects::

    {"method": "GET", "target": "/a?b=1", "headers": [["Host", "x.example"], ...],
     "websocket": false}
    {"status": 200, "headers": [["Content-Type", "text/html"], ...]}

Headers are a list of ``[name, value]`` pairs so that repeated headers (``Set-Cookie``)
and their order survive. Decoding validates every field against the limits below, so a
hostile peer's head is refused with :class:`~.errors.RemoteProtocolError` before any
byte of it reaches an HTTP library. Unknown keys are ignored, for forward compatibility.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from .errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from .jsontext import plain_encoder

__all__ = [
    "HOP_BY_HOP",
    "MAX_HEADERS",
    "MAX_TARGET_BYTES",
    "Headers",
    "RequestHead",
    "ResponseHead",
    "strip_hop_by_hop",
]

Headers = tuple[tuple[str, str], ...]

MAX_HEADERS = 512
"""At most this many header lines in one head."""

MAX_TARGET_BYTES = 64 * 1024
"""The request target (path and query) is at most 64 KiB."""

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
"""Headers that describe one connection, never forwarded by a proxy (RFC 9110 §7.6.1)."""

_TCHAR_RUN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_TOKEN = re.compile(_TCHAR_RUN + r"\Z")
_TOKENS = re.compile(rf"(?:{_TCHAR_RUN}\n)*{_TCHAR_RUN}")  # names joined by newlines
_BAD_VALUE = re.compile(r"[\x00\r\n]")
_BAD_TARGET = re.compile(r"[\x00-\x20\x7f]")
_PAIR_TYPES = frozenset({list, tuple})
_JUST_PAIRS = frozenset({2})


def strip_hop_by_hop(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Drop hop-by-hop headers, including every header named in ``Connection``."""
    pairs = list(headers)
    drop = HOP_BY_HOP | {
        token.strip().lower()
        for name, value in pairs
        if name.lower() == "connection"
        for token in value.split(",")
    }
    return [(n, v) for n, v in pairs if n.lower() not in drop]


def _check_headers(raw: Any, error: type[ProtocolError]) -> Headers:
    """Validate header pairs from the wire; return them as a tuple of tuples.

    Heads are checked on every request, so the common case (all valid) is done in bulk:
    one regex over all names and one over all values. Only a failure walks the pairs
    one by one, to say which header is wrong.
    """
    if not isinstance(raw, list | tuple):
        raise error("headers must be a list of [name, value] pairs")
    if len(raw) > MAX_HEADERS:
        raise error(f"{len(raw)} headers exceed the limit of {MAX_HEADERS}")
    if not raw:
        return ()
    # map() and zip() keep the per-header loop in C (a generator expression per check
    # cost a third of the time); str.join refuses anything that is not a string.
    if set(map(type, raw)) <= _PAIR_TYPES and set(map(len, raw)) == _JUST_PAIRS:
        names, values = zip(*raw, strict=True)
        try:
            joined_names = "\n".join(names)
            joined_values = "\t".join(values)
        except TypeError:
            pass  # a name or value that is no string: said below
        else:
            if (
                _TOKENS.fullmatch(joined_names)
                # a newline inside a name would pass as two names: count them
                and joined_names.count("\n") == len(names) - 1
                and not _BAD_VALUE.search(joined_values)
            ):
                return tuple(zip(names, values, strict=True))
    for pair in raw:
        if not isinstance(pair, list | tuple) or len(pair) != 2:
            raise error("each header must be a [name, value] pair")
        name, value = pair
        if not isinstance(name, str) or not _TOKEN.match(name):
            raise error(f"invalid header name {name!r:.80}")
        if not isinstance(value, str) or _BAD_VALUE.search(value):
            raise error(f"invalid value for header {name}")
    return tuple((name, value) for name, value in raw)


def _check_request(
    method: object, target: object, websocket: object, error: type[ProtocolError]
) -> None:
    """Validate the request line fields (typed ``object``: they may come from the wire)."""
    if not isinstance(method, str) or not _TOKEN.match(method):
        raise error(f"invalid method {method!r:.40}")
    if len(method) > 32:
        raise error("method longer than 32 characters")
    if not isinstance(target, str) or not target:
        raise error("missing request target")
    try:
        raw_target = target.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate that stands for no byte, from JSON
        raise error("invalid request target") from None
    if len(raw_target) > MAX_TARGET_BYTES:
        raise error("request target too long")
    if _BAD_TARGET.search(target) or not (target.startswith("/") or target == "*"):
        raise error("invalid request target")
    if not isinstance(websocket, bool):
        raise error("websocket must be true or false")


def _check_status(status: object, error: type[ProtocolError]) -> None:
    if not isinstance(status, int) or isinstance(status, bool) or not 100 <= status <= 599:
        raise error(f"invalid status {status!r:.20}")


# Heads are encoded and decoded once per request on each side, so both skip the layers
# json.dumps() and json.loads() put around the C encoder and scanner (which build an
# encoder per call, and sniff the encoding of bytes): 4.3 -> 2.5 us per OPEN, 3.3 ->
# 1.4 us per REPLY. Whatever the fast path does not take as it is (whitespace around
# the object, other encodings, errors) goes the usual way, so the results are the same.
_DECODER = json.JSONDecoder()
_scan_once: Callable[[str, int], tuple[Any, int]] = _DECODER.scan_once  # type: ignore[attr-defined]


def _load_object(payload: bytes, what: str) -> dict[str, Any]:
    try:
        text = payload.decode("utf-8")
        obj, end = _scan_once(text, 0)
        if end != len(text):
            raise ValueError("data after the object")
    except (StopIteration, ValueError, RecursionError):
        try:
            obj = json.loads(payload)
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise RemoteProtocolError(f"{what} is not valid JSON") from exc
    if not isinstance(obj, dict):
        raise RemoteProtocolError(f"{what} must be a JSON object")
    return obj


# One encoder for every head: json.dumps() builds a new one per call.
_dump_text = plain_encoder(item_separator=",", key_separator=":")


def _dump(obj: dict[str, Any]) -> bytes:
    return _dump_text(obj).encode()


@dataclass(frozen=True, slots=True)
class RequestHead:
    """What the relay tells the client about one public request."""

    method: str
    target: str
    headers: Headers = ()
    websocket: bool = False
    """True when the visitor asked to upgrade the request to a WebSocket."""

    def __post_init__(self) -> None:
        self._validate(LocalProtocolError)

    def _validate(self, error: type[ProtocolError]) -> None:
        _check_request(self.method, self.target, self.websocket, error)
        _check_headers(self.headers, error)

    def header(self, name: str) -> str | None:
        """The first value of a header, case-insensitively, or None."""
        lname = name.lower()
        return next((v for n, v in self.headers if n.lower() == lname), None)

    def encode(self) -> bytes:
        """The JSON payload of an OPEN frame."""
        return _dump(
            {
                "method": self.method,
                "target": self.target,
                "headers": self.headers,
                "websocket": self.websocket,
            }
        )

    @classmethod
    def prechecked(
        cls, method: str, target: str, headers: Headers, websocket: bool = False
    ) -> RequestHead:
        """A head whose fields the caller has already held to this module's rules.

        For a parser that enforces them as it reads (the relay's HTTP/1.1 edge): a
        token method of at most 32 characters; a target of ``/...`` or ``*`` without
        control characters or spaces, at most :data:`MAX_TARGET_BYTES`; at most
        :data:`MAX_HEADERS` headers with token names and values free of NUL, CR and LF.
        Checking them all again costs the relay about 5% of its time per request.
        """
        head = object.__new__(cls)
        object.__setattr__(head, "method", method)
        object.__setattr__(head, "target", target)
        object.__setattr__(head, "headers", headers)
        object.__setattr__(head, "websocket", websocket)
        return head

    @classmethod
    def decode(cls, payload: bytes) -> RequestHead:
        """Parse and validate the payload of an OPEN frame.

        Raises:
            RemoteProtocolError: if the head is malformed or exceeds a limit.
        """
        obj = _load_object(payload, "request head")
        headers = _check_headers(obj.get("headers", []), RemoteProtocolError)
        method, target = obj.get("method"), obj.get("target")
        websocket = obj.get("websocket", False)
        _check_request(method, target, websocket, RemoteProtocolError)
        # Validated just now: skip __post_init__, which would check it all again.
        head = object.__new__(cls)
        for name, value in (
            ("method", method),
            ("target", target),
            ("headers", headers),
            ("websocket", websocket),
        ):
            object.__setattr__(head, name, value)
        return head


@dataclass(frozen=True, slots=True)
class ResponseHead:
    """What the client tells the relay about the local server's response."""

    status: int
    headers: Headers = ()

    def __post_init__(self) -> None:
        _check_status(self.status, LocalProtocolError)
        _check_headers(self.headers, LocalProtocolError)

    def header(self, name: str) -> str | None:
        """The first value of a header, case-insensitively, or None."""
        lname = name.lower()
        return next((v for n, v in self.headers if n.lower() == lname), None)

    @classmethod
    def prechecked(cls, status: int, headers: Headers) -> ResponseHead:
        """A head whose fields the caller has already held to this module's rules.

        For the client's HTTP/1.1 reader, which enforces them as it parses the local
        server's response: a status in 100..599, at most :data:`MAX_HEADERS` headers,
        token names, values free of NUL, CR and LF. Checking them all again was about
        a twentieth of the client's time per request.
        """
        head = object.__new__(cls)
        object.__setattr__(head, "status", status)
        object.__setattr__(head, "headers", headers)
        return head

    def encode(self) -> bytes:
        """The JSON payload of a REPLY frame."""
        return _dump({"status": self.status, "headers": self.headers})

    @classmethod
    def decode(cls, payload: bytes) -> ResponseHead:
        """Parse and validate the payload of a REPLY frame.

        Raises:
            RemoteProtocolError: if the head is malformed or exceeds a limit.
        """
        obj = _load_object(payload, "response head")
        headers = _check_headers(obj.get("headers", []), RemoteProtocolError)
        status = obj.get("status")
        _check_status(status, RemoteProtocolError)
        # Validated just now: skip __post_init__, which would check it all again.
        head = object.__new__(cls)
        object.__setattr__(head, "status", status)
        object.__setattr__(head, "headers", headers)
        return head
