"""The error pages visitors see: HTML for browsers, plain text for everything else.

Each page says what happened and what the link's owner can do about it. Pages are
never cached (the condition they describe is usually temporary).
"""

from __future__ import annotations

import html
import http
from dataclasses import dataclass

from tunnel_client.protocol.errors import GoAwayCode

__all__ = ["ErrorPage", "render", "wants_html"]

_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">{refresh}
<title>{status} {title}</title>
<style>
body{{font:16px/1.5 system-ui,sans-serif;max-width:38rem;margin:12vh auto;
     padding:0 1rem;color:#222}}
h1{{font-size:1.4rem}} .code{{color:#888;font-weight:normal}} p.hint{{color:#555}}
code{{background:#f3f3f3;padding:0 .25em;border-radius:3px}}
</style></head>
<body><h1><span class="code">{status}</span> {title}</h1>
<p>{detail}</p><p class="hint">{hint}</p>
<p class="hint"><small>sharetunnel relay</small></p></body></html>
"""


_KNOWN = frozenset(int(s) for s in http.HTTPStatus)


@dataclass(frozen=True)
class ErrorPage:
    """One error: its status, a title, what happened, and what the owner can do."""

    status: int
    title: str
    detail: str
    hint: str = ""
    retry_after_s: int | None = None
    refresh_s: int | None = None
    """The HTML page reloads itself after this long (a browser tab comes back alone)."""


def wants_html(accept: str | None) -> bool:
    """True for browsers, which put text/html in their Accept header (media types are
    case-insensitive)."""
    return accept is not None and "text/html" in accept.lower()


def render(page: ErrorPage, html_wanted: bool) -> tuple[list[tuple[str, str]], bytes]:
    """A page's headers (framing aside) and body, as HTML or plain text."""
    if html_wanted:
        refresh = (
            f'\n<meta http-equiv="refresh" content="{page.refresh_s}">' if page.refresh_s else ""
        )
        body = _HTML.format(
            refresh=refresh,
            status=page.status,
            title=html.escape(page.title),
            detail=html.escape(page.detail),
            hint=html.escape(page.hint),
        )
        content_type = "text/html; charset=utf-8"
    else:
        body = f"{page.status} {page.title}\n\n{page.detail}\n"
        if page.hint:
            body += f"{page.hint}\n"
        content_type = "text/plain; charset=utf-8"
    headers = [
        ("Content-Type", content_type),
        ("Cache-Control", "no-store"),
        ("X-Sharetunnel-Error", str(page.status)),
    ]
    if page.retry_after_s is not None:
        headers.append(("Retry-After", str(page.retry_after_s)))
    return headers, body.encode()


def not_found() -> ErrorPage:
    return ErrorPage(
        404,
        "No such link",
        "There is no share link at this address. It may have been mistyped, or its "
        "owner stopped sharing.",
        "If you own this link, start the tunnel again to get a new one.",
    )


def expired(when: str) -> ErrorPage:
    return ErrorPage(
        410,
        "Link expired",
        f"This share link expired at {when}.",
        "Links last for a limited time. The owner can run `tunnel <port>` again to get a new link.",
    )


def client_away() -> ErrorPage:
    return ErrorPage(
        503,
        "Link owner is offline",
        "The computer sharing this link is not connected to the relay right now "
        "(it may be reconnecting after a network drop).",
        "Try again in a few seconds (a browser reloads this page by itself). If you own "
        "this link, check that `tunnel` is still running and online.",
        retry_after_s=5,
        refresh_s=5,
    )


def revoked() -> ErrorPage:
    return ErrorPage(
        410,
        "Link taken down",
        "The operator of this relay took this share link down.",
        "If you own this link and think this is a mistake, contact the relay's operator.",
    )


def owner_lost(code: GoAwayCode) -> ErrorPage:
    """The owner's connection ended while it held this (already forwarded) request."""
    silent = code is GoAwayCode.KEEPALIVE_TIMEOUT
    return ErrorPage(
        504 if silent else 502,
        "The link's owner stopped responding" if silent else "The link's owner disconnected",
        "Your request reached the computer sharing this link, which then "
        f"{'stopped responding' if silent else 'went offline'} before it answered. "
        "The request may or may not have been carried out.",
        "Check whether it took effect before you send it again.",
    )


def local_refused(port: int | None) -> ErrorPage:
    where = f"on port {port} of the owner's machine" if port else "on the owner's machine"
    return ErrorPage(
        502,
        "Nothing is answering on the owner's machine",
        f"The tunnel is up, but nothing is answering {where}.",
        "If you own this link: start your app on that port. The link stays the same and "
        "works as soon as the app answers.",
    )


def local_invalid() -> ErrorPage:
    return ErrorPage(
        502,
        "The local app did not answer with HTTP",
        "The tunnel is up, but the app on the owner's machine sent an answer that is not "
        "valid HTTP, or broke off before its answer was complete.",
        "If you own this link: check that the shared port runs your web app (not, say, an "
        "SSH server), and look at its log. The tunnel's request log has the details.",
    )


def local_head_too_large() -> ErrorPage:
    return ErrorPage(
        502,
        "The app's response head was too large",
        "The app on the owner's machine answered, but its response head (the status and "
        "headers) was too large to pass through the tunnel.",
        "If you own this link: send fewer or smaller headers (often: too many or too large "
        "cookies). The tunnel's request log has the sizes.",
    )


def local_failed() -> ErrorPage:
    return ErrorPage(
        502,
        "The request failed on the owner's machine",
        "The tunnel is up, but the owner's machine could not complete this request.",
        "If you own this link, the tunnel's request log and your app's log say why.",
    )


def local_timeout(seconds: float) -> ErrorPage:
    return ErrorPage(
        504,
        "The local server is too slow",
        f"The app on the owner's machine did not start answering within {seconds:g} s.",
        "If you own this link, make the app answer sooner (streaming responses are never "
        "cut); the relay's operator can raise --response-timeout (RELAY_RESPONSE_TIMEOUT).",
    )


def too_many(what: str) -> ErrorPage:
    return ErrorPage(
        429, "Too many requests", f"{what}.", "Wait a moment and try again.", retry_after_s=1
    )


def too_large(limit: int) -> ErrorPage:
    return ErrorPage(
        413,
        "Request body too large",
        f"This relay accepts request bodies of at most {limit} bytes.",
        "The relay's operator can raise the limit (max_body_bytes).",
    )


def headers_too_large(limit: int) -> ErrorPage:
    return ErrorPage(
        431,
        "Request headers too large",
        f"This relay accepts at most {limit} bytes of request headers.",
        "Clear this site's cookies and try again.",
    )


def bad_request(detail: str) -> ErrorPage:
    return ErrorPage(400, "Bad request", detail)


def refused(status: int, detail: str) -> ErrorPage:
    """A request the relay cannot take as sent (a 4xx or 5xx of HTTP itself)."""
    if status == 400:
        return bad_request(detail)
    if status == 431:
        return ErrorPage(431, "Request headers too large", detail)
    title = http.HTTPStatus(status).phrase if status in _KNOWN else "Request refused"
    return ErrorPage(status, title, detail)


def misdirected() -> ErrorPage:
    return ErrorPage(
        421,
        "Misdirected request",
        "This connection belongs to the relay itself, not to a share link.",
        "Open the link again: your browser will use a new connection.",
    )


def unauthorized() -> ErrorPage:
    return ErrorPage(
        401,
        "Password required",
        "The owner of this link protected it with a password.",
        "Ask the owner for the user name and password.",
    )
