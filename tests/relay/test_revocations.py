"""revoked.jsonl: revocations survive a restart, expired ones are dropped, bad lines skipped."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from relay_server.revocations import Revocation, RevocationLog


def test_revocations_are_appended_and_loaded(tmp_path: Path) -> None:
    log = RevocationLog.beside(tmp_path / "state" / "lease-key.pem")
    assert log.path == tmp_path / "state" / "revoked.jsonl"
    assert log.load() == []
    now = time.time()
    first = Revocation("a" * 16, now + 60, now, "abuse")
    second = Revocation("b" * 16, now + 120, now, "token withdrawn")
    assert log.append(first) and log.append(second)
    assert log.path.stat().st_mode & 0o777 == 0o600
    assert RevocationLog(log.path).load() == [first, second]


def test_expired_entries_are_dropped_from_the_file(tmp_path: Path) -> None:
    log = RevocationLog(tmp_path / "revoked.jsonl")
    now = time.time()
    log.append(Revocation("a" * 16, now - 1, now - 100, "old"))
    log.append(Revocation("b" * 16, now + 60, now, "new"))
    assert [r.subdomain for r in log.load()] == ["b" * 16]
    assert [json.loads(line)["subdomain"] for line in log.path.read_text().splitlines()] == [
        "b" * 16
    ]


def test_a_torn_or_edited_line_is_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    log = RevocationLog(tmp_path / "revoked.jsonl")
    log.append(Revocation("a" * 16, time.time() + 60, time.time(), "x"))
    with log.path.open("a") as file:
        file.write('{"subdomain": "bbbb')  # a crash mid-write
    assert [r.subdomain for r in log.load()] == ["a" * 16]
    assert "not a revocation record" in caplog.text


def test_an_in_memory_key_keeps_no_file(tmp_path: Path) -> None:
    log = RevocationLog.beside(None)
    assert log.path is None
    assert not log.append(Revocation("a" * 16, time.time() + 60, time.time(), "x"))
    assert log.load() == []


def test_an_unwritable_file_is_reported_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "revoked.jsonl").mkdir()  # not a file: opening it fails
    log = RevocationLog(tmp_path / "revoked.jsonl")
    assert not log.append(Revocation("a" * 16, time.time() + 60, time.time(), "x"))
    assert "would accept its lease again" in caplog.text
