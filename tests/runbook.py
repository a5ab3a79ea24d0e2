"""The commands of ops/RUNBOOK.md, as the tests run them.

The runbook's commands are the tests' commands: a test finds a command line in the
runbook's code blocks by how it starts, points it at the relay under test (its admin
port, its token file, a link), and runs it with bash. A runbook edit that breaks a
command breaks a test.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tests.processes import ROOT

__all__ = ["RUNBOOK", "run_runbook_command", "runbook_command"]

RUNBOOK = ROOT / "ops" / "RUNBOOK.md"

ADMIN = "http://127.0.0.1:9090"
"""The admin listener as the runbook writes it."""
TOKEN_FILE = "/etc/sharetunnel/admin-token"
"""The admin token file as the runbook writes it."""
LINK = "<sub>"


def _code_lines() -> list[str]:
    """Every line inside a fenced code block of the runbook, continuations joined."""
    lines: list[str] = []
    inside = False
    pending = ""
    for raw in RUNBOOK.read_text().splitlines():
        if raw.lstrip().startswith("```"):
            inside = not inside
            continue
        if not inside:
            continue
        line = pending + raw.strip()
        if line.endswith("\\"):
            pending = line[:-1].rstrip() + " "
            continue
        pending = ""
        lines.append(line)
    return lines


def runbook_command(start: str) -> str:
    """The first command of the runbook's code that starts with ``start``."""
    for line in _code_lines():
        if line.startswith(start):
            return line
    raise AssertionError(f"ops/RUNBOOK.md has no command starting with {start!r}")


def run_runbook_command(
    start: str, *, admin_port: int, token_file: Path | None = None, link: str = ""
) -> subprocess.CompletedProcess[str]:
    """Run a runbook command against a test relay's admin listener."""
    command = runbook_command(start).replace(ADMIN, f"http://127.0.0.1:{admin_port}")
    if token_file is not None:
        command = command.replace(TOKEN_FILE, str(token_file))
    command = command.replace(LINK, link)
    assert not re.search(r"<\w+>", command), f"a placeholder is left in {command!r}"
    return subprocess.run(
        ["bash", "-c", command], capture_output=True, text=True, timeout=30, check=False
    )
