"""Switches bench/run.py puts into the relay and client processes it starts.

This directory is put first on PYTHONPATH of those processes only, so Python imports
this file at start-up (``sitecustomize``) before the CLI runs:

* ``BENCH_ASYNCIO=1``: hide uvloop, so the product runs on asyncio's own loop (to
  measure what uvloop brings).
* ``BENCH_CPROFILE=<prefix>``: profile the main thread with cProfile and write
  ``<prefix>.<pid>.prof`` at exit (the processes exit cleanly on SIGINT/SIGTERM).
"""

from __future__ import annotations

import atexit
import os

if os.environ.get("BENCH_ASYNCIO") == "1":
    import sys

    sys.modules["uvloop"] = None  # type: ignore[assignment]  # import uvloop now fails

_prefix = os.environ.get("BENCH_CPROFILE")
if _prefix:
    import cProfile

    _profiler = cProfile.Profile()

    def _dump() -> None:
        _profiler.disable()
        _profiler.dump_stats(f"{_prefix}.{os.getpid()}.prof")

    atexit.register(_dump)
    _profiler.enable()
