"""What ops/ ships passes the validators of the tools that will read it.

docker-compose (Debian's v1) checks compose.yaml, ``promtool`` the Prometheus scrape
config and alert rules (and fires each alert in ``alerts.test.yml``), ``caddy validate``
the Caddyfile, and ``systemd-analyze verify`` the units and the mosquitto drop-in. The
commands are the runbook's own (``ops/RUNBOOK.md``, "Check the files"). ``.ci/install``
installs every one of these tools, so a missing tool fails here: it is never skipped.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from relay_server.config import RelayConfig
from relay_server.directory import Limits, MemoryDirectory
from relay_server.observe import Observer
from relay_server.tls import make_self_signed
from tests.processes import ROOT
from tests.runbook import runbook_command

OPS = ROOT / "ops"


def tool(name: str) -> str:
    path = shutil.which(name) or next(
        (str(p) for d in ("/usr/sbin", "/sbin") if (p := Path(d) / name).exists()), None
    )
    assert path is not None, f"{name} is missing: .ci/install installs it (Debian packages)"
    return path


def run(command: str, *, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        ["bash", "-c", command],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
    return done


# -- compose -------------------------------------------------------------------------------


def test_the_compose_file_is_valid_with_two_clustered_relays() -> None:
    tool("docker-compose")
    command = runbook_command("docker-compose -f ops/compose.yaml config")
    run(command)
    resolved = yaml.safe_load(run(command.removesuffix(" -q")).stdout)
    services = resolved["services"]
    assert set(services) == {"mosquitto", "relay1", "relay2", "caddy"}
    for node in ("relay1", "relay2"):
        args = services[node]["command"]
        flags = dict(zip(args[::2], args[1::2], strict=False))
        assert flags["--cluster"] == "mqtt://mosquitto:1883"
        assert flags["--node-id"] == node
        assert flags["--cluster-secret-file"] == "/run/secrets/cluster"
        assert flags["--lease-key"] == "/data/lease.pem"
        assert flags["--admin-token-file"] == "/run/secrets/admin_token"
        assert any(v.startswith("lease:/data") for v in services[node]["volumes"])
    assert services["caddy"]["environment"]["RELAYS"] == "relay1:8080 relay2:8080"


# -- Prometheus ------------------------------------------------------------------------------


def test_the_prometheus_config_and_alert_rules_are_valid_and_fire() -> None:
    tool("promtool")
    run(runbook_command("promtool check config ops/prometheus/prometheus.yml"))
    run(runbook_command("promtool test rules ops/prometheus/alerts.test.yml"))


def _exported_metrics() -> set[str]:
    """Every sample name a relay exports (an in-process relay's registry)."""
    config = RelayConfig()
    limits = Limits(
        ttl_s=config.ttl_s,
        reconnect_grace_s=config.reconnect_grace_s,
        tunnels_per_ip=config.tunnels_per_ip,
        tunnels_per_token=config.tunnels_per_token,
    )
    observer = Observer(MemoryDirectory(limits, url_for=str), config)
    text = observer.metrics().decode()
    return {s.name for f in text_string_to_metric_families(text) for s in f.samples}


def _queries() -> list[str]:
    """Every PromQL expression of the alert rules and the Grafana dashboard."""
    rules = yaml.safe_load((OPS / "prometheus" / "alerts.yml").read_text())
    exprs = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    dashboard = json.loads((OPS / "grafana" / "sharetunnel.json").read_text())
    for panel in dashboard["panels"]:
        assert panel["targets"], panel["title"]
        exprs.extend(target["expr"].replace("$job", "sharetunnel") for target in panel["targets"])
    return exprs


def test_alerts_and_the_dashboard_ask_for_metrics_the_relay_exports(tmp_path: Path) -> None:
    exported = _exported_metrics()
    asked = {
        name
        for expr in _queries()
        for name in re.findall(r"\b((?:sharetunnel|process)_[a-z_]+)\b", expr)
    }
    assert asked, "no metric names found"
    assert asked <= exported, f"not exported: {sorted(asked - exported)}"
    # The dashboard's queries are valid PromQL: promtool checks them as recording rules.
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:q{i}", "expr": e} for i, e in enumerate(_queries())
                ],
            }
        ]
    }
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump(rules))
    run(f"{tool('promtool')} check rules {path}")


# -- Caddy -----------------------------------------------------------------------------------


def test_the_caddyfile_is_valid(tmp_path: Path) -> None:
    tool("caddy")
    cert, key = make_self_signed("share.example.com", tmp_path)
    command = runbook_command("TLS_CERT=ops/certs/fullchain.pem TLS_KEY=ops/certs/privkey.pem")
    command = command.replace("ops/certs/fullchain.pem", str(cert))
    command = command.replace("ops/certs/privkey.pem", str(key))
    home = str(tmp_path / "home")
    run(command, env={"HOME": home, "XDG_DATA_HOME": home, "XDG_CONFIG_HOME": home})
    formatted = run(f"caddy fmt {OPS / 'Caddyfile'}").stdout
    assert formatted == (OPS / "Caddyfile").read_text(), "run: caddy fmt --overwrite ops/Caddyfile"


# -- systemd ---------------------------------------------------------------------------------

UNITS = ["tunnel-relay@8081.service", "tunnel-relay.target", "mosquitto.service"]


def _stub_commands(root: Path, unit_files: list[Path]) -> None:
    """An executable stub in ``root`` for each program the units run: what is checked is
    the units, not whether this machine has the relay installed in /usr/local/bin."""
    for unit in unit_files:
        for line in unit.read_text().splitlines():
            match = re.match(r"Exec\w+=[-@:+!]*(/\S+)", line.strip())
            if match:
                stub = root / match.group(1).lstrip("/")
                stub.parent.mkdir(parents=True, exist_ok=True)
                stub.write_text("#!/bin/sh\n")
                stub.chmod(0o755)


def test_the_systemd_units_and_the_mosquitto_drop_in_verify(tmp_path: Path) -> None:
    analyze = tool("systemd-analyze")
    system = Path("/usr/lib/systemd/system")
    assert (system / "mosquitto.service").exists(), (
        "Debian's mosquitto unit is missing: .ci/install installs mosquitto"
    )
    # A root of our own: the OS's units, ours in /etc, as `systemctl` would see them.
    root = tmp_path / "root"
    shutil.copytree(system, root / "usr/lib/systemd/system", symlinks=True)
    etc = root / "etc/systemd/system"
    shutil.copytree(OPS / "systemd", etc, ignore=shutil.ignore_patterns("*.env", "*.conf"))
    dropins = etc / "mosquitto.service.d"
    dropins.mkdir(exist_ok=True)
    shutil.copy(OPS / "systemd/mosquitto.service.d/sharetunnel.conf", dropins)
    _stub_commands(root, [*etc.glob("*.service"), system / "mosquitto.service"])
    done = subprocess.run(
        [analyze, "verify", f"--root={root}", *UNITS],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    # Unknown keys and bad values are only warnings: any output is a failure here.
    assert done.returncode == 0 and not done.stderr.strip() and not done.stdout.strip(), (
        done.stdout + done.stderr
    )


def test_the_relay_env_file_sets_only_relay_settings() -> None:
    from relay_server.settings import RELAY

    cluster = {"RELAY_CLUSTER", "RELAY_CLUSTER_SECRET_FILE", "RELAY_NODE_ID"}  # the cluster's
    known = {RELAY.env_var(setting) for setting in RELAY} | cluster
    for path in [OPS / "systemd" / "relay-8081.env", OPS / "systemd" / "tunnel-relay@.service"]:
        names = set(re.findall(r"\b(RELAY_[A-Z_]+)=", path.read_text()))
        assert names and names <= known, f"{path.name}: unknown {sorted(names - known)}"


@pytest.mark.parametrize("path", sorted(OPS.glob("**/*.json")), ids=lambda p: p.name)
def test_json_files_parse(path: Path) -> None:
    json.loads(path.read_text())
