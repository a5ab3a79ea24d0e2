"""Window growth: a stream whose reader keeps up with a window-limited sender gets a
larger window, within the session's budget; a slow reader never does."""

from __future__ import annotations

import pytest

from tests.protocol.helpers import POST, MuxPair
from tunnel_client.protocol.errors import LocalProtocolError, ResetCode
from tunnel_client.protocol.events import WindowOpened
from tunnel_client.protocol.mux import GROWTH_BUDGET_CAP, GROWTH_CAP, window_growth
from tunnel_client.protocol.window import MIN_WINDOW, STARVED_WITHIN_S, ReceiveWindow

W = MIN_WINDOW
FAST = STARVED_WITHIN_S / 100
"""Far less time per window than a starved stream needs."""
SLOW = STARVED_WITHIN_S * 10


def take_window(window: ReceiveWindow, now: float) -> int | None:
    """The peer filled the window; the reader takes it all at ``now``."""
    window.consume(window.available)
    return window.acknowledge(window.size - window.available, now)


def test_a_reader_that_takes_windows_fast_is_starved() -> None:
    window = ReceiveWindow(W)
    assert take_window(window, 0.0) == W
    assert not window.starved  # the first grant only starts the clock
    assert take_window(window, FAST) == W
    assert window.starved


def test_a_slow_reader_is_never_starved() -> None:
    window = ReceiveWindow(W)
    now = 0.0
    for _ in range(5):
        take_window(window, now)
        assert not window.starved
        now += SLOW


def test_a_reader_leaving_bytes_unread_is_not_starved() -> None:
    window = ReceiveWindow(W)
    take_window(window, 0.0)
    window.consume(W)
    assert window.acknowledge(W // 2, FAST) == W // 2  # half still unread
    assert not window.starved


def test_without_a_clock_nothing_is_starved() -> None:
    window = ReceiveWindow(W)
    for _ in range(3):
        window.consume(W)
        window.acknowledge(W)
        assert not window.starved


def test_grow_checks_its_argument() -> None:
    window = ReceiveWindow(W)
    with pytest.raises(LocalProtocolError):
        window.grow(0)
    window.grow(W)
    assert window.size == window.available == 2 * W


def feed(pair: MuxPair, sid: int, now: float) -> list[WindowOpened]:
    """The relay sends all the credit it has; the client reads it all at ``now``."""
    credit = pair.relay.credit(sid)
    while pair.relay.credit(sid):
        pair.relay.send_data(sid, b"x" * pair.relay.credit(sid))
    pair.deliver(pair.relay)
    pair.client.acknowledge(sid, credit, now)
    return [e for e in pair.deliver(pair.client) if isinstance(e, WindowOpened)]


def test_a_starved_stream_doubles_up_to_the_maximum_and_the_peer_may_use_it() -> None:
    pair = MuxPair(max_frame=W, client_growth=(4 * W, 100 * W))
    sid = pair.open(POST, end_stream=False)
    grants = [feed(pair, sid, i * FAST) for i in range(6)]
    increments = [g[0].increment for g in grants]
    # W (clock starts), then W + W (grown to 2W), 2W + 2W (to 4W), then 4W each time.
    assert increments == [W, 2 * W, 4 * W, 4 * W, 4 * W, 4 * W]
    assert pair.relay.credit(sid) == 4 * W


def test_a_slow_stream_keeps_its_window() -> None:
    pair = MuxPair(max_frame=W, client_growth=(4 * W, 100 * W))
    sid = pair.open(POST, end_stream=False)
    increments = [feed(pair, sid, i * SLOW)[0].increment for i in range(4)]
    assert increments == [W] * 4


def test_growth_stops_at_the_budget_and_an_ended_stream_gives_its_share_back() -> None:
    pair = MuxPair(max_frame=W, client_growth=(4 * W, 3 * W))
    first = pair.open(POST, end_stream=False)
    second = pair.open(POST, end_stream=False)
    for i in range(4):
        feed(pair, first, i * FAST)
    assert pair.relay.credit(first) == 4 * W  # grew by 3W: the whole budget
    for i in range(4):
        feed(pair, second, i * FAST)
    assert pair.relay.credit(second) == W  # nothing left for it
    pair.client.reset_stream(first, ResetCode.CANCEL)
    pair.deliver(pair.client)
    for i in range(4, 8):
        feed(pair, second, i * FAST)
    assert pair.relay.credit(second) == 4 * W


def test_without_growth_windows_stay_fixed() -> None:
    pair = MuxPair(max_frame=W)
    sid = pair.open(POST, end_stream=False)
    assert [feed(pair, sid, i * FAST)[0].increment for i in range(4)] == [W] * 4


@pytest.mark.parametrize("base", [MIN_WINDOW, 256 * 1024, 8 * 1024 * 1024])
def test_the_growth_settings_follow_the_base_window(base: int) -> None:
    max_window, budget = window_growth(base)
    assert base <= max_window <= max(base, GROWTH_CAP)
    assert 0 < budget <= GROWTH_BUDGET_CAP
