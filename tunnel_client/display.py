"""What ``tunnel`` prints: human lines, or one JSON object per line with ``--json``."""

from __future__ import annotations

import datetime
import io
import json
import sys
from typing import Any, TextIO

from .client import (
    ClientEvent,
    Closed,
    Expired,
    Link,
    LocalStatus,
    Ready,
    Reconnected,
    Reconnecting,
)
from .forwarder import RequestRecord
from .output import LineOutput
from .protocol.units import format_duration

__all__ = ["HumanDisplay", "JsonDisplay", "iso_time", "qr_text"]

LOCAL_ONLY_HINT = (
    "This link works on this machine only (embedded local relay). For a public link, pass "
    '--relay wss://<your relay>, set TUNNEL_RELAY, or put relay = "..." in '
    "~/.config/sharetunnel/client.toml."
)


def qr_text(url: str) -> str:
    """The link as a QR code in block characters, two modules per character cell."""
    import segno  # only needed when a QR code is shown

    buffer = io.StringIO()
    segno.make(url, error="l").terminal(out=buffer, compact=True)
    return buffer.getvalue().rstrip("\n")


def iso_time(unix: float) -> str:
    """ISO 8601 in UTC, to the second: ``2026-11-25T02:15:00Z``."""
    when = datetime.datetime.fromtimestamp(unix, datetime.UTC).replace(microsecond=0)
    return when.isoformat().replace("+00:00", "Z")


def _human_time(unix: float) -> str:
    when = datetime.datetime.fromtimestamp(unix, datetime.UTC)
    left = unix - datetime.datetime.now(datetime.UTC).timestamp()
    return f"{when:%Y-%m-%d %H:%M:%S} UTC (in {format_duration(max(left, 0))})"


class HumanDisplay:
    """Readable lines for a terminal."""

    def __init__(
        self,
        target: str,
        *,
        quiet: bool = False,
        qr: bool = False,
        out: TextIO | None = None,
        err: TextIO | None = None,
    ) -> None:
        self.target = target
        self.quiet = quiet
        self.qr = qr
        self.login: tuple[str, str] | None = None
        """A generated visitor login to show with the link."""
        self.out = LineOutput(out or sys.stdout)
        self.err = err or sys.stderr

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
            case RequestRecord() if not self.quiet:
                self._request(event)
            case Reconnecting(reason=reason, delay_s=delay, attempt=attempt):
                self._print(
                    f"connection to the relay lost ({reason}); reconnecting in "
                    f"{delay:.1f} s (attempt {attempt})",
                    to_err=True,
                )
            case Reconnected(link=link):
                self._print(f"reconnected: {link.url} is back", to_err=True)
            case Expired(link=link):
                self._print(
                    f"the link {link.url} expired; run tunnel again for a new link", to_err=True
                )
            case Closed():
                self._print("link closed", to_err=True)

    def _ready(self, link: Link, inspect_url: str | None) -> None:
        self._print(f"Forwarding  {link.url}  ->  http://{self.target}")
        self._print(f"Expires     {_human_time(link.expires_at)}")
        if self.login is not None:
            self._print(f"Login       user {self.login[0]!r}, password {self.login[1]!r}")
        if link.local_only:
            self._print(LOCAL_ONLY_HINT)
        if self.qr:
            self._print(qr_text(link.url))
        if inspect_url is not None:
            self._print(f"Inspect     {inspect_url}")
        if not self.quiet:
            self._print("Requests:")

    def _request(self, record: RequestRecord) -> None:
        now = datetime.datetime.now().strftime("%H:%M:%S")
        ms = record.duration_s * 1000
        line = f"{now}  {record.method:<7} {record.path}  {record.status}  {ms:.0f} ms"
        if record.error:
            line += f"  ({record.error})"
        self._print(line, droppable=True)


class JsonDisplay:
    """One JSON object per line on stdout, for scripts and notebooks."""

    def __init__(self, target: str, *, quiet: bool = False, out: TextIO | None = None) -> None:
        self.target = target
        self.quiet = quiet
        self.login: tuple[str, str] | None = None
        """A generated visitor login, sent in the ready event."""
        self.out = LineOutput(
            out or sys.stdout,
            dropped_line=lambda n: json.dumps({"event": "dropped", "requests": n}),
        )

    def emit(self, event: str, *, droppable: bool = False, **fields: Any) -> None:
        self.out.write(json.dumps({"event": event, **fields}), droppable=droppable)

    def close(self) -> None:
        """Write every queued line."""
        self.out.close()

    def __call__(self, event: ClientEvent) -> None:
        match event:
            case Ready(link=link, inspect_url=inspect_url):
                login: dict[str, Any] = (
                    {"user": self.login[0], "password": self.login[1]} if self.login else {}
                )
                inspect: dict[str, Any] = {} if inspect_url is None else {"inspect": inspect_url}
                self.emit(
                    "ready",
                    url=link.url,
                    expires_at=iso_time(link.expires_at),
                    local=f"http://{self.target}",
                    local_only=link.local_only,
                    **login,
                    **inspect,
                )
            case LocalStatus(listening=listening, target=target):
                self.emit("local", listening=listening, target=target)
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
            case Expired(link=link):
                self.emit("expired", url=link.url, expires_at=iso_time(link.expires_at))
            case Closed(reason=reason):
                self.emit("closed", reason=reason)
