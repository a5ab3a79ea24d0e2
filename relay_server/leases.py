"""Signed leases: a client's proof that a link is its own, until the link expires.

A lease is ``base64url(payload) "." base64url(signature)`` where the payload is JSON
``{"s": subdomain, "e": expires_at, "k": sha256(client secret), "t": token id}`` (``t``
only for links made with a token, so per-token limits keep counting a link that comes
back after a relay restart) and the signature is
Ed25519 over the payload bytes. The relay hands one out in every WELCOME. To reclaim a
link after a drop or a relay restart, a client sends the lease *and* its secret; a lease
alone (copied from a log, say) is useless to anyone else. The signing key lives in a file
created with owner-only permissions, so leases survive a relay restart, and every relay
of a cluster that shares the key accepts them.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from .errors import LeaseExpired, LeaseInvalid

__all__ = ["Lease", "LeaseSigner", "hash_secret", "load_or_create_key"]


def hash_secret(secret: str) -> str:
    """The form of a client secret that goes into a lease."""
    return hashlib.sha256(secret.encode()).hexdigest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def load_or_create_key(path: Path | None) -> Ed25519PrivateKey:
    """Read the signing key, creating it (mode 0600) on first start; None: in memory."""
    if path is None:
        return Ed25519PrivateKey.generate()
    if not path.exists():
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as file:
            file.write(pem)
        try:
            # link() publishes the whole file at once and fails if another relay
            # sharing the directory got there first: then its key wins.
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(loaded, Ed25519PrivateKey):
        raise ValueError(f"{path} holds a key that is not Ed25519")
    return loaded


@dataclass(frozen=True)
class Lease:
    """What a valid lease says."""

    subdomain: str
    expires_at: float
    key_hash: str
    token_id: str | None = None
    """The id of the token the link was made with (see :class:`~.tokens.TokenStore`)."""


class LeaseSigner:
    """Issues and checks leases with one Ed25519 key."""

    def __init__(self, key: Ed25519PrivateKey, clock: Callable[[], float] = time.time) -> None:
        self._key = key
        self._public = key.public_key()
        self._clock = clock

    def issue(self, lease: Lease) -> str:
        fields: dict[str, object] = {
            "s": lease.subdomain,
            "e": lease.expires_at,
            "k": lease.key_hash,
        }
        if lease.token_id is not None:
            fields["t"] = lease.token_id
        payload = json.dumps(fields, separators=(",", ":")).encode()
        return f"{_b64(payload)}.{_b64(self._key.sign(payload))}"

    def derive_secret(self, purpose: str) -> bytes:
        """A secret for ``purpose`` that every relay holding this key derives alike.

        Ed25519 signatures are deterministic, so the signature of the purpose is a value
        only holders of the key can compute, the same on every node of a cluster.
        """
        return hashlib.sha256(self._key.sign(f"sharetunnel-derive\n{purpose}".encode())).digest()

    def verify(self, token: str, client_secret: str) -> Lease:
        """Check a lease presented with a client secret.

        Raises:
            LeaseInvalid: forged, corrupted, or presented without the matching secret.
            LeaseExpired: genuine but past its expiry.
        """
        try:
            payload_b64, signature_b64 = token.split(".")
            payload, signature = _unb64(payload_b64), _unb64(signature_b64)
            self._public.verify(signature, payload)
        except (ValueError, binascii.Error, InvalidSignature):
            raise LeaseInvalid("the lease was not issued by this relay") from None
        try:
            claims: dict[str, Any] = json.loads(payload)
            token_id = claims.get("t")
            lease = Lease(
                str(claims["s"]),
                float(claims["e"]),
                str(claims["k"]),
                None if token_id is None else str(token_id),
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            raise LeaseInvalid("the lease is malformed") from None
        if lease.expires_at <= self._clock():
            raise LeaseExpired(lease.subdomain, lease.expires_at)
        if not hmac.compare_digest(lease.key_hash, hash_secret(client_secret)):
            raise LeaseInvalid("the lease belongs to another client")
        return lease
