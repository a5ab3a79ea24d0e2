"""Ways to set one setting of a table, for the table-driven tests of both programs.

Every setting carries an ``example``: a valid value other than its default. A case
sets it by flag, by environment variable or by config-file key, and says what the
program must then use and what check-config must print.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.processes import ROOT
from tunnel_client.protocol.parsers import FilePath, Flag
from tunnel_client.protocol.settings import Setting, Table

WAYS = ("flag", "env", "file")


def clean_env(table: Table, tmp_path: Path) -> dict[str, str | None]:
    """For ``CliRunner(env=...)``: no variable of the table's prefix, homes under tmp_path."""
    env: dict[str, str | None] = {k: None for k in os.environ if k.startswith(table.prefix)}
    env.update(
        HOME=str(tmp_path / "home"),
        XDG_CONFIG_HOME=str(tmp_path / "config"),
        XDG_STATE_HOME=str(tmp_path / "state"),
    )
    return env


def subprocess_env(tmp_path: Path, extra: dict[str, str]) -> dict[str, str]:
    """For a real command: this checkout on the path, no TUNNEL_/RELAY_ variable, homes
    under tmp_path, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TUNNEL_", "RELAY_"))}
    env.update(
        PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
        HOME=str(tmp_path / "home"),
        XDG_CONFIG_HOME=str(tmp_path / "config"),
        XDG_STATE_HOME=str(tmp_path / "state"),
    )
    return {**env, **extra}


def example_text(setting: Setting, tmp_path: Path) -> str:
    """The setting's example as typed; file names are made under tmp_path (and created
    when the setting wants an existing file)."""
    if isinstance(setting.parser, FilePath):
        path = tmp_path / setting.example
        if setting.parser.exists:
            path.write_text("example\n")
        return str(path)
    return setting.example


@dataclass
class Case:
    """Command-line arguments, variables and a config file that set one setting."""

    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    file: Path | None = None
    source: str = ""
    """What check-config prints in parentheses."""


def case(table: Table, setting: Setting, text: str, way: str, tmp_path: Path) -> Case:
    """Set ``setting`` to ``text`` one ``way``."""
    if way == "flag":
        if isinstance(setting.parser, Flag):
            on = setting.parser.parse(text)
            args = [setting.option if on else f"--no-{setting.option[2:]}"]
        else:
            args = [setting.option, text]
        return Case(args=args, source=f"flag {setting.option}")
    if way == "env":
        variable = table.env_var(setting)
        return Case(env={variable: text}, source=f"env {variable}")
    path = tmp_path / "settings.toml"
    # Every parser takes text, so the file can quote each value (TOML strings are JSON's).
    path.write_text(f"{setting.name} = {json.dumps(text)}\n")
    return Case(args=["--config", str(path)], file=path, source=f"file {path}")


def shown(setting: Setting, value: Any) -> str:
    """How check-config prints a value the user set."""
    return "MASKED" if setting.secret else setting.parser.format(value)


def settings_params(table: Table, ways: tuple[str, ...] = WAYS, skip: tuple[str, ...] = ()) -> Any:
    """``pytest.mark.parametrize`` over every setting of a table (but ``skip``) and way."""
    pairs = [(s, way) for s in table if s.name not in skip for way in ways]
    return pytest.mark.parametrize(
        ("setting", "way"), pairs, ids=[f"{s.name}-{way}" for s, way in pairs]
    )
