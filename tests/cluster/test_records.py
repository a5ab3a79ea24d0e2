"""Cluster records: signed with the cluster secret, bound to their topic."""

from __future__ import annotations

import dataclasses
import json

import pytest

from relay_server.cluster.records import (
    EndedRecord,
    Kind,
    LinkRecord,
    NodeRecord,
    RecordError,
    Topics,
    decode,
    encode,
    peer_mac,
)

SECRET = b"s" * 32
TOPICS = Topics("share.example.com")
LINK = LinkRecord(
    subdomain="abc",
    node="relay-1",
    incarnation="i1",
    peer_url="http://10.0.0.1:8080",
    state="live",
    expires_at=2_000_000_000.0,
    key_hash="k" * 64,
    token_id=None,
    claimed_at=1_700_000_000.5,
)


@pytest.mark.parametrize(
    ("kind", "record", "topic"),
    [
        (Kind.LINK, LINK, TOPICS.link("abc")),
        (Kind.LINK, dataclasses.replace(LINK, bypass_hash="b" * 64), TOPICS.link("abc")),
        (
            Kind.ENDED,
            EndedRecord("abc", "revoked", 2e9, "abuse", "relay-2", 1.5),
            TOPICS.ended("abc"),
        ),
        (
            Kind.NODE,
            NodeRecord("relay-1", "i1", "c1", "http://x:1", "online", 1.0),
            TOPICS.node("relay-1"),
        ),
    ],
    ids=["link", "link-with-bypass", "ended", "node"],
)
def test_a_record_round_trips(kind: Kind, record: object, topic: str) -> None:
    assert decode(SECRET, topic, kind, encode(SECRET, topic, record)) == record  # type: ignore[arg-type]


def test_another_secret_is_refused() -> None:
    payload = encode(b"x" * 32, TOPICS.link("abc"), LINK)
    with pytest.raises(RecordError, match="bad signature"):
        decode(SECRET, TOPICS.link("abc"), Kind.LINK, payload)


def test_a_record_without_a_signature_is_refused() -> None:
    body = json.loads(encode(SECRET, TOPICS.link("abc"), LINK))
    del body["mac"]
    with pytest.raises(RecordError, match="no signature"):
        decode(SECRET, TOPICS.link("abc"), Kind.LINK, json.dumps(body).encode())


def test_a_changed_field_breaks_the_signature() -> None:
    body = json.loads(encode(SECRET, TOPICS.link("abc"), LINK))
    body["peer_url"] = "http://evil:80"
    with pytest.raises(RecordError, match="bad signature"):
        decode(SECRET, TOPICS.link("abc"), Kind.LINK, json.dumps(body).encode())


def test_a_record_moved_to_another_topic_is_refused() -> None:
    payload = encode(SECRET, TOPICS.link("abc"), LINK)
    with pytest.raises(RecordError, match="bad signature"):
        decode(SECRET, TOPICS.link("xyz"), Kind.LINK, payload)


@pytest.mark.parametrize("payload", [b"\xff", b"[1]", b'"x"', b"{"])
def test_garbage_is_refused(payload: bytes) -> None:
    with pytest.raises(RecordError):
        decode(SECRET, TOPICS.link("abc"), Kind.LINK, payload)


def test_topics_parse_only_their_own_cluster() -> None:
    assert TOPICS.parse(TOPICS.link("abc")) == (Kind.LINK, "abc")
    assert TOPICS.parse(TOPICS.node("relay-1:8080")) == (Kind.NODE, "relay-1:8080")
    assert TOPICS.parse(TOPICS.sync("n")) == (Kind.SYNC, "n")
    assert TOPICS.parse("sharetunnel/other/links/abc") is None
    assert TOPICS.parse(TOPICS.root + "/links/a/b") is None
    assert TOPICS.parse(TOPICS.root + "/what/abc") is None
    assert TOPICS.parse(TOPICS.root + "/links/") is None


def test_peer_proofs_differ_by_role_and_nonces() -> None:
    parts = ("n1", "n2", "a", "b")
    assert peer_mac(SECRET, "dialer", *parts) != peer_mac(SECRET, "listener", *parts)
    assert peer_mac(SECRET, "dialer", *parts) != peer_mac(SECRET, "dialer", "n1", "n3", "a", "b")
    assert peer_mac(SECRET, "dialer", *parts) == peer_mac(SECRET, "dialer", *parts)
