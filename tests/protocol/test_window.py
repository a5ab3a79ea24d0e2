"""Flow-control windows (tunnel_client/protocol/window.py)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.protocol.helpers import examples
from tunnel_client.protocol.errors import FlowControlError, LocalProtocolError
from tunnel_client.protocol.window import MAX_WINDOW, MIN_WINDOW, ReceiveWindow, SendCredit


@pytest.mark.parametrize("size", [MIN_WINDOW - 1, MAX_WINDOW + 1, 0, -1])
def test_receive_window_size_bounds(size: int) -> None:
    with pytest.raises(LocalProtocolError, match="out of range"):
        ReceiveWindow(size)


@pytest.mark.parametrize("size", [MIN_WINDOW, MAX_WINDOW])
def test_receive_window_extremes(size: int) -> None:
    window = ReceiveWindow(size)
    assert window.size == window.available == size


def test_consume_within_and_beyond_credit() -> None:
    window = ReceiveWindow(MIN_WINDOW)
    window.consume(MIN_WINDOW - 1)
    window.consume(1)
    assert window.available == 0
    window.consume(0)  # an empty DATA with FIN costs nothing
    with pytest.raises(FlowControlError, match="only 0 of credit"):
        window.consume(1)


def test_increments_are_batched_at_half_window() -> None:
    window = ReceiveWindow(MIN_WINDOW)
    window.consume(MIN_WINDOW // 2)
    assert window.acknowledge(MIN_WINDOW // 2 - 1) is None
    assert window.acknowledge(1) == MIN_WINDOW // 2
    assert window.available == MIN_WINDOW
    # The counter restarted: another half window is needed for the next grant.
    window.consume(100)
    assert window.acknowledge(100) is None
    assert window.available == MIN_WINDOW - 100


def test_empty_window_grants_any_acknowledgement() -> None:
    window = ReceiveWindow(MIN_WINDOW)
    window.consume(MIN_WINDOW)
    assert window.acknowledge(10) == 10
    assert window.available == 10
    assert window.acknowledge(0) is None  # nothing taken: nothing to grant


def test_acknowledge_never_exceeds_what_was_received() -> None:
    window = ReceiveWindow(MIN_WINDOW)
    window.consume(10)
    with pytest.raises(LocalProtocolError, match="more bytes than were received"):
        window.acknowledge(11)
    with pytest.raises(LocalProtocolError, match="negative"):
        window.acknowledge(-1)


@pytest.mark.parametrize("initial", [-1, MAX_WINDOW + 1])
def test_send_credit_bounds(initial: int) -> None:
    with pytest.raises(LocalProtocolError, match="out of range"):
        SendCredit(initial)


def test_send_credit_take_and_grant() -> None:
    credit = SendCredit(100)
    assert credit.take(30) == 30
    assert credit.take(100) == 70
    assert credit.take(5) == 0
    credit.grant(50)
    assert credit.available == 50
    with pytest.raises(FlowControlError, match="positive"):
        credit.grant(0)
    with pytest.raises(FlowControlError, match="overflows"):
        credit.grant(MAX_WINDOW - 49)
    credit.grant(MAX_WINDOW - 50)
    assert credit.available == MAX_WINDOW


# -- properties ---------------------------------------------------------------------------

ops = st.lists(
    st.tuples(st.sampled_from(["send", "ack"]), st.integers(0, 3 * MIN_WINDOW)), max_size=60
)


@examples(200)
@given(st.integers(MIN_WINDOW, 4 * MIN_WINDOW), ops)
def test_property_window_and_credit_agree(size: int, steps: list[tuple[str, int]]) -> None:
    """A sender and a receiver that follow the rules never break one and stay in step.

    The receiver's window never goes negative nor above its size; it grants only at half
    a window or when empty; the bytes received and not yet taken never exceed the window.
    """
    window = ReceiveWindow(size)
    credit = SendCredit(size)
    unacked = 0
    for op, n in steps:
        if op == "send":
            sent = credit.take(n)
            window.consume(sent)
            unacked += sent
        else:
            n = min(n, unacked)
            before = window.available
            increment = window.acknowledge(n)
            unacked -= n
            if increment is not None:
                assert increment >= size // 2 or before == 0
                credit.grant(increment)
        assert 0 <= window.available <= size
        assert credit.available == window.available
        assert unacked <= size
        assert unacked + window.available <= size


@examples(200)
@given(st.integers(MIN_WINDOW, 4 * MIN_WINDOW), st.lists(st.integers(0, 2 * MIN_WINDOW)))
def test_property_overrunning_the_window_is_a_flow_control_error(
    size: int, sends: list[int]
) -> None:
    window = ReceiveWindow(size)
    total = 0
    for n in sends:
        if total + n > size:
            with pytest.raises(FlowControlError):
                window.consume(n)
            assert window.available == size - total  # a refused consume changes nothing
            return
        window.consume(n)
        total += n
        assert window.available == size - total >= 0


@examples(200)
@given(st.integers(0, MAX_WINDOW), st.lists(st.integers(-5, MAX_WINDOW), max_size=10))
def test_property_credit_never_overflows(initial: int, grants: list[int]) -> None:
    credit = SendCredit(initial)
    for increment in grants:
        before = credit.available
        if increment <= 0 or before + increment > MAX_WINDOW:
            with pytest.raises(FlowControlError):
                credit.grant(increment)
            assert credit.available == before
        else:
            credit.grant(increment)
        assert 0 <= credit.available <= MAX_WINDOW
