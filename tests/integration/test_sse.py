"""Server-sent events through the tunnel: delivered one by one, as the origin produces them."""

from __future__ import annotations

import itertools
import json
import re
import time
from typing import Any

import aiohttp
import pytest

from tests.integration.conftest import Link

pytestmark = pytest.mark.integration

_TIMESTAMP = re.compile(rb'"t": [0-9.e+-]+')


async def _read_events(port: int, host: str, query: str) -> list[tuple[float, dict[str, Any]]]:
    """Each event's data with the wall-clock time its line arrived here."""
    events = []
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/sse?{query}", headers={"Host": host}) as response,
    ):
        assert response.status == 200
        assert response.headers["Content-Type"] == "text/event-stream"
        async for line in response.content:
            if line.startswith(b"data: "):
                events.append((time.time(), json.loads(line[6:])))
    return events


async def test_events_arrive_one_by_one_as_they_are_produced(link: Link) -> None:
    count, interval = 5, 0.5
    events = await _read_events(link.port, link.host, f"n={count}&interval={interval}")
    assert [data["i"] for _, data in events] == list(range(count))
    for (arrived, data), (_, following) in itertools.pairwise(events):
        # Batched or buffered delivery would hand event i over only after the origin
        # produced i+1 (or the whole stream); half a second is the slack.
        assert arrived < following["t"], (data, following, arrived)
    # The origin really spaced them out: this is not a test of an instant stream.
    assert events[-1][1]["t"] - events[0][1]["t"] >= (count - 1) * interval * 0.9


def test_the_stream_is_what_the_origin_sent(link: Link) -> None:
    """Headers, ids and framing as direct, for many events in a quick burst."""
    via = link.fetch("/sse?n=200&interval=0")
    direct = link.direct("/sse?n=200&interval=0")
    assert via.status == direct.status == 200
    for name in ("Content-Type", "Cache-Control"):
        assert via.header(name) == direct.header(name)
    assert via.header("Content-Length") is None  # streamed, not gathered up to count it
    # Only the timestamps in the data differ between two runs.
    assert _TIMESTAMP.sub(b"T", via.body) == _TIMESTAMP.sub(b"T", direct.body)
    assert via.body.count(b"\n\n") == 200
