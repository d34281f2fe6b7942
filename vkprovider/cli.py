"""The ``vkprovider`` command: ``run`` (the provider), ``sim`` (simulated bases), ``token``, ``--version``.

A wrong setting ends ``run`` with one line on stderr naming the variable, the value and what is accepted, and
exit code 2 (no traceback).

The simulator's flags are added to the parser only for ``vkprovider sim``: they live in ``vkprovider.sim.cli``, and
importing it loads the whole simulator with aiomqtt and paho, which a provider would then keep for good (issue 31,
the idle replica's floor; ``tests/unit/test_import_floor.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
from collections.abc import Coroutine
from typing import Any, TypeVar

import uvloop

from vkprovider import __version__


def build_parser(*, sim_flags: bool = True) -> argparse.ArgumentParser:
    """The command line; without ``sim_flags`` the ``sim`` sub-command has no flags (and the simulator is not
    imported)."""
    parser = argparse.ArgumentParser(
        prog="vkprovider",
        description="Koupleless bases as virtual Kubernetes nodes, modules as pods (ModuleController v2 in Python).",
    )
    parser.add_argument("--version", action="version", version=f"vkprovider {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    run = sub.add_parser("run", help="run the provider (configured by environment variables, see README)")
    run.add_argument("--kubeconfig", help="kubeconfig path (default: $KUBECONFIG, else in-cluster)")
    run.add_argument("--env", help="environment name (default: $ENV or dev)")
    run.add_argument("--http-port", type=int, help="heartbeat port (default: $HTTP_TUNNEL_LISTEN_PORT or 7777)")
    run.add_argument("--log-format", choices=["text", "json"], help="log format (default: $VKP_LOG_FORMAT)")
    token = sub.add_parser("token", help="print the heartbeat token of a base identity "
                           "(derived from VKP_HEARTBEAT_SECRET or VKP_HEARTBEAT_SECRET_FILE)")
    token.add_argument("identity", nargs="+", help="base identity (its baseMetadata.identity)")
    sim = sub.add_parser("sim", help="run simulated Koupleless bases (arklet-compatible)")
    if sim_flags:
        from vkprovider.sim.cli import add_arguments

        add_arguments(sim)
    return parser


def command_of(argv: list[str]) -> str | None:
    """The sub-command ``argv`` names: its first word that is not an option (the top-level options take no
    value)."""
    return next((word for word in argv if not word.startswith("-")), None)


def _fail(message: str) -> int:
    sys.stderr.write(f"vkprovider: {message}\n")
    return 2


#: Young-generation threshold of the garbage collector (CPython's default is 700 allocations).
GC_YOUNG_THRESHOLD = 50_000


def tune_gc() -> None:
    """Make the cyclic garbage collector cheap for a process whose heap is mostly caches of API objects.

    vkprovider keeps every pod, node and lease it serves as parsed JSON: nested dicts and lists, hundreds of
    thousands of containers that hold no reference cycles. With CPython's defaults a young collection runs every
    700 allocations, and each promotes whatever is alive at that moment (the state of requests in flight); every
    time the promoted objects reach a quarter of the old generation, a full collection walks the whole heap
    again. A larger young threshold lets short-lived objects die before they are ever promoted, and ``freeze``
    moves what start-up made (modules, classes, settings) out of the collector's sight for good."""
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


_T = TypeVar("_T")


def run_event_loop(main: Coroutine[Any, Any, _T]) -> _T:
    """Run ``main`` on uvloop's event loop (libuv), after ``tune_gc``: at 1,000 bases the process is mostly the
    loop itself (socket reads and writes, TLS, timers, task switches), which uvloop does in C at a fraction of
    asyncio's cost."""
    tune_gc()
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    parser = build_parser(sim_flags=command_of(argv) == "sim")
    args = parser.parse_args(argv)
    if args.command in ("run", "token"):
        from vkprovider.config import ConfigError, load_settings

        overrides = {}
        if args.command == "run":
            overrides = {
                k: v
                for k, v in {
                    "kubeconfig": args.kubeconfig,
                    "env": args.env,
                    "http_tunnel_port": args.http_port,
                    "log_format": args.log_format,
                }.items()
                if v is not None
            }
        try:
            settings = load_settings(**overrides)
        except ConfigError as exc:
            return _fail(str(exc))
        if args.command == "token":
            from vkprovider.core.credentials import base_token

            try:
                secret = settings.secret()
            except OSError as exc:
                return _fail(f"cannot read VKP_HEARTBEAT_SECRET_FILE: {exc}")
            if not secret:
                return _fail("set VKP_HEARTBEAT_SECRET (or VKP_HEARTBEAT_SECRET_FILE) to derive base tokens")
            for identity in args.identity:
                sys.stdout.write(f"{identity} {base_token(secret, identity)}\n" if len(args.identity) > 1
                                 else f"{base_token(secret, identity)}\n")
            return 0
        from vkprovider.app import run
        from vkprovider.logs import setup_logging

        setup_logging(settings.log_format, settings.log_level)
        try:
            return run_event_loop(run(settings))
        except ConfigError as exc:
            return _fail(str(exc))
        except KeyboardInterrupt:
            return 0
    if args.command == "sim":
        from vkprovider.logs import setup_logging
        from vkprovider.sim.cli import run_sim

        setup_logging("text", "INFO")
        try:
            run_event_loop(run_sim(args))
        except KeyboardInterrupt:
            pass
        return 0
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
