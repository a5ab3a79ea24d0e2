"""Revoked links, kept on disk so that a restarted relay still refuses their leases.

A revoked link's lease is signed and valid until its expiry: without a record, the
next relay to start with the same ``--lease-key`` would give the link back. So every
revocation is appended to a JSON-lines file next to the lease key (``revoked.jsonl``),
one object per line (shown here on two)::

    {"subdomain": "k3x9q7m2p4t8w1z5", "expires_at": 1795000000.0,
     "revoked_at": 1794990000.0, "reason": "token withdrawn"}

At start the relay loads the entries not yet past their expiry; entries past it are
dropped from the file then (their leases are refused as expired anyway). Relays that
share a lease key on one volume share the file: appends and the rewrite take an
exclusive ``flock`` on ``revoked.jsonl.lock``, and the rewrite replaces the file
atomically, so no line is lost or torn.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Revocation", "RevocationLog"]

logger = logging.getLogger(__name__)

FILE_NAME = "revoked.jsonl"


@dataclass(frozen=True)
class Revocation:
    """One revoked link: until when its lease would have been valid, and why it ended."""

    subdomain: str
    expires_at: float
    revoked_at: float
    reason: str


class RevocationLog:
    """The revocations file of one lease key; ``path=None`` keeps nothing (in-memory key)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path

    @classmethod
    def beside(cls, lease_key: Path | None) -> RevocationLog:
        """The log next to a lease key file (none for an in-memory key)."""
        return cls(None if lease_key is None else lease_key.parent / FILE_NAME)

    def load(self) -> list[Revocation]:
        """Entries not yet expired; the file is rewritten without the expired ones."""
        if self.path is None or not self.path.exists():
            return []
        now = time.time()
        try:
            with self._locked():
                entries = list(self._read())
                live = [entry for entry in entries if entry.expires_at > now]
                if len(live) < len(entries):
                    self._rewrite(live)
        except OSError as exc:
            logger.error("cannot read revoked links from %s: %s", self.path, exc.strerror)
            return []
        return live

    def append(self, revocation: Revocation) -> bool:
        """Record one revocation; False (and an ERROR line) if the file cannot be written."""
        if self.path is None:
            return False
        line = json.dumps(
            {
                "subdomain": revocation.subdomain,
                "expires_at": revocation.expires_at,
                "revoked_at": revocation.revoked_at,
                "reason": revocation.reason,
            }
        )
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self._locked():
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                with os.fdopen(fd, "a", encoding="utf-8") as file:
                    file.write(line + "\n")
                    file.flush()
                    os.fsync(file.fileno())
        except OSError as exc:
            logger.error(
                "cannot record the revocation of %s in %s (%s): a relay started later "
                "would accept its lease again",
                revocation.subdomain,
                self.path,
                exc.strerror,
            )
            return False
        return True

    def _read(self) -> Iterator[Revocation]:
        assert self.path is not None
        with self.path.open(encoding="utf-8") as file:
            for number, line in enumerate(file, 1):
                if not line.strip():
                    continue
                try:
                    data = json.loads(line)
                    yield Revocation(
                        str(data["subdomain"]),
                        float(data["expires_at"]),
                        float(data.get("revoked_at", 0.0)),
                        str(data.get("reason", "")),
                    )
                except (ValueError, KeyError, TypeError):
                    # A torn last line (a crash mid-write) or a hand edit: skip that line only.
                    logger.warning("%s:%d: not a revocation record, skipped", self.path, number)

    def _rewrite(self, entries: list[Revocation]) -> None:
        assert self.path is not None
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            for entry in entries:
                record = {
                    "subdomain": entry.subdomain,
                    "expires_at": entry.expires_at,
                    "revoked_at": entry.revoked_at,
                    "reason": entry.reason,
                }
                file.write(json.dumps(record) + "\n")
            file.flush()
            os.fsync(file.fileno())
        tmp.replace(self.path)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold an exclusive lock shared by every relay using this file (POSIX only)."""
        assert self.path is not None
        if sys.platform == "win32":  # the embedded relay's platform; it keeps no file
            yield
            return
        import fcntl

        lock = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock
