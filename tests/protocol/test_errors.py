"""The exception tree and its codes (tunnel_client/protocol/errors.py)."""

from __future__ import annotations

import pytest

from tunnel_client.protocol import errors
from tunnel_client.protocol.errors import (
    ConfigError,
    FlowControlError,
    GoAwayCode,
    HeadTooLarge,
    InvalidState,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
    ResetCode,
    SessionClosed,
    StreamReset,
    TunnelError,
    port_of_reason,
    unavailable_reason,
)


@pytest.mark.parametrize("name", errors.__all__)
def test_every_exception_derives_from_tunnel_error(name: str) -> None:
    obj = getattr(errors, name)
    if isinstance(obj, type) and issubclass(obj, Exception):
        assert issubclass(obj, TunnelError)


def test_faults_are_split_by_who_is_at_fault() -> None:
    assert issubclass(FlowControlError, RemoteProtocolError)
    assert not issubclass(RemoteProtocolError, LocalProtocolError)
    assert RemoteProtocolError("x").code is GoAwayCode.PROTOCOL_ERROR
    assert issubclass(LocalProtocolError, ProtocolError)
    assert issubclass(InvalidState, AssertionError)
    assert issubclass(HeadTooLarge, LocalProtocolError)


def test_head_too_large_says_how_large_and_the_limit() -> None:
    error = HeadTooLarge("REPLY", 320_896, 262_144)
    assert (error.size, error.limit) == (320_896, 262_144)
    assert str(error) == "REPLY head of 320896 bytes exceeds the limit of 262144 bytes"


def test_the_unavailable_reason_carries_the_port_and_nothing_else() -> None:
    reason = unavailable_reason(7860)
    assert reason == "nothing is listening on port 7860"
    assert port_of_reason(reason) == 7860
    assert port_of_reason("nothing accepted the connection (Connect call failed)") is None
    assert port_of_reason("") is None
    assert port_of_reason("port 0") is None
    assert port_of_reason("port 99999") is None
    assert port_of_reason("port 123456") is None


def test_messages_name_the_code_and_reason() -> None:
    reset = StreamReset(ResetCode.UPSTREAM_TIMEOUT, "no answer in 300 s")
    assert str(reset) == "stream reset (UPSTREAM_TIMEOUT): no answer in 300 s"
    assert (reset.code, reset.reason) == (ResetCode.UPSTREAM_TIMEOUT, "no answer in 300 s")
    assert str(StreamReset(ResetCode.CANCEL)) == "stream reset (CANCEL)"
    closed = SessionClosed(GoAwayCode.EXPIRED, "link expired")
    assert str(closed) == "session closed (EXPIRED): link expired"
    assert str(SessionClosed(GoAwayCode.NORMAL)) == "session closed (NORMAL)"


def test_config_error_collects_every_problem() -> None:
    error = ConfigError(["--port: not a number", "--ttl: not a duration"])
    assert error.problems == ["--port: not a number", "--ttl: not a duration"]
    assert str(error) == "--port: not a number; --ttl: not a duration"


def test_codes_are_stable_on_the_wire() -> None:
    # These numbers travel in GOAWAY and RESET frames: changing one breaks old peers.
    assert [c.value for c in GoAwayCode] == list(range(11))
    assert [c.value for c in ResetCode] == list(range(9))
