"""The sans-I/O core stays sans-I/O: only aio.py may import asyncio.

import-linter fences off aiohttp, websockets, aiomqtt and click, but not the standard
library; this walks every import statement of the package instead (STYLE.md §2.10).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import tunnel_client.protocol

PACKAGE = Path(tunnel_client.protocol.__file__).parent
FORBIDDEN = {"asyncio", "aiohttp", "websockets", "aiomqtt", "click", "relay_server"}
ALLOWED = {"aio.py": {"asyncio"}}
MODULES = sorted(PACKAGE.glob("*.py"))


def imported_roots(source: str) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_the_package_has_the_expected_modules() -> None:
    names = {path.name for path in MODULES}
    assert {"aio.py", "frames.py", "mux.py", "heads.py", "window.py"} <= names


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_no_io_library_is_imported(path: Path) -> None:
    roots = imported_roots(path.read_text())
    assert not roots & (FORBIDDEN - ALLOWED.get(path.name, set()))


def test_the_check_sees_every_import_form() -> None:
    source = "import asyncio.tasks\nfrom aiohttp import web\nfrom . import mux\nimport json"
    assert imported_roots(source) == {"asyncio", "aiohttp", "json"}
