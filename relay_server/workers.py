"""``tunnel-relay --workers N``: N relay processes on one public port, one per core.

Each worker is a whole relay and a node of the cluster (``<node-id>-w<i>``); the kernel
spreads incoming connections over them (SO_REUSEPORT), and a visitor who lands on a
worker that does not hold the link is carried over the cluster's hop to the one that
does. Each worker also listens for the other nodes on a port of its own (on the host of
``--peer-url``, 127.0.0.1 by default): the shared port cannot say which worker answers.

The parent only supervises: it holds the port (so ``--port 0`` picks one port for all),
restarts a worker that dies (waiting longer each time one dies young), passes SIGTERM,
SIGINT and SIGHUP on, and exits once every worker is gone after a stop signal.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import json
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from multiprocessing.process import BaseProcess
from pathlib import Path
from urllib.parse import urlsplit

from tunnel_client.protocol.errors import ConfigError

from .config import RelayConfig

__all__ = ["supervise", "worker_configs"]

logger = logging.getLogger(__name__)

START_TIMEOUT_S = 30.0
YOUNG_S = 10.0
"""A worker that dies sooner than this after its start is restarted after a growing pause."""
RESTART_MAX_S = 30.0


def worker_configs(config: RelayConfig, port: int, ready_dir: Path) -> list[RelayConfig]:
    """Each worker's settings: the shared port, its own node id, peer listener, ready file."""
    count = config.workers or os.cpu_count() or 1
    base = config.node_id or f"{socket.gethostname()}:{port}"
    peer_host = "127.0.0.1"
    if config.peer_url is not None:
        peer_host = urlsplit(config.peer_url).hostname or peer_host
    return [
        dataclasses.replace(
            config,
            port=port,
            workers=1,
            reuse_port=True,
            node_id=f"{base}-w{i}",
            peer_url=None,
            peer_listen=f"{peer_host}:0",
            ready_file=ready_dir / f"w{i}.json",
        )
        for i in range(count)
    ]


def _reserve(host: str, port: int) -> socket.socket:
    """Bind (not listen) the public port with SO_REUSEPORT, so workers can share it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def _worker_main(config: RelayConfig) -> None:
    """A worker process: one relay, logging with its node id."""
    from .cli import _event_loop, _serve

    logging.basicConfig(
        level=config.log_level.upper(),
        format=f"%(asctime)s %(levelname)s [{config.node_id}] %(name)s: %(message)s",
    )
    # The supervisor passes SIGINT on itself: a Ctrl-C reaches the worker once, as SIGTERM.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _stop_with_parent()
    with contextlib.suppress(KeyboardInterrupt), asyncio.Runner(loop_factory=_event_loop) as r:
        r.run(_serve(config))


def _stop_with_parent() -> None:
    """Linux: get SIGTERM if the supervisor dies (even by SIGKILL), so no worker is orphaned."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() == 1:  # the supervisor was already gone
        os.kill(os.getpid(), signal.SIGTERM)
    # PR_SET_PDEATHSIG follows the *thread* that started us, and is Linux-only: a
    # watchdog that sees us re-parented is the belt to those braces.
    threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True).start()


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(0.5)
    os.kill(os.getpid(), signal.SIGTERM)


class _Worker:
    def __init__(self, config: RelayConfig) -> None:
        self.config = config
        self.process: BaseProcess | None = None
        self.started_at = 0.0
        self.failures = 0

    def start(self) -> None:
        assert self.config.ready_file is not None
        self.config.ready_file.unlink(missing_ok=True)
        context = multiprocessing.get_context("spawn")
        self.process = context.Process(
            target=_worker_main, args=(self.config,), name=self.config.node_id
        )
        self.process.start()
        self.started_at = time.monotonic()

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.is_alive()

    def signal(self, signum: int) -> None:
        if self.process is not None and self.process.pid is not None and self.alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signum)


async def supervise(config: RelayConfig) -> None:
    """Run the workers until a stop signal and every worker is gone."""
    try:
        reserved = _reserve(config.host, config.port)
    except OSError as exc:
        raise SystemExit(
            f"tunnel-relay: cannot listen on {config.host}:{config.port}: {exc.strerror}"
        ) from None
    port = reserved.getsockname()[1]
    scratch = Path(tempfile.mkdtemp(prefix="sharetunnel-workers-"))
    try:
        if config.self_signed:
            # One certificate for all workers, so clients trust one file.
            from .tls import make_self_signed

            cert, key = make_self_signed(config.domain, scratch / "tls")
            config = dataclasses.replace(config, self_signed=False, tls_cert=cert, tls_key=key)
            logger.warning("self-signed certificate for *.%s: %s", config.domain, cert)
        try:
            workers = [_Worker(c) for c in worker_configs(config, port, scratch)]
        except ConfigError as exc:
            raise SystemExit(f"tunnel-relay: {'; '.join(exc.problems)}") from None
        await _supervise(config, workers, port)
    finally:
        reserved.close()
        shutil.rmtree(scratch, ignore_errors=True)


async def _supervise(config: RelayConfig, workers: list[_Worker], port: int) -> None:
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()

    def forward(signum: int) -> None:
        if signum != signal.SIGHUP:
            stopping.set()
        for worker in workers:
            worker.signal(signal.SIGTERM if signum == signal.SIGINT else signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(signum, forward, signum)
    for worker in workers:
        worker.start()
    deadline = loop.time() + START_TIMEOUT_S
    while not all(w.config.ready_file and w.config.ready_file.exists() for w in workers):
        if stopping.is_set() or not all(w.alive for w in workers) or loop.time() > deadline:
            forward(signal.SIGTERM)
            await _wait_all_gone(workers)
            raise SystemExit("tunnel-relay: a worker did not start (see its messages above)")
        await asyncio.sleep(0.05)
    logger.info("%d workers serve port %d", len(workers), port)
    if config.ready_file is not None:
        info = {
            "port": port,
            "url": f"{'https' if config.tls else 'http'}://{config.host}:{port}",
            "domain": config.domain,
            "workers": [w.config.node_id for w in workers],
        }
        tmp = config.ready_file.with_suffix(config.ready_file.suffix + ".tmp")
        tmp.write_text(json.dumps(info))
        tmp.replace(config.ready_file)
    restarts: dict[_Worker, float] = {}
    while not stopping.is_set():
        now = loop.time()
        for worker in workers:
            if worker.alive or stopping.is_set():
                continue
            if worker not in restarts:
                young = time.monotonic() - worker.started_at < YOUNG_S
                worker.failures = worker.failures + 1 if young else 0
                pause = min(RESTART_MAX_S, 0.5 * 2**worker.failures) if young else 0.0
                code = worker.process.exitcode if worker.process else None
                logger.warning(
                    "worker %s exited (%s); restarting it in %.1f s",
                    worker.config.node_id,
                    code,
                    pause,
                )
                restarts[worker] = now + pause
            elif now >= restarts[worker]:
                del restarts[worker]
                worker.start()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), 0.2)
    await _wait_all_gone(workers, config.shutdown_grace_s + 20)
    logger.info("every worker stopped")


async def _wait_all_gone(workers: list[_Worker], grace_s: float = 30.0) -> None:
    """Wait for every worker to exit; SIGKILL any still there after ``grace_s``."""
    deadline = asyncio.get_running_loop().time() + grace_s
    while any(w.alive for w in workers):
        if asyncio.get_running_loop().time() > deadline:
            for worker in workers:
                worker.signal(signal.SIGKILL)
        await asyncio.sleep(0.05)
    for worker in workers:
        if worker.process is not None:
            worker.process.join(0)
