"""The Gradio app under test: one page with every kind of traffic a Gradio app makes.

A text function behind a Submit button (what the browser clicks), a streaming generator
that makes each step only once the visitor acknowledged the previous one (so a relay
that buffered the stream would stall it), a file echo (upload in, download out), a
``gr.State`` counter, and an unload handler that records whose session ended.

No ``from __future__ import annotations`` here: Gradio finds the ``gr.Request``
parameter of a handler by its annotation object.
"""

import queue
import shutil
import threading
from pathlib import Path
from typing import Any

from tests.processes import scratch_dir

STEP_ACK_TIMEOUT_S = 30.0


class Probe:
    """What the app saw, shared with the tests (the app runs in the test process)."""

    def __init__(self) -> None:
        self.acks: queue.Queue[str] = queue.Queue()
        self.unloaded: list[str] = []
        self.unload_seen = threading.Condition()

    def wait_unloaded(self, session_hash: str, timeout: float) -> bool:
        with self.unload_seen:
            return self.unload_seen.wait_for(lambda: session_hash in self.unloaded, timeout)

    def wait_any_unload(self, after: int, timeout: float) -> bool:
        with self.unload_seen:
            return self.unload_seen.wait_for(lambda: len(self.unloaded) > after, timeout)


def build_demo(gr: Any, probe: Probe) -> Any:
    """The app; ``gr`` is the gradio module (imported once per test session)."""

    def greet(name: str) -> str:
        return f"Hello, {name}!"

    def count(steps: float) -> Any:
        n = int(steps)
        for i in range(n):
            yield f"step {i}"
            if i < n - 1:
                # The next step exists only after the visitor saw this one.
                probe.acks.get(timeout=STEP_ACK_TIMEOUT_S)

    def echo_file(path: str) -> str:
        out = scratch_dir("gradio-out-") / ("echo-" + Path(path).name)
        shutil.copyfile(path, out)
        return str(out)

    def tally(calls: int) -> tuple[int, int]:
        return calls + 1, calls + 1

    def unloaded(request: gr.Request) -> None:
        with probe.unload_seen:
            probe.unloaded.append(str(request.session_hash))
            probe.unload_seen.notify_all()

    with gr.Blocks(title="sharetunnel gradio test") as demo:
        gr.Markdown("# sharetunnel test app")
        name = gr.Textbox(label="Name", elem_id="name")
        submit = gr.Button("Submit", elem_id="submit")
        greeting = gr.Textbox(label="Greeting", elem_id="greeting")
        submit.click(greet, name, greeting, api_name="greet")

        steps = gr.Number(value=3, precision=0, label="Steps")
        progress = gr.Textbox(label="Progress")
        gr.Button("Count").click(count, steps, progress, api_name="count")

        upload = gr.File(label="Upload")
        download = gr.File(label="Download")
        gr.Button("Echo file").click(echo_file, upload, download, api_name="echo_file")

        calls = gr.State(0)
        shown = gr.Number(label="Calls", precision=0)
        gr.Button("Tally").click(tally, calls, [calls, shown], api_name="tally")

        demo.unload(unloaded)
    return demo
