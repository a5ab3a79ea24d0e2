"""The client's settings table: every setting by flag, env and file, in ``tunnel share``,
``tunnel check-config`` and the Python API; precedence; errors.

Each test sets its environment explicitly (no ``TUNNEL_*`` from the machine, homes under
``tmp_path``), so no real configuration can leak in.
"""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

import tunnel_client.cli as tunnel_cli
from tests.processes import ROOT
from tests.settings_cases import (
    case,
    clean_env,
    example_text,
    settings_params,
    shown,
    subprocess_env,
)
from tunnel_client.api import build_config
from tunnel_client.config import ClientConfig
from tunnel_client.protocol.errors import ConfigError
from tunnel_client.protocol.settings import Setting, resolve
from tunnel_client.settings import CLIENT, client_config


@dataclass
class Run:
    """What one ``tunnel`` run printed, and what it would have shared with."""

    result: Result
    configs: list[ClientConfig] = field(default_factory=list)
    logins: list[tuple[str, str] | None] = field(default_factory=list)
    log_levels: list[str] = field(default_factory=list)

    @property
    def config(self) -> ClientConfig:
        assert self.result.exit_code == 0, self.result.output
        assert len(self.configs) == 1
        return self.configs[0]

    @property
    def lines(self) -> list[str]:
        return self.result.stdout.splitlines()

    @property
    def problems(self) -> list[str]:
        return self.result.stderr.splitlines()


@pytest.fixture
def tunnel(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Callable[..., Run]]:
    """Run ``tunnel ARGS`` in-process; sharing is replaced by keeping the config."""

    def run(*args: str, env: dict[str, str] | None = None) -> Run:
        outcome = Run(result=None)  # type: ignore[arg-type]

        async def share(config: ClientConfig, display: Any) -> None:
            outcome.configs.append(config)
            outcome.logins.append(display.login)

        def basic_config(**kwargs: Any) -> None:
            outcome.log_levels.append(kwargs["level"])

        monkeypatch.setattr(tunnel_cli, "_run", share)
        monkeypatch.setattr(tunnel_cli.logging, "basicConfig", basic_config)
        runner = CliRunner(env={**clean_env(CLIENT, tmp_path), **(env or {})})
        outcome.result = runner.invoke(tunnel_cli.main, list(args))
        error = outcome.result.exception
        assert error is None or isinstance(error, SystemExit), outcome.result.exc_info
        return outcome

    yield run


def used(setting: Setting, run: Run) -> Any:
    """The value ``tunnel share`` used for a setting."""
    if setting.field is not None:
        return getattr(run.config, setting.field)
    auth = run.config.visitor_auth
    uses: dict[str, Callable[[], Any]] = {
        "password": lambda: auth.removeprefix("share:") if auth else None,
        "basic_auth": lambda: auth,
        "log_level": lambda: run.log_levels[0].lower(),
    }
    assert setting.name in uses, f"say here how tunnel share uses {setting.name}"
    return uses[setting.name]()


# -- every setting, every way ------------------------------------------------------------


@settings_params(CLIENT)
def test_every_setting_reaches_the_config(
    tunnel: Callable[..., Run], tmp_path: Path, setting: Setting, way: str
) -> None:
    text = example_text(setting, tmp_path)
    one = case(CLIENT, setting, text, way, tmp_path)
    expected = setting.parser.parse(text)
    assert expected != CLIENT.defaults[setting.name], "the example must differ from the default"
    assert used(setting, tunnel("share", "7860", *one.args, env=one.env)) == expected


@settings_params(CLIENT)
def test_check_config_prints_every_setting_with_its_source(
    tunnel: Callable[..., Run], tmp_path: Path, setting: Setting, way: str
) -> None:
    text = example_text(setting, tmp_path)
    one = case(CLIENT, setting, text, way, tmp_path)
    run = tunnel("check-config", "7860", *one.args, env=one.env)
    assert run.result.exit_code == 0, run.result.output
    assert run.configs == [], "check-config must not share"
    expected = setting.parser.parse(text)
    assert f"{setting.name} = {shown(setting, expected)}  ({one.source})" in run.lines


API_ARGUMENTS = set(inspect.signature(build_config).parameters)


def api_used(setting: Setting, config: ClientConfig) -> Any:
    """The value the API used for a setting."""
    if setting.field is not None:
        return getattr(config, setting.field)
    prefix = "share:" if setting.name == "password" else ""
    return config.visitor_auth.removeprefix(prefix) if config.visitor_auth else None


# The API sets up no logging: log_level is the command line's.
@settings_params(CLIENT, ways=("argument", "env", "file"), skip=("log_level",))
def test_the_api_reads_every_setting(tmp_path: Path, setting: Setting, way: str) -> None:
    text = example_text(setting, tmp_path)
    expected = setting.parser.parse(text)
    if way == "argument":
        assert setting.name in API_ARGUMENTS, "build_config takes every setting but log_level"
        config = build_config(7860, environ={}, **{setting.name: text})
    else:
        one = case(CLIENT, setting, text, way, tmp_path)
        env = dict(one.env)
        if one.file is not None:
            env["TUNNEL_CONFIG"] = str(one.file)
        config = build_config(7860, environ=env)
    assert api_used(setting, config) == expected


def test_the_issue_check_config_shows_the_environment(tunnel: Callable[..., Run]) -> None:
    run = tunnel("check-config", env={"TUNNEL_TTL": "5m"})
    assert run.result.exit_code == 0, run.result.output
    assert "ttl = 5m  (env TUNNEL_TTL)" in run.lines
    assert "port = none (not given)" in run.lines


def test_the_issue_check_config_refuses_a_bad_relay(tunnel: Callable[..., Run]) -> None:
    run = tunnel("check-config", env={"TUNNEL_RELAY": "ftp://x"})
    assert run.result.exit_code == 1
    assert run.problems == [
        "tunnel: TUNNEL_RELAY=ftp://x: relay URL 'ftp://x' must start with ws://, wss://, "
        "http:// or https://"
    ]


def test_check_config_shows_defaults_and_where_the_file_is(
    tunnel: Callable[..., Run], tmp_path: Path
) -> None:
    run = tunnel("check-config")
    default_file = tmp_path / "config" / "sharetunnel" / "client.toml"
    assert run.lines[0] == f"config file: {default_file}  (default, not found)"
    assert "relay = none (an embedded relay: the link works on this machine only)  (default)" in (
        run.lines
    )
    assert "stream_window = 1MiB  (default)" in run.lines
    assert len(run.lines) == 2 + len(CLIENT.settings)


def test_check_config_json(tunnel: Callable[..., Run]) -> None:
    run = tunnel("check-config", "80", "--json", "--token", "t0p", env={"TUNNEL_TTL": "1h"})
    report = json.loads(run.result.stdout)
    assert report["port"] == 80 and report["config_file_found"] is False
    assert report["settings"]["ttl"] == {"value": "1h", "source": "env TUNNEL_TTL"}
    assert report["settings"]["token"] == {"value": "MASKED", "source": "flag --token"}


def test_defaults_are_the_dataclass_defaults() -> None:
    config, generated = client_config(resolve(CLIENT, {}, environ={}), 7860)
    assert config == ClientConfig(port=7860) and generated is None


def test_help_lists_every_visible_option_with_its_variable(tunnel: Callable[..., Run]) -> None:
    for command in ("share", "check-config"):
        text = " ".join(tunnel(command, "--help").result.stdout.split())
        for setting in CLIENT:
            if not setting.hidden:
                assert setting.option in text and CLIENT.env_var(setting) in text


# -- precedence --------------------------------------------------------------------------


def test_flag_beats_env_beats_file_beats_default(
    tunnel: Callable[..., Run], tmp_path: Path
) -> None:
    path = tmp_path / "client.toml"
    path.write_text('ttl = "1h"\n')
    env = {"TUNNEL_CONFIG": str(path), "TUNNEL_TTL": "2h"}
    assert tunnel("7860", "--ttl", "3h", env=env).config.ttl_s == 3 * 3600
    assert tunnel("7860", env=env).config.ttl_s == 2 * 3600
    assert tunnel("7860", env={"TUNNEL_CONFIG": str(path)}).config.ttl_s == 3600
    assert tunnel("7860").config.ttl_s is None


def test_the_default_file_is_under_xdg_config_home(
    tunnel: Callable[..., Run], tmp_path: Path
) -> None:
    path = tmp_path / "config" / "sharetunnel" / "client.toml"
    path.parent.mkdir(parents=True)
    path.write_text('relay = "wss://share.example.com"\n')
    assert tunnel("7860").config.relay == ("wss://share.example.com",)
    other = tmp_path / "other.toml"
    other.write_text('relay = "ws://127.0.0.1:1"\n')
    assert tunnel("7860", "--config", str(other)).config.relay == ("ws://127.0.0.1:1",)


def test_several_relays_by_repeated_flag_list_or_commas(
    tunnel: Callable[..., Run], tmp_path: Path
) -> None:
    one, two = "wss://a.example.com", "ws://127.0.0.1:9"
    assert tunnel("7860", "--relay", one, "--relay", two).config.relay == (one, two)
    assert tunnel("7860", env={"TUNNEL_RELAY": f"{one},{two}"}).config.relay == (one, two)
    # A comma-separated list in one flag, as --help says, not one URL with a comma in it.
    assert tunnel("7860", "--relay", f"{one},{two}").config.relay == (one, two)
    assert tunnel("7860", "--relay", f"{one}, {two}", "--relay", one).config.relay == (
        one,
        two,
        one,
    )
    refused = tunnel("check-config", "--relay", f"{one},ftp://x")
    assert refused.result.exit_code == 1 and "relay URL 'ftp://x' must start with" in (
        "\n".join(refused.problems)
    )
    path = tmp_path / "client.toml"
    path.write_text(f'relay = ["{one}", "{two}"]\n')
    assert tunnel("7860", "--config", str(path)).config.relay == (one, two)
    check = tunnel("check-config", "--relay", one, "--relay", two)
    assert f"relay = {one}, {two}  (flag --relay)" in check.lines
    bad = tunnel("7860", "--relay", one, "--relay", "ftp://x")
    assert bad.result.exit_code == 1
    assert bad.problems == [
        "tunnel: --relay: relay URL 'ftp://x' must start with ws://, wss://, http:// or https://"
    ]
    assert build_config(1, relay=[one, two], environ={}).relay == (one, two)
    assert build_config(1, relay=one, environ={}).relay == (one,)


def test_password_alone_generates_one(tunnel: Callable[..., Run]) -> None:
    run = tunnel("7860", "--password")
    login = run.logins[0]
    assert login is not None and login[0] == "share" and len(login[1]) >= 12
    assert run.config.visitor_auth == f"share:{login[1]}"
    check = tunnel("check-config", "--password")
    assert "password = (generated when the tunnel starts)  (flag --password)" in check.lines


def test_password_and_basic_auth_the_stronger_source_wins(tunnel: Callable[..., Run]) -> None:
    env = {"TUNNEL_PASSWORD": "from-env"}
    assert tunnel("7860", "--basic-auth", "a:b", env=env).config.visitor_auth == "a:b"
    assert tunnel("7860", env=env).config.visitor_auth == "share:from-env"
    run = tunnel("7860", "--basic-auth", "a:b", "--password", "x")
    assert run.result.exit_code == 1
    assert run.problems == [
        "tunnel: password (flag --password) and basic_auth (flag --basic-auth) exclude each "
        "other: give one"
    ]


# -- errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "env", "problem"),
    [
        (["--ttl", "soon"], {}, '--ttl soon: "soon" is not a duration'),
        ([], {"TUNNEL_TTL": "0.5"}, "TUNNEL_TTL=0.5: 500ms is below the minimum 1s"),
        (["--relay", "ftp://x"], {}, "--relay: relay URL 'ftp://x' must start with"),
        ([], {"TUNNEL_STREAM_WINDOW": "1"}, "TUNNEL_STREAM_WINDOW=1: 1 is below the minimum"),
        (["--basic-auth", "nocolon"], {}, "--basic-auth nocolon: basic auth must be given as"),
        (["--ca-file", "/nonexistent"], {}, '--ca-file /nonexistent: "/nonexistent" does not'),
        ([], {"TUNNEL_LOG_LEVEL": "loud"}, 'TUNNEL_LOG_LEVEL=loud: "loud" is not one of'),
    ],
    ids=["flag", "env-minimum", "relay", "window", "basic-auth", "ca-file", "log-level"],
)
def test_a_bad_value_names_its_flag_or_variable(
    tunnel: Callable[..., Run], args: list[str], env: dict[str, str], problem: str
) -> None:
    for command in (["share", "7860"], ["check-config"]):
        run = tunnel(*command, *args, env=env)
        assert run.result.exit_code == 1
        assert len(run.problems) == 1 and run.problems[0].startswith(f"tunnel: {problem}")


def test_every_problem_is_reported_at_once(tunnel: Callable[..., Run], tmp_path: Path) -> None:
    path = tmp_path / "client.toml"
    path.write_text('relay = "ftp://x"\nport = 80\nttl = "x"\n')
    run = tunnel("7860", "--config", str(path), "--local-host", "a b", env={"TUNNEL_TOKEN": " "})
    assert run.result.exit_code == 1
    assert run.configs == []
    assert run.problems == [
        f"tunnel: {path}: port: unknown key (the keys are the setting names)",
        f"tunnel: {path}: relay: relay URL 'ftp://x' must start with ws://, wss://, http:// "
        "or https://",
        "tunnel: --local-host a b: local host 'a b' is not a host name or address",
        'tunnel: TUNNEL_TOKEN= : " " is empty',
        f'tunnel: {path}: ttl: "x" is not a duration: use e.g. 72h, 90m, 30s, 1h30m or 250ms',
    ]


def test_a_named_config_file_must_exist(tunnel: Callable[..., Run], tmp_path: Path) -> None:
    missing = tmp_path / "missing.toml"
    run = tunnel("7860", env={"TUNNEL_CONFIG": str(missing)})
    assert run.result.exit_code == 1
    assert run.problems == [f"tunnel: {missing}: no such config file (named by env TUNNEL_CONFIG)"]


def test_a_json_run_reports_problems_as_json(tunnel: Callable[..., Run]) -> None:
    run = tunnel("7860", "--json", "--ttl", "x", env={"TUNNEL_RELAY": "ftp://x"})
    assert run.result.exit_code == 1
    event = json.loads(run.result.stdout)
    assert event["event"] == "error"
    assert "--ttl x" in event["message"] and "TUNNEL_RELAY=ftp://x" in event["message"]


# -- the Python API ----------------------------------------------------------------------


def test_the_api_reads_the_file_named_by_tunnel_config(tmp_path: Path) -> None:
    path = tmp_path / "client.toml"
    path.write_text('relay = "wss://share.example.com"\nttl = "2h"\ntoken = "t"\n')
    config = build_config(7860, environ={"TUNNEL_CONFIG": str(path)})
    assert (config.relay, config.ttl_s, config.token) == (("wss://share.example.com",), 7200, "t")


def test_the_api_reads_the_file_under_xdg_config_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "sharetunnel" / "client.toml"
    path.parent.mkdir()
    path.write_text('relay = "wss://share.example.com"\nstream_window = "2MiB"\n')
    for name, value in clean_env(CLIENT, tmp_path).items():
        monkeypatch.delenv(name, raising=False)
        if value is not None:
            monkeypatch.setenv(name, value)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    config = build_config(7860)  # os.environ, through the resolver
    assert config.relay == ("wss://share.example.com",) and config.stream_window == 2 << 20


def test_api_arguments_beat_env_beats_file(tmp_path: Path) -> None:
    path = tmp_path / "client.toml"
    path.write_text('ttl = "1h"\nlocal_host = "::1"\n')
    env = {"TUNNEL_CONFIG": str(path), "TUNNEL_TTL": "2h"}
    assert build_config(1, environ=env).ttl_s == 7200
    assert build_config(1, environ=env).local_host == "::1"
    assert build_config(1, ttl="3h", environ=env).ttl_s == 3 * 3600
    assert build_config(1, ttl=60.0, environ=env).ttl_s == 60.0
    assert build_config(1, environ=env, use_environment=False).ttl_s is None


def test_api_errors_name_the_argument(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        build_config(1, ttl="x", relay="ftp://x", environ={"TUNNEL_STREAM_WINDOW": "1"})
    assert caught.value.problems[0].startswith("relay='ftp://x': relay URL 'ftp://x'")
    assert caught.value.problems[1].startswith("ttl='x': \"x\" is not a duration")
    assert caught.value.problems[2].startswith("TUNNEL_STREAM_WINDOW=1: 1 is below")


# -- the example config and the real command ----------------------------------------------


def test_the_example_config_in_ops_is_valid(tunnel: Callable[..., Run]) -> None:
    path = ROOT / "ops" / "client.toml"
    run = tunnel("check-config", "--config", str(path))
    assert run.result.exit_code == 0, run.result.output
    assert f"relay = https://share.example.com  (file {path})" in run.lines


def test_the_real_command_checks_its_config(tmp_path: Path) -> None:
    path = tmp_path / "client.toml"
    path.write_text('relay = "wss://share.example.com"\ntoken = "s3cret"\n')

    def tunnel_module(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "tunnel_client", *args],
            cwd=ROOT,
            env=subprocess_env(tmp_path, env),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    done = tunnel_module("check-config", "7860", "--ttl", "90m", env={"TUNNEL_CONFIG": str(path)})
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f"config file: {path}  (env TUNNEL_CONFIG)"
    assert "port = 7860  (argument PORT)" in lines
    assert f"relay = wss://share.example.com  (file {path})" in lines
    assert f"token = MASKED  (file {path})" in lines and "s3cret" not in done.stdout
    assert "ttl = 1h30m  (flag --ttl)" in lines

    done = tunnel_module("check-config", env={"TUNNEL_RELAY": "ftp://x"})
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert done.stderr.splitlines() == [
        "tunnel: TUNNEL_RELAY=ftp://x: relay URL 'ftp://x' must start with ws://, wss://, "
        "http:// or https://"
    ]


def test_the_readme_names_every_setting() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Sharing a port\n", 1)[1].split("\n## ", 1)[0]
    for setting in CLIENT:
        assert f"`{setting.name}`" in section, setting.name


def test_a_port_taken_by_password_as_its_secret_is_named(tunnel: Callable[..., Run]) -> None:
    # --password's secret is optional, so `tunnel --password 7860` has no TARGET left.
    run = tunnel("--password", "7860")
    assert run.result.exit_code == 2 and not run.configs
    assert "--password took '7860' as its secret" in run.result.output
    assert "tunnel 7860 --password" in run.result.output
    assert tunnel("7860", "--password").config.port == 7860
