"""Headless Debian ``chromium`` driven over the Chrome DevTools Protocol.

Only what the tests need, over the ``websockets`` sync client the project already
depends on: open a page, evaluate JavaScript, type, click, take a screenshot, close the
page. Chromium is started with ``--remote-debugging-port=0`` and writes the port it
chose to ``DevToolsActivePort`` in its profile directory; we wait for that file.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from websockets.sync.client import ClientConnection, connect

from tests.processes import stop_process

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--no-default-browser-check",
    "--window-size=1280,1000",
    "--remote-debugging-port=0",
]
START_TIMEOUT_S = 30.0


class CDPError(RuntimeError):
    """Chromium answered a command with an error."""


class Page:
    """One tab, attached with a flat session."""

    def __init__(self, browser: Chromium, target_id: str, session_id: str) -> None:
        self.browser = browser
        self.target_id = target_id
        self.session_id = session_id

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        return self.browser.send(method, params, session_id=self.session_id)

    def evaluate(self, expression: str) -> Any:
        reply = self.send(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in reply:
            raise CDPError(f"{expression!r} threw: {reply['exceptionDetails']}")
        return reply["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 30.0) -> Any:
        """Evaluate until the value is truthy (a condition poll with a deadline)."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"{expression!r} still falsy after {timeout} s")
            time.sleep(0.1)

    def click(self, selector: str) -> None:
        """A real mouse click (press and release) at the element's centre."""
        box = self.evaluate(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)});"
            " e.scrollIntoView({block: 'center'}); const r = e.getBoundingClientRect();"
            " return {x: r.x + r.width / 2, y: r.y + r.height / 2}; })()"
        )
        for kind in ("mousePressed", "mouseReleased"):
            self.send(
                "Input.dispatchMouseEvent",
                type=kind,
                x=box["x"],
                y=box["y"],
                button="left",
                clickCount=1,
            )

    def type_into(self, selector: str, text: str) -> None:
        """Focus an input and insert text as a keyboard would (input events fire)."""
        self.evaluate(f"document.querySelector({json.dumps(selector)}).focus()")
        self.send("Input.insertText", text=text)

    def screenshot(self, path: Path) -> Path:
        data = self.send("Page.captureScreenshot", format="png")["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        self.browser.send("Target.closeTarget", {"targetId": self.target_id})


class Chromium:
    """A headless Chromium process with a fresh profile; use as a context manager."""

    def __init__(self) -> None:
        self.profile = Path(tempfile.mkdtemp(prefix="st-cr-"))
        # Chromium keeps its singleton socket in $TMPDIR (org.chromium.Chromium.*) and
        # leaves it there: point $TMPDIR into the profile, which _stop removes.
        scratch = self.profile / "t"  # short: a UNIX socket's path must fit 107 bytes
        scratch.mkdir()
        self.proc = subprocess.Popen(
            [CHROMIUM, *FLAGS, f"--user-data-dir={self.profile / 'profile'}", "about:blank"],
            env={**os.environ, "TMPDIR": str(scratch)},
            start_new_session=True,  # its own process group: _stop ends every helper
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self._ids = itertools.count(1)
        self.events: list[dict[str, Any]] = []
        self._stack = contextlib.ExitStack()
        try:
            # Entered as a context manager: websockets >= 17.1 deprecates bare connect().
            self.ws: ClientConnection = self._stack.enter_context(
                connect(self._endpoint(), max_size=None, open_timeout=START_TIMEOUT_S)
            )
        except BaseException:
            self._stop()
            raise

    def _endpoint(self) -> str:
        marker = self.profile / "profile" / "DevToolsActivePort"
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if marker.exists():
                lines = marker.read_text().split()
                if len(lines) >= 2:  # written in one go, but do not trust a partial read
                    return f"ws://127.0.0.1:{lines[0]}{lines[1]}"
            if self.proc.poll() is not None:
                raise RuntimeError(f"chromium exited with {self.proc.returncode}")
            time.sleep(0.05)
        raise TimeoutError(f"chromium did not open its DevTools port in {START_TIMEOUT_S} s")

    def send(
        self, method: str, params: dict[str, Any] | None = None, *, session_id: str | None = None
    ) -> dict[str, Any]:
        """Send one command and return its result (events seen meanwhile are kept)."""
        message: dict[str, Any] = {"id": next(self._ids), "method": method}
        message["params"] = params or {}
        if session_id is not None:
            message["sessionId"] = session_id
        self.ws.send(json.dumps(message))
        while True:
            reply = json.loads(self.ws.recv(timeout=START_TIMEOUT_S))
            if reply.get("id") != message["id"]:
                self.events.append(reply)
                continue
            if "error" in reply:
                raise CDPError(f"{method}: {reply['error']}")
            return reply["result"]  # type: ignore[no-any-return]

    def open(self, url: str) -> Page:
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})
        page = Page(self, target, session["sessionId"])
        page.send("Page.enable")
        page.send("Runtime.enable")
        page.send("Page.navigate", url=url)
        return page

    def _stop(self) -> None:
        stop_process(self.proc)
        # Its helpers (network service, zygote) may outlive it for a moment and write
        # into the profile: end the whole group, then remove the profile until it stays gone.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while self.profile.exists() and time.monotonic() < deadline:
            shutil.rmtree(self.profile, ignore_errors=True)
            if self.profile.exists():
                time.sleep(0.05)

    def close(self) -> None:
        with contextlib.suppress(Exception):  # it may drop the connection before answering
            self.send("Browser.close")
        self._stack.close()
        self._stop()

    def __enter__(self) -> Chromium:
        return self

    def __exit__(
        self, typ: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
