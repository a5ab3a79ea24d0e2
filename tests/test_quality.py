"""The code passes its own quality gates: ruff, ruff format, mypy --strict, import fences."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from tests.processes import ROOT


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.timeout(300)
def test_ruff_check() -> None:
    result = _run(sys.executable, "-m", "ruff", "check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.timeout(300)
def test_ruff_format() -> None:
    result = _run(sys.executable, "-m", "ruff", "format", "--check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.timeout(300)
def test_mypy_strict() -> None:
    result = _run(sys.executable, "-m", "mypy")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.timeout(300)
def test_import_fences() -> None:
    lint_imports = shutil.which("lint-imports")
    assert lint_imports is not None, "import-linter is part of the test extras"
    result = _run(lint_imports)
    assert result.returncode == 0, result.stdout + result.stderr
