"""Who may create links: tokens from a file, one per line, reloaded on SIGHUP."""

from __future__ import annotations

import hashlib
import hmac
import logging
from pathlib import Path

__all__ = ["TokenStore"]

logger = logging.getLogger(__name__)


class TokenStore:
    """The set of accepted tokens; with no file, everyone may create links."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._digests: dict[str, str] = {}
        if path is not None:
            self.reload()

    @property
    def required(self) -> bool:
        return self.path is not None

    def reload(self) -> bool:
        """Read the file again; on error keep the tokens we had (say so, return False)."""
        if self.path is None:
            return False
        try:
            lines = self.path.read_text().splitlines()
        except OSError as exc:
            logger.error(
                "cannot read tokens file %s (%s): keeping the previous tokens",
                self.path,
                exc.strerror,
            )
            return False
        tokens = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
        # Keep digests, not tokens: an identifier for logs and limits that reveals nothing.
        self._digests = {self._digest(t): t for t in tokens}
        logger.info("loaded %d token(s) from %s", len(tokens), self.path)
        return True

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
