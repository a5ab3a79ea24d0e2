"""Who may create links: tokens from a file, one per line, reloaded on SIGHUP."""

from __future__ import annotations

import hashlib
import hmac
import logging
from pathlib import Path

from tunnel_client.protocol.errors import ConfigError

__all__ = ["TokenStore"]

logger = logging.getLogger(__name__)


class TokenStore:
    """The set of accepted tokens; with no file, everyone may create links.

    Raises:
        ConfigError: the file cannot be read at start (SIGHUP later keeps the tokens).
    """

    def __init__(self, path: Path | None, what: str = "tokens file") -> None:
        self.path = path
        self.what = what
        """What the file is, in messages."""
        self._digests: dict[str, str] = {}
        if path is not None:
            tokens, problem = self._read(path)
            if tokens is None:
                raise ConfigError([f"cannot use the {what} {path}: {problem}"])
            self._keep(tokens)

    @property
    def required(self) -> bool:
        return self.path is not None

    def reload(self) -> bool:
        """Read the file again; on error keep the tokens we had (say so, return False)."""
        if self.path is None:
            return False
        tokens, problem = self._read(self.path)
        if tokens is None:
            logger.error(
                "cannot use the %s %s (%s): keeping the previous tokens",
                self.what,
                self.path,
                problem,
            )
            return False
        self._keep(tokens)
        return True

    @staticmethod
    def _read(path: Path) -> tuple[list[str] | None, str]:
        """The file's tokens, or None and why they cannot be had."""
        try:
            text = path.read_bytes().decode("utf-8")
        except OSError as exc:
            return None, exc.strerror or str(exc)
        except UnicodeDecodeError as exc:
            byte = exc.object[exc.start]
            return None, f"not UTF-8 text (byte 0x{byte:02x} at offset {exc.start})"
        lines = text.splitlines()
        return [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")], ""

    def _keep(self, tokens: list[str]) -> None:
        # Keep digests, not tokens: an identifier for logs and limits that reveals nothing.
        self._digests = {self._digest(t): t for t in tokens}
        if tokens:
            logger.info("loaded %d token(s) from %s", len(tokens), self.path)
        else:
            logger.warning("the %s %s holds no token: everyone is refused", self.what, self.path)

    def knows(self, token_id: str) -> bool:
        """Whether the token with this id is still in the file."""
        return token_id in self._digests

    @staticmethod
    def _digest(token: str) -> str:
        return hashlib.sha256(token.encode()).hexdigest()[:16]

    def check(self, token: str | None) -> str | None:
        """The token's id when it is accepted, else None. Constant time per token."""
        if token is None:
            return None
        digest = self._digest(token)
        known = self._digests.get(digest)
        if known is not None and hmac.compare_digest(known, token):
            return digest
        return None
