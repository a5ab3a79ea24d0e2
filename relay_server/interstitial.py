"""The warning page of ``tunnel-relay --interstitial``.

A link is a page served from someone's own computer, and anyone can make one: phishing
pages are the abuse every share-link service meets. With ``--interstitial`` a browser's
first visit to a link shows a page saying so, and goes on only when the visitor chooses
to. The choice is remembered per link in a cookie, so the page shows once per browser
and link.

Only browsers see it: a request passes straight through unless it asks for HTML
(``text/html`` in ``Accept``, as page loads do) and lacks a ``Sharetunnel-Skip-Warning``
header, so webhooks, ``curl``, ``gradio_client``, ``fetch()`` and WebSockets are never
stopped. The link's owner may choose a token (``tunnel --bypass-token``): a visit with
``?st_bypass=<token>`` sets the cookie at once and lands on the page without the
parameter.

The cookie's value is an HMAC of the link's identity (subdomain and the hash of its
client's secret) under a secret derived from the relay's lease key: another link (a
sibling subdomain can set cookies for the whole domain), a later link on the same
subdomain, or a relay with another key cannot produce it; relays of a cluster, which
share the lease key, all accept it.

This module does no I/O: :meth:`Interstitial.check` says what to answer instead of
forwarding, or None.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import time
from dataclasses import dataclass
from urllib.parse import unquote_plus

from . import pages
from .directory import Link
from .http1 import Request
from .leases import hash_secret

__all__ = ["BYPASS_PARAM", "CONTINUE_PARAM", "COOKIE", "SKIP_HEADER", "Answer", "Interstitial"]

COOKIE = "sharetunnel_warned"
BYPASS_PARAM = "st_bypass"
"""``?st_bypass=<token>``: the owner's token skips the page."""
CONTINUE_PARAM = "st_continue"
"""What the page's Continue link adds: the visitor chose to go on."""
SKIP_HEADER = "sharetunnel-skip-warning"
"""Any value: a program that sends it is not a browser visitor (ngrok's is alike)."""

_OURS = frozenset({BYPASS_PARAM, CONTINUE_PARAM})

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex">
<title>You are about to visit a shared link</title>
<style>
body{{font:16px/1.5 system-ui,sans-serif;max-width:38rem;margin:12vh auto;
     padding:0 1rem;color:#222}}
h1{{font-size:1.4rem}} p.hint{{color:#555}} code{{background:#f3f3f3;padding:0 .25em}}
a.go{{display:inline-block;margin:.5rem 0;padding:.5rem 1rem;border-radius:4px;
     background:#2457c5;color:#fff;text-decoration:none}}
</style></head>
<body><h1>You are about to visit a shared link</h1>
<p><strong>{host}</strong> is served from someone's own computer through the
sharetunnel relay at {relay}. Anyone can make such a link.</p>
<p>Go on only if you know and trust whoever sent it to you. Never enter passwords,
payment details or other personal information on a page you did not expect.</p>
<p><a class="go" id="continue" href="{proceed}">Continue to {host}</a></p>
<p class="hint"><small>Shown once per link. Sharing this link yourself? Programs and
API calls never see this page; browsers skip it when they send a
<code>Sharetunnel-Skip-Warning</code> header, or once they open the link with
<code>?st_bypass=&lt;token&gt;</code> (<code>tunnel --bypass-token</code>).</small></p>
</body></html>
"""


@dataclass(frozen=True, slots=True)
class Answer:
    """What the relay answers instead of forwarding (headers without framing)."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes


class Interstitial:
    """Decides, per request, whether a browser must see the warning page first."""

    def __init__(self, secret: bytes, relay_name: str, *, secure: bool) -> None:
        self._secret = secret
        self.relay_name = relay_name
        """Named on the page: the relay's public domain."""
        self._secure = secure
        """Visitors use https: the cookie gets ``Secure``."""

    def check(self, link: Link, request: Request, target: str) -> Answer | None:
        """None to forward the request; else the page, or the redirect that sets the cookie.

        ``target`` is the request's path and query (origin form).
        """
        if not _is_browser(request):
            return None
        mark = self.mark(link)
        if mark in _cookie_values(request, COOKIE):
            return None
        path, _, query = target.partition("?")
        kept, chosen, offered = _split_query(query)
        bypass = link.bypass_hash is not None and any(
            hmac.compare_digest(hash_secret(token), link.bypass_hash) for token in offered
        )
        if chosen or bypass:
            return self._remember(link, mark, _join(path, kept))
        proceed = _join(path, [*kept, f"{CONTINUE_PARAM}=1"])
        return self._page(request.host or link.subdomain, proceed)

    def mark(self, link: Link) -> str:
        """The cookie value that says "this browser saw the warning for this link"."""
        identity = f"{link.subdomain}\n{link.key_hash}".encode()
        return hmac.new(self._secret, identity, hashlib.sha256).hexdigest()[:32]

    def _remember(self, link: Link, mark: str, location: str) -> Answer:
        # The cookie lives as long as the link: a later link on this subdomain (another
        # owner's) has another mark anyway.
        max_age = max(0, int(link.expires_at - time.time()))
        cookie = f"{COOKIE}={mark}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Lax"
        if self._secure:
            cookie += "; Secure"
        headers = [
            ("Location", location),
            ("Set-Cookie", cookie),
            ("Cache-Control", "no-store"),
            ("Content-Type", "text/plain; charset=utf-8"),
        ]
        return Answer(303, headers, f"See {location}\n".encode())

    def _page(self, host: str, proceed: str) -> Answer:
        body = _PAGE.format(
            host=html.escape(host),
            relay=html.escape(self.relay_name),
            proceed=html.escape(proceed, quote=True),
        ).encode()
        headers = [
            ("Content-Type", "text/html; charset=utf-8"),
            ("Cache-Control", "no-store"),
            ("X-Sharetunnel-Warning", "interstitial"),
            # The page must not be framed by another site (a click on Continue is the
            # visitor's own choice) and runs no script.
            ("X-Frame-Options", "DENY"),
            ("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'"),
            ("Referrer-Policy", "no-referrer"),
        ]
        return Answer(200, headers, body)


def _is_browser(request: Request) -> bool:
    """A page load: HTML asked for, and no header saying "I am a program"."""
    return pages.wants_html(request.header("accept")) and request.header(SKIP_HEADER) is None


def _cookie_values(request: Request, name: str) -> set[str]:
    """Every value of the cookie ``name`` (a sibling domain may have added its own)."""
    values = set()
    for header in request.header_all("cookie"):
        for pair in header.split(";"):
            key, sep, value = pair.strip().partition("=")
            if sep and key == name:
                values.add(value.strip().strip('"'))
    return values


def _split_query(query: str) -> tuple[list[str], bool, list[str]]:
    """The query's parts that are not ours (as sent), whether the visitor chose to go
    on, and the bypass tokens offered."""
    kept: list[str] = []
    chosen = False
    offered: list[str] = []
    for part in query.split("&") if query else ():
        key, _, value = part.partition("=")
        name = unquote_plus(key)
        if name not in _OURS:
            kept.append(part)
        elif name == CONTINUE_PARAM:
            chosen = True
        else:
            offered.append(unquote_plus(value))
    return kept, chosen, offered


def _join(path: str, parts: list[str]) -> str:
    return f"{path}?{'&'.join(parts)}" if parts else path
