"""Entries as the API shows them: summaries for the list, and full records with bodies.

A captured body is described, not just dumped: its ``kind`` is ``empty``, ``json``,
``text`` or ``binary``. Text (and JSON) comes as ``text``, JSON that parses whole also
``pretty`` (indented); binary comes as ``base64``. A body is binary when it is
content-encoded (gzip...; the inspector never decompresses), has a binary media type,
is not UTF-8, or holds control bytes that text does not. ``size`` is what passed
through, ``captured`` what was kept, ``truncated`` whether they differ.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from ..protocol.heads import Headers
from .capture import Entry

__all__ = ["describe_body", "full", "summary", "visitor"]

_BINARY_TYPES = ("image/", "audio/", "video/", "font/", "application/octet-stream")
_BINARY_SUBTYPES = ("zip", "gzip", "pdf", "wasm", "protobuf", "msgpack", "x-tar")
# Control bytes that do not occur in text (all but TAB, LF, FF, CR and ESC).
_CONTROL = bytes(b for b in range(32) if b not in (9, 10, 12, 13, 27)) + b"\x7f"


def _header(headers: Headers, name: str) -> str | None:
    return next((v for n, v in headers if n.lower() == name), None)


def visitor(entry: Entry) -> str | None:
    """The visitor's address: the first ``X-Forwarded-For`` entry the relay set."""
    if entry.replay_of is not None:
        return "replay"
    forwarded = _header(entry.request_headers, "x-forwarded-for")
    return forwarded.split(",", 1)[0].strip() if forwarded else None


def summary(entry: Entry) -> dict[str, Any]:
    """One row of the list."""
    return {
        "id": entry.id,
        "started_at": round(entry.started_at, 3),
        "method": entry.method,
        "path": entry.target,
        "status": entry.response_status if entry.status is None else entry.status,
        "done": entry.done,
        "duration_ms": None if entry.duration_s is None else round(entry.duration_s * 1000, 2),
        "request_bytes": entry.request_size,
        "response_bytes": entry.response_size,
        "visitor": visitor(entry),
        "websocket": entry.websocket,
        "replay_of": entry.replay_of,
        "error": entry.error,
    }


def full(entry: Entry) -> dict[str, Any]:
    """Everything about one entry: the summary, both heads and both captured bodies."""
    record = summary(entry)
    headers = entry.request_headers
    record["request"] = {
        "method": entry.method,
        "target": entry.target,
        "headers": [list(pair) for pair in headers],
        "body": describe_body(
            bytes(entry.request_captured), entry.request_size, headers, entry.dropped
        ),
    }
    record["response"] = None
    if entry.response_status is not None:
        headers = entry.response_headers
        record["response"] = {
            "status": entry.response_status,
            "headers": [list(pair) for pair in headers],
            "body": describe_body(
                bytes(entry.response_captured), entry.response_size, headers, entry.dropped
            ),
        }
    return record


def describe_body(
    data: bytes, size: int, headers: Headers, dropped: bool = False
) -> dict[str, Any]:
    """A captured body for the API (see the module docstring)."""
    content_type = _header(headers, "content-type")
    encoding = _header(headers, "content-encoding")
    truncated = size > len(data)
    body: dict[str, Any] = {
        "size": size,
        "captured": len(data),
        "truncated": truncated,
        "dropped": dropped and size > 0,
        "content_type": content_type,
        "content_encoding": encoding,
    }
    if not data:
        body["kind"] = "empty" if size == 0 else "binary"
        if size:
            body["base64"] = ""
        return body
    text = None if _binary_by_headers(content_type, encoding) else _as_text(data, truncated)
    if text is None:
        body["kind"] = "binary"
        body["base64"] = base64.b64encode(data).decode("ascii")
        return body
    body["text"] = text
    body["kind"] = "text"
    if _looks_like_json(content_type, text):
        try:
            parsed = json.loads(text)
        except ValueError:
            if _json_type(content_type):
                body["kind"] = "json"  # cut short by the limit, or invalid: shown as text
        else:
            body["kind"] = "json"
            body["pretty"] = json.dumps(parsed, indent=2, ensure_ascii=False)
    return body


def _json_type(content_type: str | None) -> bool:
    media = (content_type or "").split(";", 1)[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


def _looks_like_json(content_type: str | None, text: str) -> bool:
    return _json_type(content_type) or text.lstrip()[:1] in ("{", "[")


def _binary_by_headers(content_type: str | None, encoding: str | None) -> bool:
    if encoding and encoding.strip().lower() != "identity":
        return True
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media.startswith(_BINARY_TYPES):
        return True
    return media.startswith("application/") and media.endswith(_BINARY_SUBTYPES)


def _as_text(data: bytes, truncated: bool) -> str | None:
    """``data`` as UTF-8 text, or None if it is not text."""
    if len(data.translate(None, _CONTROL)) != len(data):
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        # The limit may cut a character in two: text all the same.
        if truncated and exc.start >= len(data) - 3 and exc.reason == "unexpected end of data":
            return data[: exc.start].decode("utf-8")
        return None
