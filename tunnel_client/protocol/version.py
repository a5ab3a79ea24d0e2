"""The version of the ``sharetunnel`` distribution, for ``--version`` on both commands.

It lives here because the relay may import nothing of the client but this package.
"""

from __future__ import annotations

import functools
import importlib.metadata
import tomllib
from pathlib import Path

__all__ = ["DISTRIBUTION", "package_version"]

DISTRIBUTION = "sharetunnel"

_PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


@functools.cache
def package_version() -> str:
    """The installed distribution's version, else the one in the source tree's pyproject.toml.

    A checkout run with ``PYTHONPATH`` and no ``pip install`` still knows its version;
    ``0+unknown`` only if neither is there.
    """
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        pass
    try:
        project = tomllib.loads(_PYPROJECT.read_text(encoding="utf-8"))["project"]
        return str(project["version"])
    except (OSError, ValueError, KeyError, TypeError):
        return "0+unknown"
