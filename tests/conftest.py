"""Shared fixtures: a real origin server process for the whole session."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.processes import Origin, run_origin

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


@pytest.fixture(scope="session")
def origin() -> Iterator[Origin]:
    """The test origin (tests/origin.py) on a free port of 127.0.0.1."""
    with run_origin() as server:
        yield server
