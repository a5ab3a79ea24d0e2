"""Real relay, client and origin processes on 127.0.0.1, for integration tests and benches.

Each helper starts a process with ``--port 0`` and waits on a ready file or a ready event
(never on a sleep), and stops it at teardown whatever happened.
"""

from __future__ import annotations

import atexit
import contextlib
import http.client
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 20.0
_SCRATCH: list[Path] = []


def scratch_root() -> Path:
    """This process's scratch root, made on first use and removed when the process exits."""
    if not _SCRATCH:
        _SCRATCH.append(Path(tempfile.mkdtemp(prefix="st-tests-")))
        atexit.register(shutil.rmtree, _SCRATCH[0], True)
    return _SCRATCH[0]


def scratch_dir(prefix: str) -> Path:
    """A fresh directory under this process's scratch root, removed when it exits."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir=scratch_root()))


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    for key in list(env):
        if key.startswith("TUNNEL_") or key.startswith("RELAY_"):
            del env[key]
    # No user config file may leak into a test.
    env["XDG_CONFIG_HOME"] = str(scratch_dir("xdg-"))
    env["XDG_STATE_HOME"] = str(scratch_dir("state-"))
    env.update(extra or {})
    return env


def wait_until(condition: Callable[[], object], timeout: float = 20, what: str = "") -> float:
    """Poll a condition that another process makes true (no fixed sleep); the time it took."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not within {timeout} s: {what or condition}")
        time.sleep(0.02)
    return time.monotonic() - started


def _wait_file(
    path: Path, proc: subprocess.Popen[Any], what: str, lines: list[str] | None = None
) -> dict[str, Any]:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if path.exists():
            return json.loads(path.read_text())  # type: ignore[no-any-return]
        if proc.poll() is not None:
            if lines is not None:
                time.sleep(0.2)  # let the drain thread catch the last lines
                err = "\n".join(lines)
            else:
                err = proc.stderr.read() if proc.stderr else ""
            raise RuntimeError(f"{what} exited with {proc.returncode} before it was ready: {err}")
        time.sleep(0.02)
    raise TimeoutError(f"{what} not ready within {START_TIMEOUT_S} s")


def close_pipes(proc: subprocess.Popen[Any]) -> None:
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        if pipe is not None and not pipe.closed:
            pipe.close()


def stop_process(
    proc: subprocess.Popen[Any], sig: int = signal.SIGTERM, timeout: float = 10
) -> int:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return proc.returncode


@dataclass
class Origin:
    proc: subprocess.Popen[Any]
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stats(self) -> dict[str, int]:
        """The origin's counters (``/stats``), asked directly."""
        reply = fetch(self.port, f"127.0.0.1:{self.port}", "/stats", timeout=10)
        return json.loads(reply.body)  # type: ignore[no-any-return]


@contextlib.contextmanager
def run_origin(*args: str) -> Iterator[Origin]:
    """``tests/origin.py`` (``--host ::1``, ``--tls-cert C --tls-key K`` among ``args``)."""
    ready = scratch_dir("origin-") / "ready.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.origin", "--ready-file", str(ready), *args],
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        info = _wait_file(ready, proc, "origin")
        yield Origin(proc, info["port"])
    finally:
        stop_process(proc)
        close_pipes(proc)


@dataclass
class RelayProcess:
    proc: subprocess.Popen[Any]
    port: int
    args: list[str]
    scheme: str = "http"
    admin_port: int | None = None
    """The admin listener's port (``--admin-port``), from the ready file."""
    lines: list[str] = field(default_factory=list)
    """Everything the relay logged so far (drained continuously, so it never blocks)."""
    _drain: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The base URL clients pass as --relay."""
        return f"{'wss' if self.scheme == 'https' else 'ws'}://127.0.0.1:{self.port}"

    @property
    def http_url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    def wait_logged(self, text: str, timeout: float = 20) -> str:
        """The first line the relay logged that holds ``text``, once it is there."""
        found: list[str] = []

        def logged() -> bool:
            found.extend(line for line in list(self.lines) if text in line)
            return bool(found)

        wait_until(logged, timeout, what=f"the relay to log {text!r}")
        return found[0]

    def wait_connection_ended(self, host: str) -> str:
        """Wait until the relay has noticed that the link ``host`` lost its connection.

        Until then a visitor's request is still forwarded down the dying connection, and
        gets the honest 502 ("lost before it took effect") instead of the 503 for an
        owner who is away.
        """
        subdomain = host.split(".", 1)[0]
        return self.wait_logged(f"link {subdomain}: connection ended")

    def stderr_text(self) -> str:
        """Everything the relay logged (stops it first)."""
        stop_process(self.proc)
        if self._drain is not None:
            self._drain.join(5)
        close_pipes(self.proc)
        return "\n".join(self.lines)


def start_relay(*args: str, port: int = 0, env: dict[str, str] | None = None) -> RelayProcess:
    """Start ``tunnel-relay`` and wait until it listens."""
    ready = scratch_dir("relay-") / "ready.json"
    argv = [
        sys.executable,
        "-m",
        "relay_server",
        "--port",
        str(port),
        "--ready-file",
        str(ready),
        *args,
    ]
    proc = subprocess.Popen(
        argv,
        cwd=ROOT,
        env=_env(env),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    relay = RelayProcess(proc, 0, list(args))
    relay._drain = threading.Thread(target=relay._read, daemon=True)
    relay._drain.start()
    try:
        info = _wait_file(ready, proc, "tunnel-relay", relay.lines)
    except BaseException:
        relay.stderr_text()
        raise
    relay.port = info["port"]
    relay.admin_port = info.get("admin_port")
    relay.scheme = "https" if info["url"].startswith("https") else "http"
    return relay


@contextlib.contextmanager
def run_relay(
    *args: str, port: int = 0, env: dict[str, str] | None = None
) -> Iterator[RelayProcess]:
    relay = start_relay(*args, port=port, env=env)
    try:
        yield relay
    finally:
        relay.stderr_text()


@dataclass
class TunnelProcess:
    """A ``tunnel --json`` process and the events it printed so far."""

    proc: subprocess.Popen[Any]
    events: list[dict[str, Any]] = field(default_factory=list)
    _queue: queue.Queue[dict[str, Any] | None] = field(default_factory=queue.Queue)
    stderr_lines: list[str] = field(default_factory=list)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start_readers(self) -> None:
        """Collect stdout events and stderr lines in background threads."""
        self._threads = [
            threading.Thread(target=self._read, daemon=True),
            threading.Thread(target=self._read_err, daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def stop(self, sig: int = signal.SIGINT) -> int:
        """Stop the process (Ctrl-C by default) and collect all its output."""
        code = stop_process(self.proc, sig)
        for thread in self._threads:
            thread.join(5)
        close_pipes(self.proc)
        return code

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                event = {"event": "text", "line": line.rstrip("\n")}
            self.events.append(event)
            self._queue.put(event)
        self._queue.put(None)

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr_lines.append(line.rstrip("\n"))

    def _take(self, event: dict[str, Any], name: str, match: dict[str, Any]) -> bool:
        """Claim an event if it is the wanted one and no earlier wait claimed it."""
        wanted = event.get("event") == name and all(event.get(k) == v for k, v in match.items())
        if wanted and not event.get("_seen"):
            event["_seen"] = True
            return True
        return False

    def wait_event(
        self, name: str, timeout: float = START_TIMEOUT_S, **match: Any
    ) -> dict[str, Any]:
        """The next unclaimed event called ``name`` (with matching fields), waiting for it."""
        deadline = time.monotonic() + timeout
        for event in list(self.events):
            if self._take(event, name, match):
                return event
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(
                    f"no {name!r} event within {timeout} s; got {self.events} "
                    f"stderr={self.stderr_lines}"
                )
            try:
                event = self._queue.get(timeout=left)
            except queue.Empty:
                continue
            if event is None:
                raise RuntimeError(
                    f"tunnel exited ({self.proc.wait()}) without {name!r}: "
                    f"{self.events} stderr={self.stderr_lines}"
                )
            if self._take(event, name, match):
                return event

    @property
    def url(self) -> str:
        ready = next(e for e in self.events if e.get("event") == "ready")
        return str(ready["url"])

    @property
    def host(self) -> str:
        """The link's Host header value (with port)."""
        return urlsplit(self.url).netloc


def start_tunnel(
    port: int | str,
    *args: str,
    relay: RelayProcess | None = None,
    env: dict[str, str] | None = None,
    wait: bool = True,
) -> TunnelProcess:
    """Start ``tunnel PORT --json`` and (by default) wait for its ready event."""
    argv = [sys.executable, "-m", "tunnel_client", str(port), "--json", *args]
    if relay is not None:
        argv += ["--relay", relay.url]
    proc = subprocess.Popen(
        argv, cwd=ROOT, env=_env(env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    tunnel = TunnelProcess(proc)
    tunnel.start_readers()
    if wait:
        try:
            tunnel.wait_event("ready")
        except BaseException:
            tunnel.stop(signal.SIGKILL)
            raise
    return tunnel


@contextlib.contextmanager
def run_tunnel(
    port: int | str,
    *args: str,
    relay: RelayProcess | None = None,
    env: dict[str, str] | None = None,
) -> Iterator[TunnelProcess]:
    tunnel = start_tunnel(port, *args, relay=relay, env=env)
    try:
        yield tunnel
    finally:
        tunnel.stop()


def rss_bytes(pid: int) -> int:
    """Resident memory of a process, from /proc."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


@dataclass
class Reply:
    """A response read whole (tests only: small bodies)."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)

    def header_all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


def fetch(
    port: int,
    host: str,
    path: str = "/",
    *,
    method: str = "GET",
    body: bytes | Iterable[bytes] | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 15,
) -> Reply:
    """One request to 127.0.0.1:port with the given Host header (no DNS needed)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers={"Host": host, **(headers or {})})
        response = conn.getresponse()
        return Reply(response.status, response.getheaders(), response.read())
    finally:
        conn.close()
