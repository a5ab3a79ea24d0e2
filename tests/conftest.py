"""Shared fixtures: a real origin server process for the whole session.

Every temporary file of the session, ours, pytest's, Gradio's and those of the processes
the tests start (they inherit ``TMPDIR``), goes under the session's scratch directory,
which is removed when the session ends: a SIGKILLed relay supervisor, Gradio's upload
cache or a browser's leftovers cannot stay behind in /tmp.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator

import pytest

from tests.processes import Origin, run_origin, scratch_root

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
_SESSION_TMP = str(scratch_root())
os.environ["TMPDIR"] = tempfile.tempdir = _SESSION_TMP
os.environ["GRADIO_TEMP_DIR"] = os.path.join(_SESSION_TMP, "gradio")


@pytest.fixture(scope="session")
def origin() -> Iterator[Origin]:
    """The test origin (tests/origin.py) on a free port of 127.0.0.1."""
    with run_origin() as server:
        yield server
