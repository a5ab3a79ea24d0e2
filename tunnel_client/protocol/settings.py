"""Settings defined once per program: a table from which everything else is derived.

A setting has one name everywhere: ``stream_window`` is the option
``--stream-window``, the environment variable ``TUNNEL_STREAM_WINDOW`` (the table's
prefix plus the name) and the key ``stream_window`` of the TOML config file. Each
program declares a :class:`Table` of :class:`Setting`; from it come its command-line
options (:func:`option_spec`), the keys its file may hold, and the keyword arguments of
its frozen config dataclass (:meth:`Resolution.fields`).

:func:`resolve` takes each value from the first of: the command line (or the Python
API's arguments), the environment, the config file, the default. It parses every value
itself (click passes text through), remembers where each came from for
``check-config``, and raises one :class:`ConfigError` listing every bad value, each
named by its origin: ``relay.toml: port: "abc" is not a whole number``,
``RELAY_PORT=abc: ...``, ``--port abc: ...``. Empty environment variables count as
unset, as in click.

It lives in the protocol package, pure Python without click, because the relay may
import nothing else of the client; each command line turns the table into click
options in a few lines. The resolver is the one place that reads ``os.environ``, and
only when its caller passes no environment.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import os
import tomllib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .parsers import Flag, Many, Parser

__all__ = [
    "BARE",
    "ConfigFile",
    "Origin",
    "Resolution",
    "Resolved",
    "Setting",
    "Source",
    "Table",
    "option_spec",
    "option_specs",
    "resolve",
]

BARE = "\x00bare"
"""What a command line passes for an option given without its optional value.

No argument can hold a NUL byte, so it cannot be typed: ``--password`` alone is told
apart from ``--password ""``.
"""

_FROM_TARGET: Any = object()


class Origin(enum.Enum):
    """Where a value came from, strongest first."""

    FLAG = "flag"
    ARGUMENT = "argument"
    ENV = "env"
    FILE = "file"
    DEFAULT = "default"


@dataclass(frozen=True)
class Source:
    """An origin and the name it goes by there: ``env TUNNEL_TTL``, ``flag --ttl``."""

    origin: Origin
    name: str = ""

    def __str__(self) -> str:
        return f"{self.origin.value} {self.name}".rstrip()


@dataclass(frozen=True, kw_only=True)
class Setting:
    """One setting: its name, how to read it, its default, help and example."""

    name: str
    """Python identifier; the option, variable and file key derive from it."""
    parser: Parser[Any]
    help: str
    example: str
    """A valid value other than the default, as typed after the option; tests use it."""
    field: str | None = ""
    """The config dataclass field it fills: ``""`` for its own name, None for none."""
    default: Any = _FROM_TARGET
    """Default: the config dataclass field's own default unless given here."""
    default_from: Callable[[Mapping[str, str]], Any] | None = None
    """A default computed from the environment (a path under ``$XDG_STATE_HOME``)."""
    unset: str = ""
    """What None means, for check-config: ``the relay's``."""
    secret: bool = False
    """Masked in check-config output and never shown as a default."""
    bare: str | None = None
    """The value of the option given without one (``--password`` alone); None: needs one."""
    bare_means: str = ""
    """What :attr:`bare` means, for check-config: ``generated when the tunnel starts``."""
    metavar: str | None = None
    off: str | None = None
    """With a value, ``--no-NAME`` is an option too and stands for it
    (``--no-inspect`` = ``--inspect off``)."""
    hidden: bool = False
    """Left out of ``--help`` (still a variable, a file key and in check-config)."""

    def __post_init__(self) -> None:
        if self.field == "":
            object.__setattr__(self, "field", self.name)

    @property
    def option(self) -> str:
        """``--stream-window``."""
        return "--" + self.name.replace("_", "-")

    @property
    def negation(self) -> str:
        """``--no-inspect``: the option that sets :attr:`off` (only when there is one)."""
        return "--no-" + self.option[2:]

    @property
    def negation_key(self) -> str:
        """The key the command line passes the negation under: ``no_inspect``."""
        return "no_" + self.name


@dataclass(frozen=True)
class Table:
    """Every setting of one program, the ``TUNNEL_``-style prefix and the config target."""

    prefix: str
    target: type
    """The frozen config dataclass; field settings must name its fields."""
    settings: tuple[Setting, ...]
    default_file: Callable[[Mapping[str, str]], Path | None] = lambda env: None
    """The config file read when none is named (it may be missing)."""
    defaults: Mapping[str, Any] = field(init=False)

    def __post_init__(self) -> None:
        fields = {f.name: f for f in dataclasses.fields(self.target)}
        defaults: dict[str, Any] = {}
        names = [s.name for s in self.settings]
        if len(set(names)) != len(names):
            raise ValueError(f"{self.prefix}: a setting name is used twice")
        for setting in self.settings:
            default = setting.default
            if setting.field is not None:
                if setting.field not in fields:
                    target_name = self.target.__name__
                    raise ValueError(f"{setting.name}: {target_name} has no {setting.field}")
                target = fields[setting.field]
                if default is _FROM_TARGET:
                    default = target.default
                    if target.default_factory is not dataclasses.MISSING:
                        default = target.default_factory()
            if default is _FROM_TARGET or default is dataclasses.MISSING:
                default = None
            defaults[setting.name] = default
        object.__setattr__(self, "defaults", defaults)

    def __iter__(self) -> Iterator[Setting]:
        return iter(self.settings)

    def __getitem__(self, name: str) -> Setting:
        for setting in self.settings:
            if setting.name == name:
                return setting
        raise KeyError(name)

    def env_var(self, setting: Setting) -> str:
        """``TUNNEL_STREAM_WINDOW``."""
        return self.prefix + setting.name.upper()

    @property
    def config_env_var(self) -> str:
        """``TUNNEL_CONFIG``: names the config file."""
        return self.prefix + "CONFIG"


def option_specs(table: Table, setting: Setting) -> list[tuple[list[str], dict[str, Any]]]:
    """:func:`option_spec`, and ``--no-NAME`` for a setting with :attr:`Setting.off`.

    ``--no-NAME`` passes True under :attr:`Setting.negation_key`; :func:`resolve` reads it.
    """
    specs = [option_spec(table, setting)]
    if setting.off is not None:
        negation = {
            "is_flag": True,
            "default": None,
            "hidden": setting.hidden,
            "help": f"Same as {setting.option} {setting.off}.",
        }
        specs.append(([setting.negation_key, setting.negation], negation))
    return specs


def option_spec(table: Table, setting: Setting) -> tuple[list[str], dict[str, Any]]:
    """Declarations and keyword arguments of ``click.option`` for one setting.

    The option passes text (or a tuple of text, or a bool) through untouched, with
    None when absent, so that :func:`resolve` parses it and names it in errors.
    """
    decls = [setting.name, setting.option]
    kwargs: dict[str, Any] = {"default": None, "hidden": setting.hidden}
    if isinstance(setting.parser, Flag):
        decls[1] += f"/--no-{setting.option[2:]}"
    else:
        kwargs["metavar"] = setting.metavar or setting.parser.metavar
    if isinstance(setting.parser, Many):
        kwargs["multiple"] = True
    if setting.bare is not None:
        kwargs.update(is_flag=False, flag_value=BARE)
    notes = []
    default = table.defaults[setting.name]
    if default is not None and not setting.secret and setting.default_from is None:
        notes.append(f"default: {setting.parser.format(default)}")
    notes.append(f"env: {table.env_var(setting)}")
    if isinstance(setting.parser, Many):
        notes.append("repeatable")
    kwargs["help"] = f"{setting.help}  [{'; '.join(notes)}]"
    return decls, kwargs


@dataclass(frozen=True)
class ConfigFile:
    """The config file consulted, where its name came from, and whether it was there."""

    path: Path | None
    source: Source
    found: bool = False

    def describe(self) -> str:
        """``/etc/relay.toml  (flag --config)`` for check-config."""
        if self.path is None:
            return "none"
        return f"{self.path}  ({self.source}{'' if self.found else ', not found'})"


@dataclass(frozen=True)
class Resolved:
    """A setting's value and where it came from."""

    setting: Setting
    value: Any
    source: Source

    def shown(self) -> str:
        """The value as check-config prints it: secrets masked, None explained."""
        setting = self.setting
        if self.value is None or self.value == ():
            return f"none ({setting.unset})" if setting.unset else "none"
        if setting.bare is not None and self.value == setting.bare:
            return f"({setting.bare_means or 'given without a value'})"
        if setting.secret:
            return "MASKED"
        return setting.parser.format(self.value)


@dataclass(frozen=True)
class Resolution:
    """Every setting of a table, resolved; index it by setting name for the value."""

    table: Table
    file: ConfigFile
    values: Mapping[str, Resolved]

    def __getitem__(self, name: str) -> Any:
        return self.values[name].value

    def fields(self) -> dict[str, Any]:
        """Keyword arguments for the table's config dataclass."""
        return {s.field: self[s.name] for s in self.table if s.field is not None}

    def rows(self) -> list[tuple[str, str, str]]:
        """``(name, value as shown, source)`` for each setting, in table order."""
        return [(r.setting.name, r.shown(), str(r.source)) for r in self.values.values()]

    def lines(self) -> list[str]:
        """What check-config prints: the file, then ``name = value  (source)`` each."""
        rows = [f"{name} = {value}  ({source})" for name, value, source in self.rows()]
        return [f"config file: {self.file.describe()}", *rows]


def resolve(
    table: Table,
    given: Mapping[str, object] | None = None,
    *,
    origin: Origin = Origin.FLAG,
    config: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Resolution:
    """Each setting from ``given`` > environment > config file > default.

    Args:
        given: raw values by setting name (None or ``()`` for absent), from the command
            line (``origin=FLAG``) or the Python API (``origin=ARGUMENT``).
        config: the config file named on the command line or by the API; else
            ``<PREFIX>CONFIG``, else ``table.default_file`` (which may be missing).
        environ: the environment; ``os.environ`` when None.

    Raises:
        ConfigError: listing every problem, each naming the flag, variable or file key.
    """
    env = os.environ if environ is None else environ
    chosen = {k: v for k, v in (given or {}).items() if v is not None and v != ()}
    problems: list[str] = []
    file, data = _read_file(table, config, origin, env, problems)
    values = {}
    for setting in table:
        if setting.off is not None and chosen.get(setting.negation_key):
            if setting.name in chosen:
                problems.append(f"{setting.option} and {setting.negation} exclude each other")
                continue
            chosen[setting.name] = setting.off
        raw, source, where = _pick(table, setting, chosen, origin, env, file, data)
        if source.origin is Origin.DEFAULT:
            value = setting.default_from(env) if setting.default_from else raw
        elif setting.bare is not None and raw == BARE:
            value = setting.bare
        else:
            try:
                value = setting.parser.parse(raw)
            except ValueError as exc:
                problems.append(f"{where}: {exc}")
                continue
        values[setting.name] = Resolved(setting, value, source)
    if problems:
        raise ConfigError(problems)
    return Resolution(table, file, values)


def _pick(
    table: Table,
    setting: Setting,
    given: Mapping[str, object],
    origin: Origin,
    env: Mapping[str, str],
    file: ConfigFile,
    data: Mapping[str, object],
) -> tuple[object, Source, str]:
    """The raw value that wins, its source, and how an error names it."""
    name = setting.name
    if name in given:
        raw = given[name]
        if origin is Origin.FLAG:
            if setting.off is not None and given.get(setting.negation_key):
                return raw, Source(Origin.FLAG, setting.negation), setting.negation
            where = setting.option + (f" {raw}" if isinstance(raw, str) else "")
            return raw, Source(Origin.FLAG, setting.option), where
        return raw, Source(origin, name), f"{name}={raw!r}"
    variable = table.env_var(setting)
    if env.get(variable):
        return env[variable], Source(Origin.ENV, variable), f"{variable}={env[variable]}"
    if name in data:
        return data[name], Source(Origin.FILE, str(file.path)), f"{file.path}: {name}"
    return table.defaults[name], Source(Origin.DEFAULT), ""


def _read_file(
    table: Table,
    config: str | os.PathLike[str] | None,
    origin: Origin,
    env: Mapping[str, str],
    problems: list[str],
) -> tuple[ConfigFile, dict[str, object]]:
    """The config file's settings; its problems (unreadable, not TOML, unknown keys)."""
    if config is not None and str(config):
        path: Path | None = Path(config)
        source = Source(origin, "--config" if origin is Origin.FLAG else "config")
    elif env.get(table.config_env_var):
        path, source = Path(env[table.config_env_var]), Source(Origin.ENV, table.config_env_var)
    else:
        path, source = table.default_file(env), Source(Origin.DEFAULT)
    if path is None:
        return ConfigFile(None, source), {}
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if source.origin is not Origin.DEFAULT:  # named on purpose: it must be there
            problems.append(f"{path}: no such config file (named by {source})")
        return ConfigFile(path, source), {}
    except OSError as exc:
        problems.append(f"{path}: cannot read the config file: {exc.strerror}")
        return ConfigFile(path, source), {}
    except UnicodeDecodeError:
        problems.append(f"{path}: the config file is not UTF-8 text")
        return ConfigFile(path, source), {}
    try:
        data: dict[str, object] = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        problems.append(f"{path}: not valid TOML: {exc}")
        return ConfigFile(path, source, found=True), {}
    known = [s.name for s in table]
    for key in data:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"did you mean {close[0]}?" if close else "the keys are the setting names"
            problems.append(f"{path}: {key}: unknown key ({hint})")
    return ConfigFile(path, source, found=True), data
