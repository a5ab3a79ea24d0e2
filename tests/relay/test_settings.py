"""The relay's settings table: every setting by flag, env and file; errors; check-config.

Each test sets its environment explicitly (no ``RELAY_*`` from the machine, homes under
``tmp_path``), so no real configuration can leak in.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

import relay_server.cli as relay_cli
from relay_server.config import MAX_HEADER_BYTES, RelayConfig
from relay_server.settings import RELAY, default_lease_key_path, relay_config
from tests.processes import ROOT
from tests.settings_cases import (
    case,
    clean_env,
    example_text,
    settings_params,
    shown,
    subprocess_env,
)
from tunnel_client.protocol.errors import ConfigError
from tunnel_client.protocol.settings import Setting, resolve

COMPANIONS = {
    "tls_cert": ("tls_key",),
    "tls_key": ("tls_cert",),
    "cluster": ("cluster_secret_file",),
    "workers": ("cluster", "cluster_secret_file"),
}
"""Settings that are only valid with others set (RelayConfig checks them together)."""


@dataclass
class Run:
    """What one ``tunnel-relay`` run printed, and the config it would have served with."""

    result: Result
    configs: list[RelayConfig] = field(default_factory=list)

    @property
    def config(self) -> RelayConfig:
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
def relay(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Any]:
    """Run ``tunnel-relay ARGS`` in-process; serving is replaced by keeping the config."""

    def run(*args: str, env: dict[str, str] | None = None) -> Run:
        outcome = Run(result=None)  # type: ignore[arg-type]

        async def serve(config: RelayConfig) -> None:
            outcome.configs.append(config)

        monkeypatch.setattr(relay_cli, "_serve", serve)
        monkeypatch.setattr(relay_cli.logging, "basicConfig", lambda **kwargs: None)
        runner = CliRunner(env={**clean_env(RELAY, tmp_path), **(env or {})})
        outcome.result = runner.invoke(relay_cli.main, list(args))
        error = outcome.result.exception
        assert error is None or isinstance(error, SystemExit), outcome.result.exc_info
        return outcome

    yield run


# -- every setting, every way ------------------------------------------------------------


def set_one(setting: Setting, way: str, tmp_path: Path) -> tuple[list[str], dict[str, str], str]:
    """Arguments and variables that set ``setting`` to its example ``way``; its source."""
    text = example_text(setting, tmp_path)
    one = case(RELAY, setting, text, way, tmp_path)
    args = list(one.args)
    for name in COMPANIONS.get(setting.name, ()):
        partner = RELAY[name]
        args += [partner.option, example_text(partner, tmp_path)]
    return args, one.env, one.source


@settings_params(RELAY)
def test_every_setting_reaches_the_config(
    relay: Any, tmp_path: Path, setting: Setting, way: str
) -> None:
    args, env, _ = set_one(setting, way, tmp_path)
    expected = setting.parser.parse(example_text(setting, tmp_path))
    assert expected != RELAY.defaults[setting.name], "the example must differ from the default"
    assert setting.field is not None
    assert getattr(relay(*args, env=env).config, setting.field) == expected


@settings_params(RELAY)
def test_check_config_prints_every_setting_with_its_source(
    relay: Any, tmp_path: Path, setting: Setting, way: str
) -> None:
    args, env, source = set_one(setting, way, tmp_path)
    expected = setting.parser.parse(example_text(setting, tmp_path))
    run = relay("--check-config", *args, env=env)
    assert run.result.exit_code == 0, run.result.output
    assert run.configs == [], "--check-config must not start the relay"
    assert f"{setting.name} = {shown(setting, expected)}  ({source})" in run.lines


def test_check_config_shows_defaults_and_the_file(relay: Any, tmp_path: Path) -> None:
    run = relay("--check-config")
    assert run.result.exit_code == 0, run.result.output
    assert run.lines[0] == "config file: none"
    assert "ttl = 72h  (default)" in run.lines
    assert "max_body_bytes = none (no limit)  (default)" in run.lines
    lease = default_lease_key_path({"XDG_STATE_HOME": str(tmp_path / "state")})
    assert f"lease_key = {lease}  (default)" in run.lines
    assert len(run.lines) == 1 + len(RELAY.settings)


def test_defaults_are_the_dataclass_defaults(tmp_path: Path) -> None:
    resolution = resolve(RELAY, {}, environ={"XDG_STATE_HOME": str(tmp_path)})
    lease = tmp_path / "sharetunnel" / "relay-lease-key.pem"
    assert relay_config(resolution) == RelayConfig(lease_key=lease)


def test_help_lists_every_option_with_its_variable(relay: Any) -> None:
    run = relay("--help")
    assert run.result.exit_code == 0
    text = " ".join(run.result.stdout.split())
    for setting in RELAY:
        assert setting.option in text and RELAY.env_var(setting) in text


# -- precedence --------------------------------------------------------------------------


def test_flag_beats_env_beats_file_beats_default(relay: Any, tmp_path: Path) -> None:
    path = tmp_path / "relay.toml"
    path.write_text('ttl = "1h"\n')
    env = {"RELAY_TTL": "2h"}
    assert relay("--config", str(path), "--ttl", "3h", env=env).config.ttl_s == 3 * 3600
    assert relay("--config", str(path), env=env).config.ttl_s == 2 * 3600
    assert relay("--config", str(path)).config.ttl_s == 3600
    assert relay().config.ttl_s == 72 * 3600


def test_relay_config_names_the_file(relay: Any, tmp_path: Path) -> None:
    path = tmp_path / "from-env.toml"
    path.write_text("port = 9999\n")
    run = relay("--check-config", env={"RELAY_CONFIG": str(path)})
    assert run.lines[0] == f"config file: {path}  (env RELAY_CONFIG)"
    assert f"port = 9999  (file {path})" in run.lines
    other = tmp_path / "from-flag.toml"
    other.write_text("port = 7777\n")
    run = relay("--check-config", "--config", str(other), env={"RELAY_CONFIG": str(path)})
    assert f"port = 7777  (file {other})" in run.lines


def test_a_repeated_flag_replaces_the_list_from_the_file(relay: Any, tmp_path: Path) -> None:
    path = tmp_path / "relay.toml"
    path.write_text('trusted_proxy = ["10.0.0.0/8", "192.168.1.1"]\n')
    assert relay("--config", str(path)).config.trusted_proxies == ("10.0.0.0/8", "192.168.1.1")
    args = ["--config", str(path), "--trusted-proxy", "1.2.3.4", "--trusted-proxy", "::1"]
    assert relay(*args).config.trusted_proxies == ("1.2.3.4", "::1")
    env = {"RELAY_TRUSTED_PROXY": "1.1.1.1, 2.2.2.2"}
    assert relay(env=env).config.trusted_proxies == ("1.1.1.1", "2.2.2.2")


def test_a_flag_turns_off_what_the_file_turned_on(relay: Any, tmp_path: Path) -> None:
    path = tmp_path / "relay.toml"
    path.write_text("self_signed = true\n")
    assert relay("--config", str(path)).config.self_signed is True
    assert relay("--config", str(path), "--no-self-signed").config.self_signed is False


# -- errors ------------------------------------------------------------------------------


def test_a_bad_file_value_names_the_file_and_key(relay: Any, tmp_path: Path) -> None:
    path = tmp_path / "relay.toml"
    path.write_text('port = "abc"\n')
    run = relay("--config", str(path))
    assert run.result.exit_code == 2
    assert run.problems == [f'tunnel-relay: {path}: port: "abc" is not a whole number']


@pytest.mark.parametrize(
    ("args", "env", "problem"),
    [
        (["--port", "abc"], {}, '--port abc: "abc" is not a whole number'),
        ([], {"RELAY_PORT": "abc"}, 'RELAY_PORT=abc: "abc" is not a whole number'),
        (["--port", "70000"], {}, "--port 70000: 70000 is not in 0..65535"),
        (["--ttl", "soon"], {}, '--ttl soon: "soon" is not a duration'),
        ([], {"RELAY_SELF_SIGNED": "maybe"}, 'RELAY_SELF_SIGNED=maybe: "maybe" is not true'),
        (["--log-level", "loud"], {}, '--log-level loud: "loud" is not one of debug, info'),
        (["--trusted-proxy", "nope"], {}, "--trusted-proxy: trusted proxy 'nope' is not an IP"),
        (["--rate-per-link", "-1"], {}, "--rate-per-link -1: -1 is below the minimum 0"),
    ],
    ids=["flag", "env", "range", "duration", "bool", "choice", "list", "minimum"],
)
def test_a_bad_value_names_its_flag_or_variable(
    relay: Any, args: list[str], env: dict[str, str], problem: str
) -> None:
    run = relay(*args, env=env)
    assert run.result.exit_code == 2
    assert len(run.problems) == 1 and run.problems[0].startswith(f"tunnel-relay: {problem}")


def test_every_problem_is_reported_at_once(relay: Any, tmp_path: Path) -> None:
    path = tmp_path / "relay.toml"
    path.write_text('port = "abc"\nprot = 1\nidle_timeout = "forever"\n')
    run = relay("--config", str(path), "--ttl", "x", env={"RELAY_MAX_STREAMS": "0"})
    assert run.result.exit_code == 2
    assert run.configs == []
    assert run.problems == [
        f"tunnel-relay: {path}: prot: unknown key (did you mean port?)",
        f'tunnel-relay: {path}: port: "abc" is not a whole number',
        'tunnel-relay: --ttl x: "x" is not a duration: use e.g. 72h, 90m, 30s, 1h30m or 250ms',
        "tunnel-relay: RELAY_MAX_STREAMS=0: 0 is below the minimum 1",
        f'tunnel-relay: {path}: idle_timeout: "forever" is not a duration: use e.g. 72h, 90m, '
        "30s, 1h30m or 250ms",
    ]


def test_values_that_clash_are_reported_by_the_config(relay: Any, tmp_path: Path) -> None:
    cert = tmp_path / "cert.pem"
    cert.write_text("x")
    run = relay("--tls-cert", str(cert), "--check-config")
    assert run.result.exit_code == 2
    assert run.problems == ["tunnel-relay: tls_cert and tls_key go together: give both or neither"]


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("port = ", "not valid TOML"),
        ("[port]\nx = 1\n", "port: {x = 1} is not a whole number"),
        ("flavour = 1\n", "flavour: unknown key (the keys are the setting names)"),
        ("ttl = true\n", "ttl: true is not a duration"),
        (b"\xff\xfe", "the config file is not UTF-8 text"),
    ],
    ids=["invalid-toml", "table", "unknown-key", "wrong-type", "binary"],
)
def test_a_bad_file_is_one_line_naming_it(
    relay: Any, tmp_path: Path, content: str | bytes, problem: str
) -> None:
    path = tmp_path / "relay.toml"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    run = relay("--config", str(path))
    assert run.result.exit_code == 2
    assert len(run.problems) == 1 and run.problems[0].startswith(f"tunnel-relay: {path}: ")
    assert problem in run.problems[0]


def test_a_missing_or_unreadable_file_is_an_error(relay: Any, tmp_path: Path) -> None:
    missing = tmp_path / "missing.toml"
    run = relay("--config", str(missing))
    assert run.result.exit_code == 2
    assert run.problems == [
        f"tunnel-relay: {missing}: no such config file (named by flag --config)"
    ]
    run = relay(env={"RELAY_CONFIG": str(tmp_path)})
    assert run.result.exit_code == 2
    assert run.problems[0].startswith(f"tunnel-relay: {tmp_path}: cannot read the config file")


# -- max_header_bytes and the OPEN frame --------------------------------------------------


def test_max_header_bytes_is_capped_by_what_an_open_frame_carries(relay: Any) -> None:
    assert MAX_HEADER_BYTES == 43008  # (256KiB - 4096) // 6
    assert relay("--max-header-bytes", "42KiB").config.max_header_bytes == MAX_HEADER_BYTES
    run = relay("--max-header-bytes", "43009")
    assert run.result.exit_code == 2
    assert run.problems == [
        "tunnel-relay: --max-header-bytes 43009: 43009 is above the maximum 42KiB "
        "(43008 bytes): a request head must fit one OPEN frame even when JSON escaping grows "
        "it 6x"
    ]


def test_the_dataclass_refuses_max_header_bytes_above_the_cap() -> None:
    with pytest.raises(ConfigError, match=r"max_header_bytes must be at most 42KiB \(43008"):
        RelayConfig(max_header_bytes=MAX_HEADER_BYTES + 1)


# -- the example config and the real command ----------------------------------------------


def test_the_example_config_in_ops_is_valid(relay: Any) -> None:
    run = relay("--check-config", "--config", str(ROOT / "ops" / "relay.toml"))
    assert run.result.exit_code == 0, run.result.output
    source = f"file {ROOT / 'ops' / 'relay.toml'}"
    assert f"trusted_proxy = 172.16.0.0/12  ({source})" in run.lines
    assert f"max_header_bytes = 32KiB  ({source})" in run.lines


def run_relay_module(
    tmp_path: Path, *args: str, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relay_server", *args],
        cwd=ROOT,
        env=subprocess_env(tmp_path, env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_real_command_checks_its_config(tmp_path: Path) -> None:
    path = tmp_path / "relay.toml"
    path.write_text('domain = "share.example.com"\nmax_body_bytes = "1MiB"\n')
    args = ["--check-config", "--config", str(path), "--port", "0"]
    done = run_relay_module(tmp_path, *args, env={"RELAY_TTL": "5m"})
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f"config file: {path}  (flag --config)"
    assert "ttl = 5m  (env RELAY_TTL)" in lines
    assert f"domain = share.example.com  (file {path})" in lines
    assert f"max_body_bytes = 1MiB  (file {path})" in lines
    assert "port = 0  (flag --port)" in lines

    path.write_text('port = "abc"\n')
    done = run_relay_module(
        tmp_path, "--check-config", "--config", str(path), env={"RELAY_TTL": "x"}
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert done.stderr.splitlines() == [
        f'tunnel-relay: {path}: port: "abc" is not a whole number',
        'tunnel-relay: RELAY_TTL=x: "x" is not a duration: use e.g. 72h, 90m, 30s, 1h30m or 250ms',
    ]


def test_the_readme_names_every_setting() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Running a relay\n", 1)[1].split("\n## ", 1)[0]
    for setting in RELAY:
        assert f"`{setting.name}`" in section or setting.option in section, setting.name
