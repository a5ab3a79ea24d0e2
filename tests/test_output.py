"""The line writer never blocks its caller, keeps order, and drops only request lines."""

from __future__ import annotations

import io
import os
import threading
import time

import pytest

from tunnel_client import output as output_module
from tunnel_client.output import LineOutput


def test_lines_arrive_in_order_and_all_are_written_on_close() -> None:
    sink = io.StringIO()
    output = LineOutput(sink)
    for i in range(1000):
        output.write(f"line {i}", droppable=i % 2 == 0)
    output.close()
    assert sink.getvalue().splitlines() == [f"line {i}" for i in range(1000)]


def test_a_reader_that_stops_reading_never_blocks_the_writer() -> None:
    read_end, write_end = os.pipe()
    stream = os.fdopen(write_end, "w")
    output = LineOutput(stream, max_pending_bytes=64 * 1024)
    started = time.monotonic()
    for i in range(200_000):  # far more than the pipe (64 KiB) and the cap hold
        output.write(f"request {i:06d} " + "x" * 40, droppable=True)
    output.write("important")
    assert time.monotonic() - started < 10, "write() must not wait for the reader"
    # Now the reader comes back and drains everything.
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(_read_all(read_end)))
    reader.start()
    output.close()
    stream.close()
    reader.join(10)
    lines = b"".join(received).decode().splitlines()
    assert lines[-1] == "important"
    dropped = [line for line in lines if line.endswith("request lines dropped)")]
    kept = [line for line in lines if line.startswith("request ")]
    count = sum(int(line.strip("(").split()[0]) for line in dropped)
    assert dropped and count > 0
    assert len(kept) + count == 200_000  # every line is either written or counted
    assert kept == sorted(kept)


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    os.close(fd)
    return b"".join(chunks)


def _wait_for(condition: object, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.01)
    return False


def test_request_lines_gather_but_other_lines_go_out_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Request lines may wait for company; the link or a status line never does. With a
    gathering time far beyond the test's patience, only hurrying can pass."""
    monkeypatch.setattr(output_module, "GATHER_S", 60.0)
    sink = io.StringIO()
    output = LineOutput(sink)
    try:
        output.write("GET / 200", droppable=True)  # wakes the writer, which gathers
        output.write("ready: https://abc.example")
        assert _wait_for(lambda: sink.getvalue().count("\n") == 2), sink.getvalue()
        assert sink.getvalue().splitlines() == ["GET / 200", "ready: https://abc.example"]
        output.write("GET /again 200", droppable=True)
    finally:
        started = time.monotonic()
        output.close()
    assert time.monotonic() - started < 10, "close() must not wait out the gathering"
    assert sink.getvalue().splitlines()[-1] == "GET /again 200"
