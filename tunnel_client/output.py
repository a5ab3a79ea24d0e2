"""Lines to stdout from a writer thread, so printing never stalls the tunnel.

Writing and flushing one line per request from the event loop cost the client a
quarter of its CPU at high request rates (bench/run.py, py-spy), and a reader that
stops reading the pipe (a notebook cell that finished, a stuck script) would block the
loop and with it every request. Here the loop only appends to a list; a thread writes
whatever has piled up in one go. If more than ``max_pending_bytes`` piles up because
nobody reads, request lines are dropped (and counted) rather than buffered without end.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TextIO

__all__ = ["LineOutput"]

GATHER_S = 0.05
"""Once woken by a request line, the writer waits this long for more lines, so it wakes
at most 20 times a second however many requests come (a request line appears at most
50 ms late, which no reader notices; other lines, the link first, go out at once). The
loop wakes it only when it sleeps for want of lines, so once per batch, not per line.
Each wake-up is a notify under a lock, a timed wait and a thread switch for the GIL: at
5 ms (up to 200 a second) the writer cost the client 10-13 us of CPU per request at 64
connections (bench/run.py --cases small1,small64, 2 interleaved pairs: 73.5/93.4 us at
50 ms vs 86.9/104 at 5 ms)."""


class LineOutput:
    """A line sink for one stream, written by a background thread."""

    def __init__(
        self,
        stream: TextIO,
        *,
        max_pending_bytes: int = 1 << 20,
        dropped_line: Callable[[int], str] = lambda n: f"({n} request lines dropped)",
    ) -> None:
        self.stream = stream
        self.max_pending_bytes = max_pending_bytes
        self._dropped_line = dropped_line
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._hurry = threading.Event()
        """Set by a line that may not wait for the gathering (the link, a status)."""
        self._pending: list[str] = []
        self._pending_bytes = 0
        self._dropped = 0
        self._closed = False
        self._idle = False
        """True while the writer waits for lines: only then does a line wake it."""
        self._thread = threading.Thread(target=self._run, name="tunnel-output", daemon=True)
        self._thread.start()

    def write(self, line: str, *, droppable: bool = False) -> None:
        """Queue one line (without its newline); ``droppable`` lines may be dropped."""
        with self._lock:
            if droppable and self._pending_bytes > self.max_pending_bytes:
                self._dropped += 1
                return
            if self._dropped:  # the reader caught up: say what it missed, in place
                self._pending.append(self._dropped_line(self._dropped))
                self._dropped = 0
            self._pending.append(line)
            self._pending_bytes += len(line) + 1
            wake, self._idle = self._idle, False
        if wake:
            self._wake.set()
        if not droppable:
            self._hurry.set()

    def _take(self) -> str:
        with self._lock:
            lines, self._pending = self._pending, []
            self._pending_bytes = 0
        return "".join(f"{line}\n" for line in lines)

    def _run(self) -> None:
        while True:
            with self._lock:
                wait = self._idle = not self._pending and not self._closed
            if wait:
                self._wake.wait()
                self._wake.clear()
                if not self._closed:
                    self._hurry.wait(GATHER_S)  # at once for a line that may not wait
            self._hurry.clear()
            text = self._take()
            if text:
                try:
                    self.stream.write(text)
                    self.stream.flush()
                except (OSError, ValueError):
                    return  # the reader is gone (broken pipe, closed stream)
            if self._closed and not self._pending:
                return

    def close(self, timeout_s: float = 5.0) -> None:
        """Write what is queued, then stop the thread."""
        self._closed = True
        self._wake.set()
        self._hurry.set()
        self._thread.join(timeout_s)
