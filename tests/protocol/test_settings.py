"""The settings engine (tunnel_client/protocol/settings.py) on a small table of its own."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tunnel_client.protocol.errors import ConfigError
from tunnel_client.protocol.parsers import Duration, FilePath, Flag, Many, Text, Whole
from tunnel_client.protocol.settings import (
    BARE,
    ConfigFile,
    Origin,
    Setting,
    Source,
    Table,
    option_spec,
    resolve,
)


@dataclass(frozen=True, kw_only=True)
class Toy:
    port: int = 80
    wait_s: float = 5.0
    names: tuple[str, ...] = field(default_factory=tuple)
    key: Path | None = None


def _home(env: Mapping[str, str]) -> Path | None:
    return Path(env["HOME"]) / "toy.toml" if env.get("HOME") else None


TABLE = Table(
    prefix="TOY_",
    target=Toy,
    default_file=_home,
    settings=(
        Setting(name="port", parser=Whole(1, 65535), help="Port.", example="81"),
        Setting(name="wait", field="wait_s", parser=Duration(), help="Wait.", example="1m"),
        Setting(name="names", parser=Many(Text()), help="Names.", example="a"),
        Setting(
            name="key",
            parser=FilePath(),
            default_from=lambda env: Path(env.get("STATE", "/state")) / "key",
            help="Key.",
            example="k",
        ),
        Setting(
            name="secret",
            field=None,
            parser=Text(),
            secret=True,
            bare="",
            bare_means="made up",
            help="Secret.",
            example="s",
        ),
        Setting(
            name="loud",
            field=None,
            parser=Flag(),
            default=False,
            hidden=True,
            unset="?",
            help="Loud.",
            example="true",
        ),
    ),
)


def test_defaults_come_from_the_dataclass_or_the_table() -> None:
    assert TABLE.defaults == {
        "port": 80,
        "wait": 5.0,
        "names": (),
        "key": None,
        "secret": None,
        "loud": False,
    }
    resolution = resolve(TABLE, environ={"STATE": "/s"})
    assert resolution.fields() == {"port": 80, "wait_s": 5.0, "names": (), "key": Path("/s/key")}
    assert resolution.file == ConfigFile(None, Source(Origin.DEFAULT))
    assert all(r.source == Source(Origin.DEFAULT) for r in resolution.values.values())


def test_a_table_must_match_its_dataclass() -> None:
    wrong = Setting(name="port", field="prt", parser=Whole(), help="", example="1")
    with pytest.raises(ValueError, match="Toy has no prt"):
        Table(prefix="T_", target=Toy, settings=(wrong,))
    own = Setting(name="port", parser=Whole(), default=8080, help="", example="1")
    assert Table(prefix="T_", target=Toy, settings=(own,)).defaults == {"port": 8080}
    twice = Setting(name="port", parser=Whole(), help="", example="1")
    with pytest.raises(ValueError, match="used twice"):
        Table(prefix="T_", target=Toy, settings=(twice, twice))


def test_lookups() -> None:
    assert TABLE["wait"].option == "--wait"
    assert TABLE.env_var(TABLE["wait"]) == "TOY_WAIT"
    assert TABLE.config_env_var == "TOY_CONFIG"
    assert [s.name for s in TABLE][:2] == ["port", "wait"]
    with pytest.raises(KeyError):
        TABLE["nope"]


def test_option_specs() -> None:
    decls, kwargs = option_spec(TABLE, TABLE["wait"])
    assert decls == ["wait", "--wait"]
    assert kwargs == {
        "default": None,
        "hidden": False,
        "metavar": "DURATION",
        "help": "Wait.  [default: 5s; env: TOY_WAIT]",
    }
    decls, kwargs = option_spec(TABLE, TABLE["loud"])
    assert decls == ["loud", "--loud/--no-loud"] and kwargs["hidden"] is True
    assert "metavar" not in kwargs
    _, kwargs = option_spec(TABLE, TABLE["names"])
    assert kwargs["multiple"] is True and kwargs["help"].endswith("; repeatable]")
    _, kwargs = option_spec(TABLE, TABLE["secret"])
    assert kwargs["flag_value"] == BARE and kwargs["is_flag"] is False
    assert kwargs["help"] == "Secret.  [env: TOY_SECRET]"
    _, kwargs = option_spec(TABLE, TABLE["key"])
    assert "default:" not in kwargs["help"]


def test_given_beats_env_beats_file_beats_default(tmp_path: Path) -> None:
    path = tmp_path / "toy.toml"
    path.write_text('port = 1\nwait = 3\nnames = ["f"]\n')
    env = {"TOY_CONFIG": str(path), "TOY_PORT": "2", "TOY_WAIT": "4s"}
    resolution = resolve(TABLE, {"port": "3", "names": None}, environ=env)
    assert resolution["port"] == 3 and resolution.values["port"].source == Source(
        Origin.FLAG, "--port"
    )
    assert resolution["wait"] == 4.0
    assert resolution["names"] == ("f",)
    assert str(resolution.values["names"].source) == f"file {path}"
    assert resolution.file == ConfigFile(path, Source(Origin.ENV, "TOY_CONFIG"), found=True)


def test_empty_variables_and_absent_values_count_as_unset() -> None:
    resolution = resolve(TABLE, {"port": None, "names": ()}, environ={"TOY_PORT": ""})
    assert resolution["port"] == 80 and resolution["names"] == ()


def test_arguments_are_named_as_arguments() -> None:
    resolution = resolve(TABLE, {"wait": 2}, origin=Origin.ARGUMENT, environ={})
    assert str(resolution.values["wait"].source) == "argument wait"
    with pytest.raises(ConfigError) as caught:
        resolve(TABLE, {"port": "x"}, origin=Origin.ARGUMENT, environ={})
    assert caught.value.problems == ["port='x': \"x\" is not a whole number"]


def test_a_bare_option_takes_the_bare_value() -> None:
    resolution = resolve(TABLE, {"secret": BARE}, environ={})
    assert resolution["secret"] == ""
    assert "secret = (made up)  (flag --secret)" in resolution.lines()


def test_check_config_lines() -> None:
    resolution = resolve(TABLE, {"secret": "hush", "names": ("a", "b")}, environ={"HOME": "/h"})
    assert resolution.lines() == [
        "config file: /h/toy.toml  (default, not found)",
        "port = 80  (default)",
        "wait = 5s  (default)",
        "names = a, b  (flag --names)",
        "key = /state/key  (default)",
        "secret = MASKED  (flag --secret)",
        "loud = false  (default)",
    ]
    assert resolution.rows()[0] == ("port", "80", "default")


def test_none_is_explained(tmp_path: Path) -> None:
    table = Table(
        prefix="T_",
        target=Toy,
        settings=(Setting(name="key", parser=FilePath(), unset="in memory", help="", example="k"),),
    )
    assert resolve(table, environ={}).lines() == [
        "config file: none",
        "key = none (in memory)  (default)",
    ]


def test_every_problem_at_once_each_named_by_its_origin(tmp_path: Path) -> None:
    path = tmp_path / "toy.toml"
    path.write_text('prot = 1\nwait = "x"\nnames = [1]\n')
    with pytest.raises(ConfigError) as caught:
        resolve(TABLE, {"port": "0"}, config=path, environ={"TOY_LOUD": "very"})
    assert caught.value.problems == [
        f"{path}: prot: unknown key (did you mean port?)",
        "--port 0: 0 is not in 1..65535",
        f'{path}: wait: "x" is not a duration: use e.g. 72h, 90m, 30s, 1h30m or 250ms',
        f"{path}: names: 1 is not text: put it in quotes",
        'TOY_LOUD=very: "very" is not true or false',
    ]


def test_a_file_named_by_flag_or_argument_must_exist(tmp_path: Path) -> None:
    missing = tmp_path / "missing.toml"
    with pytest.raises(ConfigError, match="no such config file \\(named by flag --config\\)"):
        resolve(TABLE, config=missing, environ={})
    with pytest.raises(ConfigError, match="named by argument config"):
        resolve(TABLE, config=missing, origin=Origin.ARGUMENT, environ={})
    # The default file may be missing.
    assert not resolve(TABLE, environ={"HOME": str(tmp_path)}).file.found


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"port = ", "not valid TOML"),
        (b"\xff", "the config file is not UTF-8 text"),
    ],
)
def test_unreadable_files(tmp_path: Path, content: bytes, problem: str) -> None:
    path = tmp_path / "toy.toml"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as caught:
        resolve(TABLE, config=path, environ={})
    assert len(caught.value.problems) == 1 and problem in caught.value.problems[0]
    with pytest.raises(ConfigError, match="cannot read the config file"):
        resolve(TABLE, config=tmp_path, environ={})


def test_the_environment_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOY_PORT", "99")
    monkeypatch.delenv("TOY_CONFIG", raising=False)
    monkeypatch.delenv("HOME", raising=False)
    assert resolve(TABLE)["port"] == 99
