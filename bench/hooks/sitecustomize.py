"""Switches bench/run.py puts into the relay and client processes it starts.

This directory is put first on PYTHONPATH of those processes only, so Python imports
this file at start-up (``sitecustomize``) before the CLI runs:

* ``BENCH_UVLOOP=1``: run asyncio on uvloop (to measure what it would bring).
* ``BENCH_CPROFILE=<prefix>``: profile the main thread with cProfile and write
  ``<prefix>.<pid>.prof`` at exit (the processes exit cleanly on SIGINT/SIGTERM).
"""

from __future__ import annotations

import atexit
import os

if os.environ.get("BENCH_UVLOOP") == "1":
    import uvloop

    uvloop.install()

_prefix = os.environ.get("BENCH_CPROFILE")
if _prefix:
    import cProfile

    _profiler = cProfile.Profile()

    def _dump() -> None:
        _profiler.disable()
        _profiler.dump_stats(f"{_prefix}.{os.getpid()}.prof")

    atexit.register(_dump)
    _profiler.enable()
