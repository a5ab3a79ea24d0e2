"""A stand-in for Gradio's frpc binary, so unmodified apps get sharetunnel links.

Stock Gradio makes a share link by running ``$HF_HOME/gradio/frpc/frpc_<os>_<arch>_v0.3``
(downloading it only when that file is missing, never checking an existing one) as
``frpc http -n TOKEN -l PORT -i HOST --uc --sd random --ue --server_addr H:P
--disable_log_color [--tls_enable --tls_trusted_ca_file FILE]``, and reads stdout until
a line contains ``start proxy success: <url>``. ``tunnel gradio install`` puts a
three-line ``/bin/sh`` launcher there that runs :func:`main` with the Python that has
this package, so ``launch(share=True)`` and ``--share`` reach our relay with no code
change.

What the program must honour, because of how Gradio drives it:

- It prints the success line within 30 s, or ``login to server failed: <why>`` (Gradio
  then fails at once and echoes that line to stderr). It never stays silent before one
  of them: Gradio's ``readline()`` would block ``launch()`` forever.
- After that line nobody reads its stdout or stderr again; a pipe holds 64 KiB and then
  blocks the writer, so both are pointed at ``/dev/null``.
- Gradio sends SIGTERM at exit and on Ctrl-C; it shares the app's process group, so a
  terminal Ctrl-C sends SIGINT too. A SIGKILLed app sends nothing, so the program also
  exits when its parent changes.

The relay is, in order: ``TUNNEL_RELAY`` or ``relay`` in the config file (like
``tunnel``); else ``GRADIO_SHARE_SERVER_ADDRESS`` when Gradio passed that same address
(the user pointed Gradio at the relay: ``ws://``, or ``wss://`` with Gradio's TLS flags
or port 443);
else an embedded relay, whose link works on this machine only. ``TUNNEL_TOKEN`` is the
relay token; Gradio's ``-n`` token is for Gradio's server and is ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import platform
import re
import shlex
import signal
import stat
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path

__all__ = [
    "MARKER",
    "FrpcArgs",
    "frpc_path",
    "install",
    "is_ours",
    "main",
    "parse_frpc_args",
    "uninstall",
]

MARKER = "sharetunnel frpc shim"
"""In every launcher we write: uninstall removes only files that carry it."""

FRPC_VERSION = "0.3"
"""Gradio's ``tunneling.VERSION`` (6.x); read from the installed Gradio when there is one."""

PARENT_POLL_S = 1.0


def _gradio_frpc_version() -> str:
    """``VERSION`` from the installed ``gradio/tunneling.py``, without importing Gradio."""
    try:
        spec = find_spec("gradio")
    except (ImportError, ValueError):
        return FRPC_VERSION
    if spec is None or spec.origin is None:
        return FRPC_VERSION
    try:
        source = (Path(spec.origin).parent / "tunneling.py").read_text()
    except OSError:
        return FRPC_VERSION
    found = re.search(r'^VERSION\s*=\s*"([^"]+)"', source, re.MULTILINE)
    return found.group(1) if found else FRPC_VERSION


def frpc_path(environ: Mapping[str, str] | None = None) -> Path:
    """Where Gradio looks for frpc, computed as ``gradio.tunneling.BINARY_PATH`` is.

    ``HF_HOME`` comes from huggingface_hub's rule: ``$HF_HOME``, else
    ``$XDG_CACHE_HOME/huggingface``, else ``~/.cache/huggingface``.
    """
    env = os.environ if environ is None else environ
    cache = env.get("XDG_CACHE_HOME", os.path.join(os.path.expanduser("~"), ".cache"))
    hf_home = os.path.expandvars(
        os.path.expanduser(env.get("HF_HOME", os.path.join(cache, "huggingface")))
    )
    machine = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
    name = f"frpc_{platform.system().lower()}_{machine.lower()}_v{_gradio_frpc_version()}"
    return Path(hf_home) / "gradio" / "frpc" / name


def is_ours(path: Path) -> bool:
    """True if ``path`` is a launcher this module wrote (a real frpc is a binary)."""
    try:
        with path.open("rb") as file:
            head = file.read(512)
    except OSError:
        return False
    return head.startswith(b"#!") and MARKER.encode() in head


def launcher_text(python: str = sys.executable) -> str:
    """The file Gradio runs: ``/bin/sh`` quoting survives spaces in the Python path."""
    return (
        "#!/bin/sh\n"
        f"# {MARKER}: written by `tunnel gradio install`, removed by `tunnel gradio uninstall`.\n"
        f'exec {shlex.quote(python)} -m tunnel_client.frpc_shim "$@"\n'
    )


def install(path: Path | None = None, *, force: bool = False) -> Path:
    """Write the launcher at Gradio's frpc path; a real frpc there is kept as ``.orig``.

    Raises:
        FileExistsError: a file that is not ours is there and ``force`` is false.
        OSError: the launcher cannot be written.
    """
    if os.name == "nt":
        raise OSError("the frpc shim is a shell script: Windows is not supported")
    target = path or frpc_path()
    if target.exists() and not is_ours(target):
        if not force:
            raise FileExistsError(f"{target} exists and is not ours (Gradio's frpc?)")
        target.replace(target.with_name(target.name + ".orig"))
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    partial.write_text(launcher_text())
    partial.chmod(partial.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    partial.replace(target)  # Gradio never sees a half-written file
    return target


def uninstall(path: Path | None = None) -> Path | None:
    """Remove our launcher (restoring a frpc kept by ``install --force``).

    Returns the path removed, or None if there was nothing of ours.

    Raises:
        FileExistsError: the file there is not ours; it is left alone.
    """
    target = path or frpc_path()
    if not target.exists():
        return None
    if not is_ours(target):
        raise FileExistsError(f"{target} is not ours (Gradio's frpc?); left in place")
    target.unlink()
    kept = target.with_name(target.name + ".orig")
    if kept.exists():
        kept.replace(target)
    return target


@dataclass(frozen=True)
class FrpcArgs:
    """What Gradio asks frpc for (the flags we use; others are ignored)."""

    local_port: int | None = None
    local_host: str = "127.0.0.1"
    server_addr: str | None = None
    tls_enable: bool = False
    tls_ca_file: str | None = None


def parse_frpc_args(argv: Sequence[str]) -> FrpcArgs:
    """Read Gradio's frpc command line; unknown flags and values are skipped."""
    values: dict[str, str] = {}
    flags: set[str] = set()
    with_value = {"-n", "-l", "-i", "--sd", "--server_addr", "--tls_trusted_ca_file"}
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in with_value and i + 1 < len(args):
            values[arg] = args[i + 1]
            i += 2
            continue
        flags.add(arg)
        i += 1
    port = values.get("-l")
    return FrpcArgs(
        local_port=int(port) if port and port.isdigit() else None,
        local_host=values.get("-i") or "127.0.0.1",
        server_addr=values.get("--server_addr"),
        tls_enable="--tls_enable" in flags,
        tls_ca_file=values.get("--tls_trusted_ca_file"),
    )


def _relay_for(
    args: FrpcArgs, env: Mapping[str, str], configured: tuple[str, ...]
) -> tuple[str, ...]:
    if configured:
        return configured
    chosen = env.get("GRADIO_SHARE_SERVER_ADDRESS")
    if chosen and args.server_addr == chosen:
        secure = args.tls_enable or chosen.endswith(":443")
        return (f"{'wss' if secure else 'ws'}://{chosen}",)
    return ()  # the embedded relay


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _silence() -> None:
    """Point stdout and stderr at /dev/null: Gradio stops reading both pipes now."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    with contextlib.suppress(OSError):
        sys.stdout.flush()
        sys.stderr.flush()
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    os.close(devnull)


async def _serve(args: FrpcArgs, env: Mapping[str, str]) -> int:
    from .api import build_config
    from .client import TunnelClient
    from .gradio import reachable_host
    from .protocol.errors import ConfigError

    parent = os.getppid()
    try:
        if args.local_port is None:
            raise ConfigError(["no local port (-l) given"])
        # Settings as tunnel resolves them; Gradio's relay and CA only fill what they left.
        config = build_config(
            args.local_port, local_host=reachable_host(args.local_host), environ=env
        )
        relay = _relay_for(args, env, config.relay)
        ca_file = config.ca_file
        if ca_file is None and relay == (f"wss://{args.server_addr}",) and args.tls_ca_file:
            ca_file = Path(args.tls_ca_file)
        config = dataclasses.replace(config, relay=relay, ca_file=ca_file)
    except (ConfigError, OSError, ValueError) as exc:
        problems = exc.problems if isinstance(exc, ConfigError) else [str(exc)]
        _say(f"login to server failed: sharetunnel: {'; '.join(problems)}")
        return 1
    client = TunnelClient(config)
    task = asyncio.create_task(client.run())
    try:
        link = await client.wait_ready()
    except Exception as exc:
        await asyncio.gather(task, return_exceptions=True)
        relay_name = ", ".join(config.relay) or "the embedded relay"
        _say(f"login to server failed: sharetunnel ({relay_name}): {exc}")
        return 1
    # Gradio reads the line up to "\n"; ours has no "\r" and no trailing slash, like frp's.
    _say(f"start proxy success: {link.url.rstrip('/')}")
    _silence()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(sig, client.stop)
    while not task.done():
        # A SIGKILLed app tells us nothing: we are reparented, so our parent changes.
        done, _ = await asyncio.wait({task}, timeout=PARENT_POLL_S)
        if not done and os.getppid() != parent:
            client.stop()
    with contextlib.suppress(Exception):
        await task
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run as Gradio's frpc: print the link, then serve it quietly until told to stop."""
    args = parse_frpc_args(sys.argv[1:] if argv is None else argv)
    return asyncio.run(_serve(args, os.environ))


if __name__ == "__main__":
    sys.exit(main())
