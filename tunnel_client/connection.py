"""One connection to a relay: open the WebSocket, say HELLO, get the link (or a refusal).

Errors are sorted by what the caller should do about them: :class:`RelayUnavailable`
is worth retrying; :class:`AuthRejected`, :class:`LinkExpired` and
:class:`RelayRefused` are not (the same HELLO would get the same answer).
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass
from pathlib import Path

import websockets

from .protocol.errors import GoAwayCode, HandshakeRefused, RemoteProtocolError, TunnelError
from .protocol.frames import MAX_MESSAGE_BYTES
from .protocol.handshake import Hello, Welcome, read_welcome
from .relay_socket import CLOSE_TIMEOUT_S, RelaySocket

__all__ = [
    "AuthRejected",
    "LinkExpired",
    "RelayRefused",
    "RelayUnavailable",
    "open_tunnel",
]


class RelayUnavailable(TunnelError):
    """The relay could not be reached or dropped us; trying again may work."""


class RelayRefused(HandshakeRefused):
    """The relay answered the HELLO with GOAWAY (or ended the link); :attr:`code` says why."""


class AuthRejected(RelayRefused):
    """The token, or the lease, was refused: retrying with it cannot help."""


class LinkExpired(RelayRefused):
    """The link's lease has expired; the link is gone for good."""


@dataclass(frozen=True)
class RelayTarget:
    """Where and how to reach a relay."""

    url: str
    """The ``ws(s)://.../_tunnel`` URL."""
    ca_file: Path | None = None
    given: str | None = None
    """The relay as the user wrote it (``127.0.0.1:8080`` means ``wss://``), for hints."""

    @property
    def scheme_assumed(self) -> bool:
        """True when the user gave no scheme, so ``wss://`` was assumed."""
        return self.given is not None and "://" not in self.given

    def plain_http_hint(self) -> str:
        """``use --relay http://127.0.0.1:8080``: the same relay without TLS."""
        base = (self.given or self.url).strip()
        if "://" in base:
            base = base.split("://", 1)[1]
        base = base.removesuffix("/").removesuffix("/_tunnel")
        return f"if it is a plain-HTTP relay, use --relay http://{base}"


def _ssl_context(target: RelayTarget) -> ssl.SSLContext | None:
    if not target.url.startswith("wss://"):
        return None
    context = ssl.create_default_context()
    if target.ca_file is not None:
        context.load_verify_locations(target.ca_file)
    return context


# OpenSSL's reasons when the far end answered a TLS hello with something else (an HTTP
# server answers "HTTP/1.1 400", which it reads as a bad record).
_NOT_TLS = frozenset(
    {"WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "UNKNOWN_PROTOCOL", "PACKET_LENGTH_TOO_LONG"}
)


def _describe(exc: BaseException, target: RelayTarget | None = None) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"its TLS certificate is not trusted ({exc.verify_message}); pass --ca-file"
    if (
        isinstance(exc, ssl.SSLError)
        and target is not None
        and (exc.reason in _NOT_TLS or target.scheme_assumed)
    ):
        return f"it does not speak TLS; {target.plain_http_hint()}"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    if (
        isinstance(exc, websockets.InvalidMessage)
        and target is not None
        and target.url.startswith("ws://")
    ):
        # What a TLS server does with a plain request: no HTTP comes back.
        https = "https://" + target.url.removeprefix("ws://").removesuffix("/_tunnel")
        return f"no HTTP came back; if the relay serves TLS, use --relay {https}"
    if isinstance(exc, websockets.InvalidStatus):
        said = (exc.response.body or b"").decode("utf-8", "replace").strip().splitlines()
        detail = f" ({said[0][:200]})" if said else ""
        return f"it answered HTTP {exc.response.status_code} instead of a WebSocket{detail}"
    return str(exc) or type(exc).__name__


async def open_tunnel(
    target: RelayTarget, hello: Hello, *, timeout_s: float, agent: str = "sharetunnel-python"
) -> tuple[RelaySocket, Welcome]:
    """Connect, send HELLO, and return the transport with the relay's WELCOME.

    Raises:
        RelayUnavailable: the relay cannot be reached, or the handshake broke off.
        AuthRejected, LinkExpired, RelayRefused: the relay said no.
    """
    try:
        ws = await websockets.connect(
            target.url,
            ssl=_ssl_context(target),
            open_timeout=timeout_s,
            ping_interval=None,  # the protocol's own PING keeps both sides honest
            compression=None,
            max_size=MAX_MESSAGE_BYTES + 1024,
            close_timeout=CLOSE_TIMEOUT_S,
            write_limit=256 * 1024,
            user_agent_header=agent,
        )
    except (TimeoutError, OSError, websockets.InvalidHandshake, ssl.SSLError) as exc:
        why = _describe(exc, target)
        if target.scheme_assumed and "plain-HTTP" not in why:
            why += " (no scheme given: wss:// assumed)"
        raise RelayUnavailable(f"cannot reach the relay at {target.url}: {why}") from None
    # The relay speaks only after HELLO: nothing is buffered in ``ws`` yet, so the
    # connection can change hands here.
    transport = RelaySocket(ws)
    try:
        await transport.send(hello.encode())
        message = await asyncio.wait_for(transport.recv(), timeout_s)
    except (TimeoutError, ConnectionError, OSError, RemoteProtocolError) as exc:
        await transport.close()
        raise RelayUnavailable(
            f"the relay did not answer the handshake: {_describe(exc)}"
        ) from None
    except BaseException:  # cancelled (the owner stopped): leave no connection behind
        transport.abort()
        raise
    if message is None:
        await transport.close()
        raise RelayUnavailable("the relay closed the connection during the handshake")
    try:
        welcome = read_welcome(message)
    except HandshakeRefused as refused:
        await transport.close()
        kind = {GoAwayCode.AUTH_FAILED: AuthRejected, GoAwayCode.EXPIRED: LinkExpired}
        raise kind.get(refused.code, RelayRefused)(refused.code, refused.reason) from None
    except RemoteProtocolError as exc:
        await transport.close()
        raise RelayRefused(
            GoAwayCode.PROTOCOL_ERROR, f"the relay broke the protocol: {exc}"
        ) from None
    return transport, welcome
