"""Per-stream flow-control windows (after h2's ``WindowManager``).

Each side of a stream keeps two numbers:

* its **receive window** (:class:`ReceiveWindow`): how many bytes the peer may still
  send. DATA and MESSAGE payloads consume it; the application acknowledges bytes once it
  has taken them, and once half the window has been acknowledged (or the window is
  empty) the side grants the acknowledged bytes back to the peer with one WINDOW frame.
  Batching the grants keeps WINDOW frames rare: one per half window, not one per chunk.
* its **send credit** (:class:`SendCredit`): how many bytes it may still send. It starts
  at the window the peer announced in the handshake and grows by every WINDOW received.

Because a side only grants back what its application has taken, the bytes buffered for
one stream never exceed its receive window: this is the memory bound of every stream.

A fixed window caps one stream's throughput at window / round trip: 256 KiB moved a
100 MiB download at ~250 MB/s on loopback and would allow ~5 MB/s over a 50 ms path.
So a window may **grow** (:meth:`ReceiveWindow.grow`, decided by the mux within a
session-wide budget) when a grant finds it *starved*: the application took a whole
window's worth of bytes within :data:`STARVED_WITHIN_S` and left almost nothing unread,
so the window, not the reader, sets the pace. A slow reader, or a slow trickle read at
once (server-sent events), never looks starved: its window, and the memory it may hold,
stay as they are.
"""

from __future__ import annotations

from .errors import FlowControlError, LocalProtocolError

__all__ = ["MAX_WINDOW", "MIN_WINDOW", "STARVED_WITHIN_S", "ReceiveWindow", "SendCredit"]

MAX_WINDOW = 2**31 - 1
"""No window or credit may exceed this (as in HTTP/2)."""

MIN_WINDOW = 16 * 1024
"""A side must announce a receive window of at least 16 KiB."""

STARVED_WITHIN_S = 0.05
"""A stream whose reader takes a window's worth of bytes faster than this is starved:
at 256 KiB, faster than ~5 MB/s, what that window allows over a 50 ms round trip."""


class ReceiveWindow:
    """How much the peer may send us on one stream, and when to grant more."""

    __slots__ = ("_acknowledged", "_available", "_granted_at", "size", "starved")

    def __init__(self, size: int) -> None:
        if not MIN_WINDOW <= size <= MAX_WINDOW:
            raise LocalProtocolError(f"window size {size} out of range")
        self.size = size
        self._available = size
        self._acknowledged = 0
        self.starved = False
        """Set by each grant: the window, not the reader, was what held the peer back."""
        self._granted_at: float | None = None

    @property
    def available(self) -> int:
        """Bytes the peer may still send before it must wait for a WINDOW."""
        return self._available

    def consume(self, n: int) -> None:
        """Account for ``n`` bytes received from the peer.

        Raises:
            FlowControlError: if the peer sent more than its credit.
        """
        if n > self._available:
            raise FlowControlError(f"peer sent {n} bytes with only {self._available} of credit")
        self._available -= n

    def acknowledge(self, n: int, now: float | None = None) -> int | None:
        """Record that the application took ``n`` bytes (at time ``now``, in seconds:
        without it, the window is never found starved).

        Returns:
            The increment to send in a WINDOW frame, or None when it is not yet worth one.
        """
        if n < 0:
            raise LocalProtocolError("cannot acknowledge a negative byte count")
        self._acknowledged += n
        if self._acknowledged > self.size - self._available:
            raise LocalProtocolError("acknowledged more bytes than were received")
        if self._acknowledged >= self.size // 2 or (
            self._available == 0 and self._acknowledged > 0
        ):
            increment = self._acknowledged
            unread = self.size - self._available - increment
            last, self._granted_at = self._granted_at, now
            # Rate of the reader since the last grant, against a window per STARVED_WITHIN_S.
            self.starved = (
                now is not None
                and last is not None
                and unread <= self.size // 4
                and increment * STARVED_WITHIN_S >= self.size * (now - last)
            )
            self._acknowledged = 0
            self._available += increment
            return increment
        return None

    def grow(self, extra: int) -> None:
        """Enlarge the window by ``extra`` bytes, granted to the peer at once (the caller
        adds them to the WINDOW increment it sends)."""
        if extra <= 0 or self.size + extra > MAX_WINDOW:
            raise LocalProtocolError(f"cannot grow a {self.size}-byte window by {extra}")
        self.size += extra
        self._available += extra


class SendCredit:
    """How much we may still send the peer on one stream."""

    __slots__ = ("available",)

    def __init__(self, initial: int) -> None:
        if not 0 <= initial <= MAX_WINDOW:
            raise LocalProtocolError(f"initial credit {initial} out of range")
        self.available = initial

    def grant(self, increment: int) -> None:
        """Add credit from a WINDOW frame.

        Raises:
            FlowControlError: if the increment is zero or the credit would overflow.
        """
        if increment <= 0:
            raise FlowControlError("WINDOW increment must be positive")
        if self.available + increment > MAX_WINDOW:
            raise FlowControlError("WINDOW increment overflows the maximum window")
        self.available += increment

    def take(self, wanted: int) -> int:
        """Spend up to ``wanted`` bytes of credit; return how many were granted."""
        n = min(wanted, self.available)
        self.available -= n
        return n
