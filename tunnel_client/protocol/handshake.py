"""The handshake: one HELLO from the client, one WELCOME (or a GOAWAY) from the relay.

The client's first message on a new WebSocket is a HELLO frame; the relay answers with
a WELCOME frame that names the link, or with a GOAWAY frame that says why not (bad
token, expired lease, limits) and closes. Streams open only after the WELCOME. Both
payloads are JSON objects; unknown keys are ignored so either side can add optional
keys without a new version. A side that does not speak ``version`` answers GOAWAY
``VERSION_MISMATCH``.

Both sides run the handshake through this module, so its rules are written once:

* the relay calls :func:`read_hello` on the first message; it raises
  :class:`~.errors.HandshakeRefused`, which the relay sends back with :func:`refusal`
  (its own refusals, such as a bad token, are the same exception);
* the client sends :meth:`Hello.encode` and calls :func:`read_welcome` on the answer,
  which returns the WELCOME or raises the relay's refusal as ``HandshakeRefused``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, TypeGuard

from .errors import GoAwayCode, HandshakeRefused, RemoteProtocolError
from .frames import Frame, FrameType, decode_frames, encode_frame, goaway_frame, parse_goaway
from .window import MAX_WINDOW, MIN_WINDOW

__all__ = [
    "PROTOCOL_VERSION",
    "Hello",
    "Welcome",
    "bypass_token_problem",
    "read_hello",
    "read_welcome",
    "refusal",
]

PROTOCOL_VERSION = 1
MAX_CREDENTIAL_CHARS = 4096
MAX_STREAMS_LIMIT = 65536
MAX_TIMESTAMP = 253402300799  # 9999-12-31T23:59:59Z


def _load(payload: bytes, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(payload)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise RemoteProtocolError(f"{what} is not valid JSON") from exc
    if not isinstance(obj, dict):
        raise RemoteProtocolError(f"{what} must be a JSON object")
    return obj


def _opt_str(obj: dict[str, Any], key: str, limit: int = MAX_CREDENTIAL_CHARS) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > limit:
        raise RemoteProtocolError(f"{key} must be a string of at most {limit} characters")
    return value


def _int(obj: dict[str, Any], key: str, low: int, high: int, default: int | None = None) -> int:
    value = obj.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise RemoteProtocolError(f"{key} must be an integer in {low}..{high}")
    return value


def _number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _frame(type_: FrameType, obj: dict[str, Any]) -> bytes:
    payload = json.dumps({k: v for k, v in obj.items() if v is not None}).encode()
    return encode_frame(Frame(type_, 0, 0, payload))


@dataclass(frozen=True, kw_only=True)
class Hello:
    """The client's opening message."""

    version: int = PROTOCOL_VERSION
    window: int
    """The client's receive window per stream, in bytes."""
    max_streams: int
    """The most streams the relay may keep open at once on this session."""
    client_secret: str = field(repr=False)
    """A random secret the client keeps for this link; the lease is bound to its hash."""
    token: str | None = field(default=None, repr=False)
    """Proof that the client may create links, when the relay requires tokens."""
    lease: str | None = field(default=None, repr=False)
    """A lease from an earlier WELCOME: asks for the same link back."""
    visitor_auth: str | None = field(default=None, repr=False)
    """``user:password`` that visitors must give before the relay forwards anything."""
    bypass_token: str | None = field(default=None, repr=False)
    """The owner's token that lets a browser skip the relay's warning page (``?st_bypass=``)."""
    ttl_s: int | None = None
    """A shorter lifetime than the relay's default, in seconds."""
    agent: str = ""
    """Client name and version, for the relay's logs."""

    def encode(self) -> bytes:
        """One transport message holding the HELLO frame."""
        return _frame(
            FrameType.HELLO,
            {
                "version": self.version,
                "window": self.window,
                "max_streams": self.max_streams,
                "client_secret": self.client_secret,
                "token": self.token,
                "lease": self.lease,
                "visitor_auth": self.visitor_auth,
                "bypass_token": self.bypass_token,
                "ttl_s": self.ttl_s,
                "agent": self.agent,
            },
        )

    @classmethod
    def decode(cls, payload: bytes) -> Hello:
        """Parse the payload of a HELLO frame.

        Raises:
            RemoteProtocolError: if a field is missing, of the wrong type or out of range.
        """
        obj = _load(payload, "HELLO")
        secret = _opt_str(obj, "client_secret", 256)
        if not secret or len(secret) < 16:
            raise RemoteProtocolError("client_secret must be at least 16 characters")
        ttl = obj.get("ttl_s")
        bypass = _opt_str(obj, "bypass_token", 128)
        if bypass is not None and (problem := bypass_token_problem(bypass)) is not None:
            raise RemoteProtocolError(problem)
        return cls(
            version=_int(obj, "version", 0, 2**31),
            window=_int(obj, "window", MIN_WINDOW, MAX_WINDOW),
            max_streams=_int(obj, "max_streams", 1, MAX_STREAMS_LIMIT),
            client_secret=secret,
            token=_opt_str(obj, "token"),
            lease=_opt_str(obj, "lease"),
            visitor_auth=_opt_str(obj, "visitor_auth", 512),
            bypass_token=bypass,
            ttl_s=None if ttl is None else _int(obj, "ttl_s", 1, 2**31),
            agent=_opt_str(obj, "agent", 200) or "",
        )


def bypass_token_problem(value: str) -> str | None:
    """Why ``value`` cannot be a warning-bypass token (it travels in a URL), or None.

    The client checks its own option with it, and the relay every HELLO's token.
    """
    allowed = all(c.isascii() and (c.isalnum() or c in "-._~") for c in value)
    if not 8 <= len(value) <= 128 or not allowed:
        return "bypass token must be 8 to 128 letters, digits, '-', '.', '_' or '~'"
    return None


@dataclass(frozen=True, kw_only=True)
class Welcome:
    """The relay's answer to a HELLO: the link and its lease."""

    version: int = PROTOCOL_VERSION
    url: str
    """The public link, e.g. ``https://k3x9q7m2p4t8w1z5.share.example.com/``."""
    subdomain: str
    expires_at: float
    """When the link expires, as a Unix time."""
    lease: str = field(repr=False)
    """Present it (with the client secret) in a later HELLO to get the same link back."""
    window: int
    """The relay's receive window per stream, in bytes."""
    keepalive_s: float
    """How often each side should PING when the session is quiet."""
    resumed: bool = False
    """True when the HELLO's lease gave the client its old link back."""
    interstitial: bool = False
    """True when browsers see the relay's warning page before the link (``--interstitial``)."""

    def encode(self) -> bytes:
        """One transport message holding the WELCOME frame."""
        return _frame(
            FrameType.WELCOME,
            {
                "version": self.version,
                "url": self.url,
                "subdomain": self.subdomain,
                "expires_at": self.expires_at,
                "lease": self.lease,
                "window": self.window,
                "keepalive_s": self.keepalive_s,
                "resumed": self.resumed,
                "interstitial": self.interstitial,
            },
        )

    @classmethod
    def decode(cls, payload: bytes) -> Welcome:
        """Parse the payload of a WELCOME frame.

        Raises:
            RemoteProtocolError: if a field is missing, of the wrong type or out of range.
        """
        obj = _load(payload, "WELCOME")
        url = _opt_str(obj, "url", 2048)
        subdomain = _opt_str(obj, "subdomain", 63)
        lease = _opt_str(obj, "lease")
        expires_at = obj.get("expires_at")
        keepalive = obj.get("keepalive_s")
        if not url or not subdomain or lease is None:
            raise RemoteProtocolError("WELCOME lacks url, subdomain or lease")
        # JSON allows NaN and Infinity, and datetime() fails beyond year 9999: bound both.
        if not _number(expires_at) or not 0 <= expires_at <= MAX_TIMESTAMP:
            raise RemoteProtocolError("expires_at must be a Unix time")
        if not _number(keepalive) or not 0.05 <= keepalive <= 3600:
            raise RemoteProtocolError("keepalive_s must be a number in 0.05..3600")
        return cls(
            version=_int(obj, "version", 0, 2**31),
            url=url,
            subdomain=subdomain,
            expires_at=float(expires_at),
            lease=lease,
            window=_int(obj, "window", MIN_WINDOW, MAX_WINDOW),
            keepalive_s=float(keepalive),
            resumed=obj.get("resumed", False) is True,
            interstitial=obj.get("interstitial", False) is True,
        )


def _only_frame(message: bytes, expected: FrameType, what: str) -> Frame:
    frames = decode_frames(message)
    if len(frames) != 1 or frames[0].type not in (expected, FrameType.GOAWAY):
        raise RemoteProtocolError(f"the first message must be exactly one {what} frame")
    return frames[0]


def read_hello(message: bytes) -> Hello:
    """(relay) Check the client's first message and return its HELLO.

    Raises:
        HandshakeRefused: PROTOCOL_ERROR for anything but one valid HELLO frame,
            VERSION_MISMATCH for another protocol version. Send it with :func:`refusal`.
    """
    try:
        frame = _only_frame(message, FrameType.HELLO, "HELLO")
        if frame.type is not FrameType.HELLO:
            raise RemoteProtocolError("the first message must be exactly one HELLO frame")
        hello = Hello.decode(frame.payload)
    except RemoteProtocolError as exc:
        raise HandshakeRefused(GoAwayCode.PROTOCOL_ERROR, str(exc)) from None
    if hello.version != PROTOCOL_VERSION:
        raise HandshakeRefused(
            GoAwayCode.VERSION_MISMATCH,
            f"this relay speaks protocol version {PROTOCOL_VERSION}, not {hello.version}: "
            "upgrade sharetunnel",
        )
    return hello


def refusal(refused: HandshakeRefused) -> bytes:
    """(relay) The message that tells the client why its HELLO was refused."""
    return encode_frame(goaway_frame(refused.code, refused.reason))


def read_welcome(message: bytes) -> Welcome:
    """(client) The relay's answer to HELLO.

    Raises:
        HandshakeRefused: the relay refused (its GOAWAY's code and reason).
        RemoteProtocolError: the answer is neither one WELCOME nor one GOAWAY frame.
    """
    frame = _only_frame(message, FrameType.WELCOME, "WELCOME")
    if frame.type is FrameType.GOAWAY:
        code, reason = parse_goaway(frame.payload)
        raise HandshakeRefused(code, reason)
    return Welcome.decode(frame.payload)
