"""What ``tunnel`` prints: human lines, or one JSON object per line with ``--json``."""

from __future__ import annotations

import datetime
import io
import ipaddress
import sys
import time
from typing import Any, TextIO
from urllib.parse import urlsplit

from .client import (
    ClientEvent,
    Closed,
    Expired,
    Expiring,
    Link,
    LocalStatus,
    Ready,
    Reconnected,
    Reconnecting,
)
from .forwarder import RequestRecord
from .output import LineOutput
from .protocol.jsontext import plain_encoder
from .protocol.units import format_duration

__all__ = ["HumanDisplay", "JsonDisplay", "iso_time", "machine_local", "qr_text"]

LOCAL_ONLY_HINT = (
    "This link works on this machine only (embedded local relay). For a public link, pass "
    '--relay wss://<your relay>, set TUNNEL_RELAY, or put relay = "..." in '
    "~/.config/sharetunnel/client.toml."
)
WARNING_PAGE_HINT = (
    "Warning     browsers see the relay's warning page once per link; "
    "--bypass-token TOKEN gives a link that skips it"
)


def qr_text(url: str) -> str:
    """The link as a QR code in block characters, two modules per character cell."""
    import segno  # only needed when a QR code is shown

    buffer = io.StringIO()
    segno.make(url, error="l").terminal(out=buffer, compact=True)
    return buffer.getvalue().rstrip("\n")


def machine_local(link: Link) -> bool:
    """True for a link only this machine can open: a phone scanning its QR code cannot."""
    if link.local_only:
        return True
    host = (urlsplit(link.url).hostname or "").rstrip(".").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def iso_time(unix: float) -> str:
    """ISO 8601 in UTC, to the second: ``2026-11-25T02:15:00Z``."""
    when = datetime.datetime.fromtimestamp(unix, datetime.UTC).replace(microsecond=0)
    return when.isoformat().replace("+00:00", "Z")


def _human_time(unix: float) -> str:
    when = datetime.datetime.fromtimestamp(unix, datetime.UTC)
    left = unix - datetime.datetime.now(datetime.UTC).timestamp()
    return f"{when:%Y-%m-%d %H:%M:%S} UTC (in {format_duration(max(left, 0))})"


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


class HumanDisplay:
    """Readable lines for a terminal."""

    def __init__(
        self,
        target: str,
        *,
        quiet: bool = False,
        qr: bool = False,
        qr_asked: bool = False,
        out: TextIO | None = None,
        err: TextIO | None = None,
    ) -> None:
        self.target = target
        """The local server's URL."""
        self.quiet = quiet
        self.qr = qr
        self.qr_asked = qr_asked
        """``--qr`` was given: say why there is none for a link a phone cannot open."""
        self.login: tuple[str, str] | None = None
        """A generated visitor login to show with the link."""
        self.protected = False
        """Visitors must log in (with what the owner gave, which is never echoed)."""
        self.out = LineOutput(out or sys.stdout)
        self.err = err or sys.stderr
        self._outage_started: float | None = None

    def _print(self, text: str, *, to_err: bool = False, droppable: bool = False) -> None:
        if to_err:
            self.err.write(text + "\n")
            self.err.flush()
        else:
            self.out.write(text, droppable=droppable)

    def close(self) -> None:
        """Write every queued line."""
        self.out.close()

    def __call__(self, event: ClientEvent) -> None:
        match event:
            case Ready(link=link, inspect_url=inspect_url):
                self._ready(link, inspect_url)
            case LocalStatus(listening=False, target=target):
                self._print(
                    f"warning: nothing is listening on {target} yet; visitors get a "
                    "502 page until your app starts (the link stays up).",
                    to_err=True,
                )
            case LocalStatus(certificate_problem=str(problem)):
                self._print(
                    f"warning: the certificate of {self.target} is not trusted ({problem}); "
                    "visitors get a 502 page. Pass --local-insecure to accept it.",
                    to_err=True,
                )
            case RequestRecord() if not self.quiet:
                self._request(event)
            case Reconnecting(reason=reason) if self._outage_started is None:
                # One line per outage, not per attempt (--json has every attempt).
                self._outage_started = time.monotonic()
                self._print(
                    f"connection to the relay lost ({reason}); reconnecting...", to_err=True
                )
            case Reconnected(link=link, attempts=attempts):
                started, self._outage_started = self._outage_started, None
                took = 0.0 if started is None else time.monotonic() - started
                self._print(
                    f"back online after {took:.0f} s ({_plural(attempts, 'attempt')}): "
                    f"{link.url} is the same link",
                    to_err=True,
                )
            case Expiring(link=link, left_s=left):
                when = datetime.datetime.fromtimestamp(link.expires_at, datetime.UTC)
                self._print(
                    f"warning: the link expires in {format_duration(left)} "
                    f"(at {when:%Y-%m-%d %H:%M:%S} UTC); after that, run tunnel again "
                    "for a new link",
                    to_err=True,
                )
            case Expired(link=link):
                self._print(
                    f"the link {link.url} expired; run tunnel again for a new link", to_err=True
                )
            case Closed():
                self._print("link closed", to_err=True)

    def _ready(self, link: Link, inspect_url: str | None) -> None:
        self._print(f"Forwarding  {link.url}  ->  {self.target}")
        shortfall = link.ttl_shortfall
        self._print(
            f"Expires     {_human_time(link.expires_at)}" + (f"; {shortfall}" if shortfall else "")
        )
        if self.login is not None:
            self._print(f"Login       user {self.login[0]!r}, password {self.login[1]!r}")
        elif self.protected:
            self._print("Login       visitors must give the user name and password you set")
        if link.local_only:
            self._print(LOCAL_ONLY_HINT)
        if self.qr and not machine_local(link):
            self._print(qr_text(link.url))
        elif self.qr_asked:
            self._print("QR code     none: this link opens on this machine only, not on a phone")
        if link.bypass_url is not None:
            self._print(f"Warning     browsers see a warning page once; skip it: {link.bypass_url}")
        elif link.warning_page:
            self._print(WARNING_PAGE_HINT)
        if inspect_url is not None:
            self._print(f"Inspect     {inspect_url}")
        if not self.quiet:
            self._print("Requests:")

    def _request(self, record: RequestRecord) -> None:
        now = datetime.datetime.now().strftime("%H:%M:%S")
        ms = record.duration_s * 1000
        path = shown_on_terminal(record.path)
        line = f"{now}  {record.method:<7} {path}  {record.status}  {ms:.0f} ms"
        if record.error:
            line += f"  ({shown_on_terminal(record.error)})"
        self._print(line, droppable=True)


def shown_on_terminal(text: str) -> str:
    """``text`` with every character a terminal could act on written as an escape.

    A visitor chooses the path: C1 controls (U+009B is a CSI to xterm), bidi overrides
    (U+202E reorders what the owner reads) and bytes that were not UTF-8 (surrogate
    escapes) reach the owner's terminal only as ``\\x9b``, ``\\u202e``, ``\\xff``.
    """
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else _escape(c) for c in text)


def _escape(char: str) -> str:
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:  # surrogateescape: the byte that was not UTF-8
        code -= 0xDC00
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


_json_line = plain_encoder()
"""``json.dumps``, for a line per request (see protocol.jsontext)."""


class JsonDisplay:
    """One JSON object per line on stdout, for scripts and notebooks."""

    def __init__(self, target: str, *, quiet: bool = False, out: TextIO | None = None) -> None:
        self.target = target
        """The local server's URL."""
        self.quiet = quiet
        self.login: tuple[str, str] | None = None
        """A generated visitor login, sent in the ready event."""
        self.protected = False
        self.out = LineOutput(
            out or sys.stdout,
            dropped_line=lambda n: _json_line({"event": "dropped", "requests": n}),
        )

    def emit(self, event: str, *, droppable: bool = False, **fields: Any) -> None:
        self.out.write(_json_line({"event": event, **fields}), droppable=droppable)

    def close(self) -> None:
        """Write every queued line."""
        self.out.close()

    def __call__(self, event: ClientEvent) -> None:
        match event:
            case Ready(link=link, inspect_url=inspect_url):
                extra: dict[str, Any] = (
                    {"user": self.login[0], "password": self.login[1]} if self.login else {}
                )
                if (shortfall := link.ttl_shortfall) is not None:
                    extra.update(
                        ttl_note=shortfall,
                        ttl_asked_s=round(link.asked_ttl_s or 0),
                        ttl_granted_s=round(link.granted_ttl_s or 0),
                    )
                if inspect_url is not None:
                    extra["inspect"] = inspect_url
                if link.warning_page:
                    extra["warning_page"] = True
                if link.bypass_url is not None:
                    extra["bypass_url"] = link.bypass_url
                self.emit(
                    "ready",
                    url=link.url,
                    expires_at=iso_time(link.expires_at),
                    local=self.target,
                    local_only=link.local_only,
                    protected=self.protected,
                    **extra,
                )
            case LocalStatus(listening=listening, target=target, certificate_problem=problem):
                certificate: dict[str, Any] = (
                    {} if problem is None else {"certificate_problem": problem}
                )
                self.emit("local", listening=listening, target=target, **certificate)
            case RequestRecord() if not self.quiet:
                self.emit(
                    "request",
                    droppable=True,
                    method=event.method,
                    path=event.path,
                    status=event.status,
                    duration_ms=round(event.duration_s * 1000, 2),
                    bytes=event.bytes_out,
                    error=event.error,
                )
            case Reconnecting(reason=reason, delay_s=delay, attempt=attempt):
                self.emit("reconnecting", reason=reason, delay_s=round(delay, 2), attempt=attempt)
            case Reconnected(link=link, attempts=attempts):
                self.emit("reconnected", url=link.url, attempts=attempts)
            case Expiring(link=link, left_s=left):
                self.emit(
                    "expiring",
                    url=link.url,
                    expires_at=iso_time(link.expires_at),
                    left_s=round(left),
                )
            case Expired(link=link):
                self.emit("expired", url=link.url, expires_at=iso_time(link.expires_at))
            case Closed(reason=reason):
                self.emit("closed", reason=reason)
